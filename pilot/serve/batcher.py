"""Dynamic batching: one worker thread owns the model; requests queue, and up to ``max_batch_size`` of them that
arrive within ``max_wait_ms`` of the first run as one ``model.generate`` with the served arm attached.

Each request gets its tokens as the batch makes them (a streamer hands every row's new token to its request, which
decodes it and passes the text to its event loop), and its answer ends at its own end of sequence or ``max_tokens``:
a row that is done is padded and the batch stops when every row is. Greedy decoding of one row does not depend on
the others, so a batched answer equals the same request served alone.

When the queue is empty the worker runs the shadow arm on requests sampled earlier (``pilot.serve.shadow``); a live
request that arrives meanwhile stops the shadow batch at the next layer it enters (the shadow batch is redone
later), so shadow work delays a live answer by at most one layer's compute.
"""

from __future__ import annotations

import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch
from PIL import Image
from transformers import StoppingCriteria
from transformers.generation.streamers import BaseStreamer

from pilot.data.manifest import UNLABELLED, Item
from pilot.generation import Generation, generate_batch, result_rows, stop_token_ids
from pilot.models import LoadedModel
from pilot.serve import logs
from pilot.serve.chat import ApiError
from pilot.serve.metrics import ServeMetrics

# The primary queue must have been empty this long before shadow work starts: clients that send their next request
# as soon as an answer arrives leave gaps of a few milliseconds, too short to be worth a shadow batch.
SHADOW_IDLE_S = 0.05
PREEMPTIBLE_SWITCH_INTERVAL_S = 0.0005


_MODEL_LOCKS: weakref.WeakKeyDictionary[torch.nn.Module, threading.Lock] = weakref.WeakKeyDictionary()
_MODEL_LOCKS_GUARD = threading.Lock()


def model_lock(model: torch.nn.Module) -> threading.Lock:
    """The lock of one model object: ``attach`` patches the model for the length of a generation, so two
    generations on one model (two runtimes sharing a loaded model, in a notebook or a test) must take turns."""
    with _MODEL_LOCKS_GUARD:
        lock = _MODEL_LOCKS.get(model)
        if lock is None:
            lock = _MODEL_LOCKS[model] = threading.Lock()
        return lock


class Preempted(Exception):  # noqa: N818 - a signal, not an error
    """Raised inside a shadow batch's forward pass when a live request is waiting."""


@dataclass(eq=False)
class Job:
    """One chat request on its way through the model. ``deliver`` hands events to the waiting request (any thread):
    ``("started", prompt_tokens)`` once its batch is prepared, then ``("delta", text)`` and ``("done", info)``; or
    ``("error", ApiError)`` instead (a 400 when the model's processor refuses it or it does not fit the context)."""

    id: str
    prompt: str
    images: list[Image.Image]
    max_tokens: int
    deliver: Callable[[tuple], None]
    max_tokens_given: bool = True  # False: the server's default, shortened to fit the context if need be
    prompt_tokens: int = 0  # known once its batch is prepared
    submitted_at: float = field(default_factory=time.perf_counter)
    cancelled: bool = False  # the client went away: its row stops at the next step
    tokens: list[int] = field(default_factory=list)
    sent_text: str = ""
    text: str | None = None
    finish_reason: str | None = None
    first_token_at: float | None = None
    batch_size: int = 0

    @property
    def done(self) -> bool:
        return self.finish_reason is not None


class ShadowWork(Protocol):
    """What the batcher asks of the shadow A/B (``pilot.serve.shadow.ShadowRunner`` implements it): whether an
    answered request is sampled, taking it, and running its pending work in the model's idle moments. The batcher
    knows nothing else of the shadow, and the shadow module imports the batcher, not the other way round."""

    @property
    def pending(self) -> int: ...

    def sample(self) -> bool: ...

    def offer(self, job: Job, served_row: dict) -> None: ...

    def run_batch(self, prepare: Callable[[Sequence], dict], should_yield: Callable[[], bool],
                  live_since: Callable[[], float | None] = ...) -> None: ...

    def drain(self, prepare: Callable[[Sequence], dict], deadline: float) -> None: ...


