"""`pilot serve` driven by the official openai client on the shipped demo model: answers as a pilot run gives them,
streaming token by token, batching that changes no answer, /metrics, and every bad input refused with its 4xx while
the server goes on and nothing stored is lost."""

from __future__ import annotations

import base64
import http.client
import io
import json
import threading
import time
from dataclasses import replace
from urllib.parse import urlparse

import openai
import pytest
import torch
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select

from pilot.data.manifest import load_manifest
from pilot.data.synthetic import CAPTION_QUESTION
from pilot.generation import prepare_batch, run_arm_batch
from pilot.serve.runtime import Runtime
from pilot.serve.server import running
from pilot.serve.settings import ServeSettings
from pilot.store import models as db
from pilot.store import open_store

# The demo's verified recommendation (README): served in these tests, the baseline shadowing it.
RECOMMENDED = "transprune:prune_after=4/6/9,keep=0.7756/0.7723/0.7572,accumulate_from=2,alpha=0.945,positions=original"
KEY = "serve-test-key"
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def items(manifest):
    return list(load_manifest(manifest).items)


def data_url(path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def png_url(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def messages(url: str, question: str) -> list[dict]:
    return [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                         {"type": "text", "text": question}]}]


def client(base_url: str, key: str = KEY) -> openai.OpenAI:
    return openai.OpenAI(api_key=key, base_url=base_url, max_retries=0, timeout=60)


def runtime(demo, tmp_path, **settings) -> Runtime:
    values = {"arm": RECOMMENDED, "port": 0, "max_wait_ms": 5.0, **settings}
    serve_settings = ServeSettings(**values)
    serve_settings.validate()
    return Runtime(serve_settings, demo, serve_settings.arm, source="--arm")


def raw(base_url: str, method: str, path: str, body: bytes | None = None,
        headers: dict | None = None) -> tuple[int, dict]:
    """One plain HTTP request (malformed bodies, missing keys): status and the JSON body."""
    url = urlparse(base_url)
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, json.loads(response.read() or b"null")
    finally:
        connection.close()


def metric_samples(base_url: str) -> dict:
    """``{(name, labels as sorted tuple): value}`` from /metrics."""
    url = urlparse(base_url)
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
    connection.request("GET", "/metrics", headers={"Authorization": f"Bearer {KEY}"})
    text = connection.getresponse().read().decode()
    connection.close()
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def pilot_answer(demo, item, arm: str, question: str | None = None) -> str:
    """The sample's answer as `pilot run` computes it (run_arm_batch, the same token limit)."""
    if question is not None:
        item = replace(item, question=question)
    prepared = prepare_batch(demo, [item], CPU, torch.float32)
    return run_arm_batch(demo, arm, prepared, [], 256, CPU)[0]["answer_text"]


@pytest.fixture(scope="module")
def server(demo, manifest, tmp_path_factory):
    """One server for the module: the recommended arm, the baseline shadowing every request into a SQLite store,
    local images allowed from the dataset's folder, small body and image limits."""
    folder = tmp_path_factory.mktemp("serve")
    rt = runtime(demo, folder, shadow="baseline", shadow_rate=1.0, db=f"sqlite:///{folder / 'live.db'}",
                 allow_dirs=[str(manifest.parent)], max_body_mb=4.0, max_image_mb=0.5, max_image_megapixels=1.0,
                 shadow_flush_s=0.1)
    rt.warm_up()
    with running(rt, KEY) as base_url:
        yield base_url, rt


def test_the_openai_client_gets_the_answer_a_pilot_run_gives(server, demo, items):
    base_url, _ = server
    item = items[0]
    reply = client(base_url).chat.completions.create(
        model="demo", messages=messages(data_url(item.image), item.question))
    choice = reply.choices[0]
    assert choice.message.role == "assistant" and choice.finish_reason == "stop"
    assert choice.message.content == pilot_answer(demo, item, RECOMMENDED)
    assert reply.id.startswith("chatcmpl-") and reply.model == "demo" and reply.system_fingerprint == RECOMMENDED
    # Prompt tokens as the model sees them: the text and the image's 196 visual tokens.
    prepared = prepare_batch(demo, [item], CPU, torch.float32)
    assert reply.usage.prompt_tokens == prepared.inputs["input_ids"].shape[1] > 196
    assert reply.usage.completion_tokens >= 1
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens


def test_streaming_sends_each_token_as_it_comes(server, demo, items):
    base_url, _ = server
    item = items[1]
    url = data_url(item.image)
    api = client(base_url)
    stream = api.chat.completions.create(model="demo", messages=messages(url, CAPTION_QUESTION), stream=True,
                                         stream_options={"include_usage": True})
    chunks = list(stream)
    contents = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    usage = [c.usage for c in chunks if c.usage is not None]
    # "bottom-right none top-left hole ...": eight words, each its own chunk, then the end of sequence.
    assert len(contents) == 8 and finish == ["stop"]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert len(usage) == 1 and usage[0].completion_tokens == 9
    whole = api.chat.completions.create(model="demo", messages=messages(url, CAPTION_QUESTION))
    assert "".join(contents) == whole.choices[0].message.content == pilot_answer(demo, item, RECOMMENDED,
                                                                                 CAPTION_QUESTION)
    assert len({c.id for c in chunks}) == 1


def test_max_tokens_cuts_the_answer_with_finish_reason_length(server, items):
    base_url, _ = server
    url = data_url(items[2].image)
    api = client(base_url)
    whole = api.chat.completions.create(model="demo", messages=messages(url, CAPTION_QUESTION)).choices[0]
    cut = api.chat.completions.create(model="demo", messages=messages(url, CAPTION_QUESTION), max_tokens=3)
    assert cut.choices[0].finish_reason == "length" and cut.usage.completion_tokens == 3
    assert cut.choices[0].message.content == " ".join(whole.message.content.split()[:3])
    streamed = list(api.chat.completions.create(model="demo", messages=messages(url, CAPTION_QUESTION),
                                                max_completion_tokens=3, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in streamed) == cut.choices[0].message.content
    assert streamed[-1].choices[0].finish_reason == "length"


def test_models_are_listed_and_unknown_ones_refused(server):
    base_url, _ = server
    api = client(base_url)
    models = api.models.list().data
    assert [m.id for m in models] == ["demo"] and models[0].arm == RECOMMENDED
    assert api.models.retrieve("demo").id == "demo"
    with pytest.raises(openai.NotFoundError):
        api.models.retrieve("gpt-4o")


def test_a_batched_answer_equals_the_request_served_alone(demo, items, tmp_path):
    """Six requests at once (images, questions, token limits and streaming differ) run as one batch; each answer
    equals the same request served alone, token for token."""
    rt = runtime(demo, tmp_path, max_batch_size=8, max_wait_ms=1500.0)
    requests = [(data_url(item.image), question, max_tokens, stream) for item, question, max_tokens, stream in [
        (items[0], items[0].question, None, False), (items[1], CAPTION_QUESTION, None, True),
        (items[2], CAPTION_QUESTION, 4, False), (items[3], items[3].question, None, True),
        (items[4], "Count the holes.", None, False), (items[5], CAPTION_QUESTION, 6, True)]]

    def ask(api, url, question, max_tokens, stream):
        extra = {"max_tokens": max_tokens} if max_tokens else {}
        if not stream:
            choice = api.chat.completions.create(model="demo", messages=messages(url, question), **extra).choices[0]
            return choice.message.content, choice.finish_reason
        chunks = list(api.chat.completions.create(model="demo", messages=messages(url, question), stream=True,
                                                  **extra))
        return ("".join(c.choices[0].delta.content or "" for c in chunks if c.choices),
                chunks[-1].choices[0].finish_reason)

    with running(rt, KEY) as base_url:
        results: dict[int, tuple] = {}
        together = threading.Barrier(len(requests))

        def worker(index):
            api = client(base_url)
            api.models.list()  # connected: the six requests then leave within a millisecond
            together.wait(60)
            results[index] = ask(api, *requests[index])

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(requests))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        wait_idle(rt)
        batches = metric_samples(base_url)
    assert batches[("pilot_serve_batch_size_count", ())] == 1  # all six in one model.generate
    assert batches[("pilot_serve_batch_size_sum", ())] == 6
    alone_rt = runtime(demo, tmp_path, max_batch_size=1)
    with running(alone_rt, KEY) as base_url:
        alone_rt_answers = [ask(client(base_url), *request) for request in requests]
    assert [results[i] for i in range(len(requests))] == alone_rt_answers
    assert alone_rt_answers[2][1] == "length" and alone_rt_answers[1][1] == "stop"