def item_of(job_id: str) -> Item:
    """A live request as a pilot sample: open-ended text, no reference (compared with the baseline's answer)."""
    return Item(id=job_id, image=Path("live"), label=UNLABELLED, question="", line=0, task="text")


class TokenDispatcher(BaseStreamer):
    """A transformers streamer for a whole batch: each step's new token of row i goes to job i.

    The text is decoded from all of a job's tokens so far and only the new part is sent, held back while it ends in
    an incomplete character (U+FFFD), so a character made of several tokens is never split."""

    def __init__(self, jobs: Sequence[Job], tokenizer, stop_ids: set[int], metrics: ServeMetrics) -> None:
        self.jobs = list(jobs)
        self.tokenizer = tokenizer
        self.stop_ids = stop_ids
        self.metrics = metrics
        self._prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self._prompt_seen:  # generate hands over the prompt first
            self._prompt_seen = True
            return
        now = time.perf_counter()
        for job, token in zip(self.jobs, value.reshape(-1).tolist(), strict=True):
            if job.done or job.cancelled:
                continue
            if job.first_token_at is None:
                job.first_token_at = now
                self.metrics.ttft_seconds.observe(now - job.submitted_at)
            job.tokens.append(int(token))
            if token in self.stop_ids:
                self.finish(job, "stop")
            elif len(job.tokens) >= job.max_tokens:
                self.finish(job, "length")
            else:
                self._send_new_text(job, final=False)

    def end(self) -> None:
        pass

    def _send_new_text(self, job: Job, final: bool) -> None:
        text = self.tokenizer.decode(job.tokens, skip_special_tokens=True)
        if final:
            job.text = text
        elif text.endswith("\ufffd"):  # an incomplete character: wait for its next token
            return
        if text.startswith(job.sent_text) and len(text) > len(job.sent_text):
            job.deliver(("delta", text[len(job.sent_text):]))
            job.sent_text = text

    def finish(self, job: Job, reason: str) -> None:
        self._send_new_text(job, final=True)
        job.finish_reason = reason
        job.deliver(("done", {"text": job.text, "finish_reason": reason, "completion_tokens": len(job.tokens),
                              "prompt_tokens": job.prompt_tokens, "batch_size": job.batch_size}))


class RowsDone(StoppingCriteria):
    """Per row: done at its own ``max_tokens`` or when its client went away (end of sequence: generate's own)."""

    def __init__(self, jobs: Sequence[Job], prompt_length: int) -> None:
        self.jobs = list(jobs)
        self.prompt_length = prompt_length

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        new_tokens = input_ids.shape[1] - self.prompt_length
        return torch.tensor([job.cancelled or new_tokens >= job.max_tokens for job in self.jobs], dtype=torch.bool,
                            device=input_ids.device)


_SWITCH_GUARD = threading.Lock()
_switch_users = 0
_switch_saved_s = 0.005


@contextmanager
def quick_thread_switches() -> Iterator[None]:
    """Within the block (in any thread), Python switches threads every ``PREEMPTIBLE_SWITCH_INTERVAL_S`` instead of
    every 5 ms, so background work (shadow batches, store writes) holds up the event loop and the live batch by
    half a millisecond at a time, not five. Blocks may overlap in several threads."""
    global _switch_users, _switch_saved_s
    with _SWITCH_GUARD:
        if _switch_users == 0:
            _switch_saved_s = sys.getswitchinterval()
            sys.setswitchinterval(min(_switch_saved_s, PREEMPTIBLE_SWITCH_INTERVAL_S))
        _switch_users += 1
    try:
        yield
    finally:
        with _SWITCH_GUARD:
            _switch_users -= 1
            if _switch_users == 0:
                sys.setswitchinterval(_switch_saved_s)