def _error(status: int, body: dict, code_or_words: str) -> None:
    """OpenAI's error shape, and a message that says what was wrong."""
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    assert code_or_words in (body["error"]["code"] or "") or code_or_words in body["error"]["message"], body


def test_bad_inputs_get_their_4xx_and_the_server_goes_on(server, items, manifest, tmp_path):
    base_url, rt = server
    api = client(base_url)
    item = items[6]
    good = messages(data_url(item.image), item.question)
    first = api.chat.completions.create(model="demo", messages=good)
    stored_before = settled(rt)
    auth = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}

    def post(body: dict | bytes, headers=None) -> tuple[int, dict]:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        return raw(base_url, "POST", "/v1/chat/completions", data, headers or auth)

    # The API key: every route but /health.
    with pytest.raises(openai.AuthenticationError):
        client(base_url, key="wrong").chat.completions.create(model="demo", messages=good)
    for method, path in [("POST", "/v1/chat/completions"), ("GET", "/v1/models"), ("GET", "/metrics"),
                         ("GET", "/no/such/route")]:
        status, body = raw(base_url, method, path, b"{}" if method == "POST" else None)
        assert status == 401, path
        _error(status, body, "invalid_api_key")
    assert raw(base_url, "GET", "/health") == (200, {"status": "ok"})
    # An image that does not decode, base64 that does not, a remote URL, paths outside --allow-dir.
    status, body = post({"model": "demo", "messages": messages(
        "data:image/png;base64," + base64.b64encode(b"not an image at all").decode(), "What is it?")})
    assert status == 400
    _error(status, body, "invalid_image")
    assert body["error"]["param"] == "messages[0].content[0].image_url.url"
    assert "base64" not in body["error"]["message"]  # the message names the field, never echoes the image
    status, body = post({"model": "demo", "messages": messages("data:image/png;base64,@@@@", "What?")})
    assert status == 400 and "base64" in body["error"]["message"]
    with pytest.raises(openai.BadRequestError, match="fetches nothing"):
        api.chat.completions.create(model="demo", messages=messages("https://example.com/part.png", "What?"))
    outside = tmp_path / "outside.png"
    outside.write_bytes(item.image.read_bytes())
    link = manifest.parent / "link-out.png"
    link.symlink_to(outside)
    try:
        for path in (str(outside), f"file://{outside}", str(link), str(manifest.parent / ".." / outside.name)):
            status, body = post({"model": "demo", "messages": messages(path, "What?")})
            assert status == 400, path
            _error(status, body, "image_url_refused")
    finally:
        link.unlink()
    # A path inside --allow-dir is read, and answers as the same image sent as a data URL.
    local = api.chat.completions.create(model="demo", messages=messages(f"file://{item.image}", item.question))
    assert local.choices[0].message.content == first.choices[0].message.content
    # Sizes: the body, an image's bytes, an image's pixels.
    status, body = post(b"{" + b" " * (5 * 2**20) + b"}")
    assert status == 413
    _error(status, body, "request_too_large")
    noise = Image.fromarray(torch.randint(0, 256, (560, 560, 3), dtype=torch.uint8,
                                          generator=torch.Generator().manual_seed(0)).numpy())
    status, body = post({"model": "demo", "messages": messages(png_url(noise), "What?")})
    assert status == 413 and "--max-image-mb" in body["error"]["message"]
    status, body = post({"model": "demo", "messages": messages(png_url(Image.new("RGB", (1200, 1000))), "What?")})
    assert status == 413 and "--max-image-megapixels" in body["error"]["message"]
    # The model's name, the JSON, the images a LLaVA-1.5 family model takes, greedy decoding only.
    with pytest.raises(openai.NotFoundError, match="not served here"):
        api.chat.completions.create(model="gpt-4o", messages=good)
    for broken in (b'{"model": "demo", "messages": [', b"[1, 2]", b'{"model": "\xc3\x28"}'):
        status, body = post(broken)
        assert status == 400, broken
        _error(status, body, "UTF-8" if b"\xc3" in broken else "JSON")
    two = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url(item.image)}}] * 2
            + [{"type": "text", "text": "Compare them."}]}]
    with pytest.raises(openai.BadRequestError, match="at most 1"):
        api.chat.completions.create(model="demo", messages=two)
    with pytest.raises(openai.BadRequestError, match="greedily"):
        api.chat.completions.create(model="demo", messages=good, temperature=0.7)
    with pytest.raises(openai.BadRequestError, match="--max-new-tokens"):
        api.chat.completions.create(model="demo", messages=good, max_tokens=100_000)
    status, body = post({"model": "demo", "messages": [{"role": "user", "content": 5}]})
    assert status == 400 and body["error"]["param"] == "messages[0].content"
    # What the model's processor refuses (a second image token in the text), and a prompt over the context (512).
    with pytest.raises(openai.BadRequestError, match="processor refused"):
        api.chat.completions.create(model="demo", messages=messages(data_url(item.image), "<image> what is it?"))
    long_question = "is there a hole " * 75  # 300 words: with the image, about 510 of the demo's 512 positions
    with pytest.raises(openai.BadRequestError, match="context of 512"):
        api.chat.completions.create(model="demo", messages=messages(data_url(item.image), long_question),
                                    max_tokens=64)
    fitted = api.chat.completions.create(model="demo", messages=messages(data_url(item.image), long_question))
    assert fitted.usage.prompt_tokens + fitted.usage.completion_tokens <= 512
    # Still serving, with the same answer; the shadow store kept every pair and gained one.
    again = api.chat.completions.create(model="demo", messages=good, temperature=0)
    assert again.choices[0].message.content == first.choices[0].message.content
    assert settled(rt) == stored_before + 3  # the file:// request, the fitted one and this one: none lost
    sessions = open_store(rt.settings.db)
    with sessions() as session:
        ids = set(session.scalars(select(db.SampleResult.sample_id).where(
            db.SampleResult.arm_id == rt.live_run.shadow_arm_id)))
        assert {first.id, local.id, fitted.id, again.id} <= ids
        assert session.scalar(select(func.count()).select_from(db.SampleResult).where(
            db.SampleResult.error.is_not(None))) == 0


def wait_idle(rt: Runtime, timeout_s: float = 60.0) -> None:
    """Until the worker is done with the last batch (its answers are out before its accounting)."""
    deadline = time.monotonic() + timeout_s
    while not rt.batcher.idle and time.monotonic() < deadline:
        time.sleep(0.01)


def settled(rt: Runtime, timeout_s: float = 60.0) -> int:
    """Pairs stored, once every sampled request's shadow answer is computed and stored (the shadow runs while the
    server is idle; the writer stores within ``shadow_flush_s``)."""
    deadline = time.monotonic() + timeout_s
    shadow = rt.shadow
    while time.monotonic() < deadline and not (
            rt.batcher.idle and shadow.pending == 0 and shadow.computed == shadow.sampled == shadow.writer.stored):
        time.sleep(0.05)
    return shadow.writer.stored


def test_metrics_show_requests_latency_tokens_kept_and_agreement(server, items):
    base_url, rt = server
    api = client(base_url)
    for item in items[:2]:
        api.chat.completions.create(model="demo", messages=messages(data_url(item.image), item.question))
    raw(base_url, "GET", "/v1/models")  # a 401
    settled(rt)
    samples = metric_samples(base_url)
    route = ("route", "/v1/chat/completions")
    assert samples[("pilot_serve_requests_total", (route, ("status", "200")))] >= 2
    assert samples[("pilot_serve_requests_total", (("route", "/v1/models"), ("status", "401")))] >= 1
    assert samples[("pilot_serve_request_seconds_count", (route,))] >= 2
    assert samples[("pilot_serve_time_to_first_token_seconds_count", ())] >= 2
    # The recommended schedule keeps about three quarters of the demo's 196 visual tokens.
    brought = samples[("pilot_serve_visual_tokens_total", ())]
    kept = samples[("pilot_serve_visual_tokens_kept_total", ())]
    assert brought % 196 == 0 and 0.7 < kept / brought < 0.8
    agreement = samples[("pilot_serve_shadow_agreement", ())]
    answers = {agree: samples.get(("pilot_serve_shadow_answers_total", (("agree", agree),)), 0)
               for agree in ("true", "false")}
    assert agreement == answers["true"] / (answers["true"] + answers["false"])
    assert samples[("pilot_serve_shadow_stored_total", ())] == rt.shadow.writer.stored
    assert samples[("pilot_serve_info", (("arm", RECOMMENDED), ("model", "demo"), ("shadow", "baseline")))] == 1