@contextmanager
def preemptible(model: torch.nn.Module, should_yield: Callable[[], bool]) -> Iterator[None]:
    """Within the block, every layer of the model (each member of a ModuleList: vision and language layers) first
    checks ``should_yield`` and raises ``Preempted`` when it says so.

    Meanwhile threads switch quickly (``quick_thread_switches``): the event loop reading a new request gets the
    interpreter at once, so the request is seen arriving (and the shadow work stopped) without waiting for the
    shadow's thread to give way."""

    def check(module, args) -> None:
        if should_yield():
            raise Preempted

    handles = [layer.register_forward_pre_hook(check) for module in model.modules()
               if isinstance(module, torch.nn.ModuleList) for layer in module]
    try:
        with quick_thread_switches():
            yield
    finally:
        for handle in handles:
            handle.remove()


class Batcher:
    """The worker thread: batches of queued jobs through the served arm; shadow work while the queue is empty."""

    def __init__(self, loaded: LoadedModel, arm: str, *, device: torch.device, dtype: torch.dtype,
                 max_batch_size: int, max_wait_ms: float, max_queue: int, metrics: ServeMetrics,
                 context_tokens: int | None = None, threads: int | None = None,
                 shadow: ShadowWork | None = None) -> None:
        self.loaded = loaded
        self.arm = arm
        self.device = device
        self.dtype = dtype
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_ms / 1000
        self.max_queue = max_queue
        self.metrics = metrics
        self.shadow = shadow
        self.context_tokens = context_tokens  # the model's positions; None: not checked
        self.threads = threads  # torch threads of the worker; None: torch's default
        self.stop_ids = stop_token_ids(loaded.model, loaded.processor.tokenizer)
        self._queue: deque[Job] = deque()
        self._arriving = 0  # requests being read and checked, not queued yet: a batch waits for them
        self._busy = False  # a batch (live or shadow) is being worked on
        self._serving = False  # a live batch is being worked on
        self.live_since: float | None = None  # when the first live request since the last live batch arrived
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.failure: BaseException | None = None
        self.shadow_drain_s = 0.0

    # -- the request side (event loop and its threads)

    @contextmanager
    def arriving(self) -> Iterator[None]:
        """Around a request's reading and checking: a batch being gathered waits for it (up to ``max_wait_ms``),
        and shadow work yields to it at once."""
        with self._cond:
            self._arriving += 1
            if self.live_since is None:
                self.live_since = time.perf_counter()
        try:
            yield
        finally:
            with self._cond:
                self._arriving -= 1
                self._cond.notify_all()

    def submit(self, job: Job) -> None:
        with self._cond:
            if self._stopping or not self.alive:
                raise ApiError(503, "the server is shutting down; retry on another replica", code="shutting_down")
            if len(self._queue) >= self.max_queue:
                raise ApiError(503, f"{len(self._queue)} requests are waiting (--max-queue); retry shortly",
                               code="overloaded")
            self._queue.append(job)
            self.metrics.queue_depth.set(len(self._queue))
            self._cond.notify()

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def idle(self) -> bool:
        """Nothing queued, arriving or being worked on (answered requests' shadow work may still be pending)."""
        with self._cond:
            return not (self._queue or self._arriving or self._busy)

    def live_waiting(self) -> bool:
        """A live request is queued or being read: background work should give way."""
        return bool(self._queue or self._arriving)

    def live_idle(self) -> bool:
        """No live request queued, arriving or in a batch: background work (store writes) may run now."""
        return not (self._queue or self._arriving or self._serving)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="pilot-serve-batcher", daemon=True)
        self._thread.start()

    def stop(self, shadow_drain_s: float = 0.0, timeout_s: float | None = None) -> None:
        """Finish the queued jobs, then run pending shadow work for up to ``shadow_drain_s``, then end."""
        with self._cond:
            self.shadow_drain_s = shadow_drain_s
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout_s)

    # -- the worker thread

    def _run(self) -> None:
        if self.threads:  # OpenMP's thread count is per calling thread: set it in the one that runs the model
            torch.set_num_threads(self.threads)
        try:
            while True:
                jobs = self._take()
                if jobs:
                    self._serve(jobs)
                elif self._stopping:
                    break
                elif self.shadow is not None and self.shadow.pending:
                    self.shadow.run_batch(self.prepare, should_yield=self.live_waiting,
                                          live_since=lambda: self.live_since)
                self._busy = self._serving = False
            if self.shadow is not None and self.shadow_drain_s > 0:
                deadline = time.perf_counter() + self.shadow_drain_s
                self.shadow.drain(self.prepare, deadline)
        except BaseException as error:  # noqa: BLE001 - recorded, health turns 503, waiting requests get a 503
            self.failure = error
            logs.event("batcher_failed", logs.logging.ERROR, error=f"{type(error).__name__}: {error}")
            with self._cond:
                waiting, self._queue = list(self._queue), deque()
            for job in waiting:
                job.deliver(("error", ApiError(503, "the model worker stopped; retry on another replica",
                                               code="worker_failed")))

    def _take(self) -> list[Job]:
        """The next batch: wait for a first job, then for the requests still arriving (read and checked), up to
        ``max_wait_ms`` from the first one's arrival. With none on the way the batch starts at once: a lone request
        waits for nobody."""
        with self._cond:
            idle_since = time.perf_counter()
            while not self._queue:
                if self._stopping:
                    return []
                if self.shadow is not None and self.shadow.pending and not self._arriving:
                    left = SHADOW_IDLE_S - (time.perf_counter() - idle_since)
                    if left <= 0:
                        self._busy = True  # with shadow work
                        return []
                    self._cond.wait(left)
                else:
                    self._cond.wait(1.0)
            deadline = self._queue[0].submitted_at + self.max_wait_s
            while len(self._queue) < self.max_batch_size and self._arriving and not self._stopping:
                left = deadline - time.perf_counter()
                if left <= 0:
                    break
                self._cond.wait(left)
            jobs: list[Job] = []
            while self._queue and len(jobs) < self.max_batch_size:
                job = self._queue.popleft()
                if not job.cancelled:
                    jobs.append(job)
            self.metrics.queue_depth.set(len(self._queue))
            self._busy = self._serving = True
            self.live_since = None
            return jobs

    def prepare(self, jobs: Sequence) -> dict:
        """The model inputs of a batch (left-padded, as ``pilot run`` makes them), on the device. Worker thread only:
        the tokenizer is not safe to call from two threads at once."""
        images = [job.images for job in jobs]
        # Images nested per prompt (SmolVLM's processor reads a flat list as all images of one prompt); no images
        # at all: none passed (processors refuse lists of empty lists).
        inputs = self.loaded.processor(images=images if any(images) else None, text=[job.prompt for job in jobs],
                                       padding=True, return_tensors="pt")
        return {k: (v.to(self.device, self.dtype) if k == "pixel_values" else v.to(self.device))
                for k, v in inputs.items()}

    def _admit(self, jobs: list[Job]) -> tuple[list[Job], dict] | None:
        """The jobs that fit and their inputs: a request whose prompt and max_tokens exceed the model's context gets
        its 400 (without max_tokens, the server's default shrinks to fit). None when the processor refuses the
        batch: each job is then served alone, and the one it refuses gets its 400."""
        try:
            inputs = self.prepare(jobs)
        except Exception as error:  # noqa: BLE001 - the processor's own reason (e.g. image tokens against images)
            if len(jobs) > 1:
                return None
            jobs[0].deliver(("error", ApiError(400, f"the model's processor refused the request: {error}")))
            return [], {}
        admitted = []
        for job, prompt_tokens in zip(jobs, inputs["attention_mask"].sum(dim=1).tolist(), strict=True):
            job.prompt_tokens = int(prompt_tokens)
            room = None if self.context_tokens is None else self.context_tokens - job.prompt_tokens
            if room is not None and job.max_tokens > room:
                if job.max_tokens_given or room < 1:
                    job.deliver(("error", ApiError(
                        400, f"the prompt is {job.prompt_tokens} tokens (images included) and max_tokens "
                             f"{job.max_tokens}: over the model's context of {self.context_tokens} tokens",
                        param="max_tokens", code="context_length_exceeded")))
                    continue
                job.max_tokens = room
            admitted.append(job)
        if admitted and len(admitted) < len(jobs):
            inputs = self.prepare(admitted)  # the batch without the refused ones
        return admitted, inputs

    def _serve(self, jobs: list[Job]) -> None:
        """One batch through the served arm; whatever goes wrong, each of its requests gets an answer or an error."""
        started = time.perf_counter()
        for job in jobs:
            self.metrics.queue_seconds.observe(started - job.submitted_at)
        try:
            admitted = self._admit(jobs)
            if admitted is None:
                for job in jobs:
                    self._serve([job])
                return
            jobs, inputs = admitted
            if jobs:
                self._generate(jobs, inputs)
        except Exception as error:  # noqa: BLE001 - this batch's requests get a 500; the server goes on
            self.metrics.errors.inc()
            self._fail([job for job in jobs if not job.done], error)

    def _generate(self, jobs: list[Job], inputs: dict) -> None:
        self.metrics.batch_size.observe(len(jobs))
        for job in jobs:
            job.batch_size = len(jobs)
            job.deliver(("started", job.prompt_tokens))
        dispatcher = TokenDispatcher(jobs, self.loaded.processor.tokenizer, self.stop_ids, self.metrics)
        rows_done = RowsDone(jobs, inputs["input_ids"].shape[1])
        with model_lock(self.loaded.model):
            generation = generate_batch(self.loaded, self.arm, inputs, [job.max_tokens for job in jobs],
                                        self.device, streamer=dispatcher, stopping_criteria=[rows_done])
        self._settle(jobs, dispatcher, generation)
        try:
            rows = result_rows(self.loaded, [item_of(job.id) for job in jobs], inputs, generation, [])
        except Exception as error:  # noqa: BLE001 - the answers are out; only the accounting is missing
            logs.event("accounting_failed", logs.logging.ERROR, exc_info=True,
                       error=f"{type(error).__name__}: {error}", request_ids=[job.id for job in jobs])
            return
        for job, row in zip(jobs, rows, strict=True):
            self.metrics.prompt_tokens.inc(job.prompt_tokens)
            self.metrics.completion_tokens.inc(len(job.tokens))
            self.metrics.visual_tokens.inc(row["visual_tokens"])
            self.metrics.visual_tokens_kept.inc(row["visual_tokens_kept"])
            self.metrics.visual_tokens_kept_per_request.observe(row["visual_tokens_kept"])
            if self.shadow is not None and not job.cancelled and self.shadow.sample():  # answered requests only
                self.shadow.offer(job, row)

    def _settle(self, jobs: list[Job], dispatcher: TokenDispatcher, generation: Generation) -> None:
        """Every job has its answer: the streamer's, which is the batch's own cut (checked)."""
        for row, job in enumerate(jobs):
            if job.cancelled:
                continue
            ids, reason = generation.generated[row]
            if not job.done:  # generation ended without the streamer seeing this row finish (not expected)
                job.tokens = list(ids)
                dispatcher.finish(job, reason)
            elif job.text != generation.texts[row]:
                logs.event("answer_mismatch", logs.logging.WARNING, request_id=job.id)

    def _fail(self, jobs: Sequence[Job], error: BaseException) -> None:
        logs.event("generation_failed", logs.logging.ERROR, exc_info=True, error=f"{type(error).__name__}: {error}",
                   request_ids=[job.id for job in jobs])
        for job in jobs:
            job.deliver(("error", ApiError(500, f"the model failed on this batch ({type(error).__name__}); the server "
                                                "goes on, retry the request", code="generation_failed")))
