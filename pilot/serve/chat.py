"""The OpenAI chat-completions request, as this server reads it: checked field by field, each problem a 4xx with
OpenAI's error shape naming the field (``messages[0].content[1].image_url.url``), never echoing an image.

Images come as data URLs (``data:image/png;base64,...``) or as local paths (``/data/x.png`` or ``file:///data/x.png``)
inside a directory given with ``--allow-dir``; the server fetches nothing from the network.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from pilot.data.images import BytesImage, ImageError, load_image
from pilot.models import DEFAULT_PROMPT, LoadedModel

_DATA_URL = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[^,;]*)*),", re.IGNORECASE)
_SCHEME = re.compile(r"^(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*):")


class ApiError(Exception):
    """A request the server refuses (4xx) or could not answer (5xx), in OpenAI's error JSON shape."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 kind: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.kind = kind or _error_type(status)

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


def _error_type(status: int) -> str:
    return {401: "authentication_error", 403: "permission_error", 404: "not_found_error",
            413: "invalid_request_error", 429: "rate_limit_error"}.get(
        status, "invalid_request_error" if status < 500 else "server_error")


@dataclass(frozen=True)
class Limits:
    """What one request may ask for."""

    max_new_tokens: int  # a request's max_tokens: default and upper limit
    max_images: int
    max_image_bytes: int
    max_image_pixels: int
    allow_dirs: tuple[Path, ...] = ()  # resolved; empty: no local paths


@dataclass(frozen=True)
class ImageRef:
    param: str  # where it sits in the request, for errors
    url: str


@dataclass
class Turn:
    role: str  # system, user or assistant
    parts: list[dict] = field(default_factory=list)  # chat-template parts: {"type": "image"} / {"type": "text", ...}

    @property
    def text(self) -> str:
        return "\n".join(part["text"] for part in self.parts if part["type"] == "text")

    @property
    def images(self) -> int:
        return sum(part["type"] == "image" for part in self.parts)


@dataclass
class ChatRequest:
    model: str
    turns: list[Turn]
    images: list[ImageRef]
    max_tokens: int
    max_tokens_given: bool  # False: the server's default, shortened to fit the context if need be
    stream: bool
    include_usage: bool


# ---------------------------------------------------------------- the body


def parse_chat(body: bytes, limits: Limits) -> ChatRequest:
    """The request in ``body`` (JSON), or ApiError(400) naming the first field that is wrong."""
    try:
        data = json.loads(body)
    except UnicodeDecodeError:
        raise ApiError(400, "the body is not UTF-8 text; send JSON") from None
    except json.JSONDecodeError as error:
        raise ApiError(400, f"the body is not valid JSON ({error.msg} at line {error.lineno} column {error.colno})",
                       code="invalid_json") from None
    if not isinstance(data, dict):
        raise ApiError(400, f"the body must be a JSON object, not {_kind(data)}")
    model = data.get("model")
    if not isinstance(model, str) or not model:
        raise ApiError(400, "model is required: the name /v1/models lists", param="model")
    _refuse_unsupported(data)
    messages = data.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "messages must be a non-empty list", param="messages")
    turns, images = [], []
    for index, message in enumerate(messages):
        turn, refs = _turn(message, f"messages[{index}]")
        turns.append(turn)
        images += refs
    if turns[-1].role != "user":
        raise ApiError(400, f"the last message must be the user's (it is {turns[-1].role!r}): the server answers it",
                       param=f"messages[{len(turns) - 1}].role")
    if len(images) > limits.max_images:
        raise ApiError(400, f"{len(images)} images in the request; this model takes at most {limits.max_images} per "
                            "request (--max-images)", param="messages", code="too_many_images")
    max_tokens, given = _max_tokens(data, limits.max_new_tokens)
    stream = data.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise ApiError(400, f"stream must be true or false, not {_kind(stream)}", param="stream")
    options = data.get("stream_options") or {}
    if not isinstance(options, dict):
        raise ApiError(400, "stream_options must be an object", param="stream_options")
    include_usage = bool(options.get("include_usage", False))
    return ChatRequest(model=model, turns=turns, images=images, max_tokens=max_tokens, max_tokens_given=given,
                       stream=stream, include_usage=include_usage)


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null",
            int: "a number", float: "a number"}.get(type(value), type(value).__name__)


def _number(data: dict, name: str) -> float | None:
    value = data.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ApiError(400, f"{name} must be a number, not {_kind(value)}", param=name)
    return float(value)


def _refuse_unsupported(data: dict) -> None:
    """Fields that would change the answer in ways this server does not do: refused, never silently ignored."""
    temperature = _number(data, "temperature")
    if temperature is not None and temperature != 0:
        raise ApiError(400, f"temperature {temperature:g}: this server decodes greedily (the pruned and baseline "
                            "arms compare answer for answer); give temperature 0 or leave it out",
                       param="temperature", code="unsupported_value")
    n = data.get("n")
    if n is not None and n != 1:
        raise ApiError(400, "n: this server returns one choice per request; give n 1 or leave it out", param="n",
                       code="unsupported_value")
    for name in ("presence_penalty", "frequency_penalty"):
        value = _number(data, name)
        if value:
            raise ApiError(400, f"{name} {value:g}: not supported (greedy decoding only); leave it out", param=name,
                           code="unsupported_value")
    for name in ("stop", "tools", "functions", "logit_bias", "audio", "prediction"):
        if data.get(name):
            raise ApiError(400, f"{name} is not supported by this server; leave it out", param=name,
                           code="unsupported_parameter")
    if data.get("logprobs"):
        raise ApiError(400, "logprobs is not supported by this server", param="logprobs",
                       code="unsupported_parameter")
    response_format = data.get("response_format")
    if response_format is not None and (not isinstance(response_format, dict)
                                        or response_format.get("type", "text") != "text"):
        raise ApiError(400, "response_format: only plain text answers ({\"type\": \"text\"}); ask for JSON in the "
                            "prompt instead", param="response_format", code="unsupported_value")


def _max_tokens(data: dict, limit: int) -> tuple[int, bool]:
    """max_completion_tokens (the current name) or max_tokens; default and upper limit ``--max-new-tokens``."""
    for name in ("max_completion_tokens", "max_tokens"):
        value = data.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ApiError(400, f"{name} must be a whole number >= 1", param=name)
        if value > limit:
            raise ApiError(400, f"{name} {value} is over this server's limit of {limit} new tokens "
                                "(--max-new-tokens)", param=name, code="max_tokens_over_limit")
        return value, True
    return limit, False


def _turn(message: Any, where: str) -> tuple[Turn, list[ImageRef]]:
    if not isinstance(message, dict):
        raise ApiError(400, f"{where} must be an object with role and content", param=where)
    role = message.get("role")
    if role == "developer":  # OpenAI's newer name for the system message
        role = "system"
    if role not in ("system", "user", "assistant"):
        raise ApiError(400, f"{where}.role {role!r}: use system, developer, user or assistant (tools and functions "
                            "are not supported)", param=f"{where}.role")
    content = message.get("content")
    if isinstance(content, str):
        return Turn(role, [{"type": "text", "text": content}]), []
    if not isinstance(content, list) or not content:
        raise ApiError(400, f"{where}.content must be a string or a non-empty list of parts",
                       param=f"{where}.content")
    turn, refs = Turn(role), []
    for index, part in enumerate(content):
        at = f"{where}.content[{index}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            text = part.get("text")
            if not isinstance(text, str):
                raise ApiError(400, f"{at}.text must be a string", param=f"{at}.text")
            turn.parts.append({"type": "text", "text": text})
        elif kind == "image_url":
            if role != "user":
                raise ApiError(400, f"{at}: images go in user messages only", param=at)
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else image
            if not isinstance(url, str) or not url:
                raise ApiError(400, f"{at}.image_url.url must be a string (a data URL or a local path)",
                               param=f"{at}.image_url.url")
            turn.parts.append({"type": "image"})
            refs.append(ImageRef(f"{at}.image_url.url", url))
        else:
            raise ApiError(400, f"{at}.type {kind!r}: use text or image_url", param=f"{at}.type")
    return turn, refs


# ---------------------------------------------------------------- images


def load_images(refs: list[ImageRef], limits: Limits) -> list[Image.Image]:
    """Each image decoded as the runner decodes a dataset's (``pilot.data.images.load_image``), or ApiError."""
    return [_load(ref, limits) for ref in refs]


def _load(ref: ImageRef, limits: Limits) -> Image.Image:
    data = _image_bytes(ref, limits)
    if len(data) > limits.max_image_bytes:
        raise _too_large(ref, len(data), limits)
    try:  # the header alone: a decompression bomb is refused before its pixels are decoded
        with Image.open(io.BytesIO(data)) as probe:
            width, height = probe.size
    except Exception:  # noqa: BLE001 - load_image names the reason below
        width = height = 0
    if width * height > limits.max_image_pixels:
        raise ApiError(413, f"{ref.param}: the image is {width} x {height} pixels ({width * height / 1e6:.1f} MP), "
                            f"over this server's limit of {limits.max_image_pixels / 1e6:g} MP "
                            "(--max-image-megapixels)", param=ref.param, code="image_too_large")
    try:
        return load_image(BytesImage(name=ref.param, data=data))
    except ImageError as error:
        raise ApiError(400, str(error), param=ref.param, code="invalid_image") from None


def _too_large(ref: ImageRef, size: int, limits: Limits) -> ApiError:
    return ApiError(413, f"{ref.param}: the image is {size / 2**20:.1f} MiB, over this server's limit of "
                         f"{limits.max_image_bytes / 2**20:g} MiB (--max-image-mb)", param=ref.param,
                    code="image_too_large")


def _image_bytes(ref: ImageRef, limits: Limits) -> bytes:
    url = ref.url.strip()
    match = _DATA_URL.match(url)
    if match:
        if "base64" not in match.group("params").lower().split(";"):
            raise ApiError(400, f"{ref.param}: a data URL must be base64 (data:image/png;base64,...)",
                           param=ref.param, code="invalid_image_url")
        mime = (match.group("mime") or "").lower()
        if mime and not mime.startswith("image/"):
            raise ApiError(400, f"{ref.param}: the data URL holds {mime}, not an image", param=ref.param,
                           code="invalid_image_url")
        payload = "".join(url[match.end():].split())  # some clients wrap base64 in lines
        if len(payload) * 3 // 4 > limits.max_image_bytes + 3:  # refused before decoding
            raise _too_large(ref, len(payload) * 3 // 4, limits)
        try:
            return base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            raise ApiError(400, f"{ref.param}: the data URL's base64 does not decode", param=ref.param,
                           code="invalid_image_url") from None
    scheme = _SCHEME.match(url)
    if scheme and scheme.group("scheme").lower() != "file":
        raise ApiError(400, f"{ref.param}: {scheme.group('scheme').lower()} URLs are refused: this server fetches "
                            "nothing; send the image as a data URL (data:image/png;base64,...)", param=ref.param,
                       code="image_url_refused")
    return _local_file(ref, url[len("file://"):] if scheme else url, limits)


def _local_file(ref: ImageRef, path_text: str, limits: Limits) -> bytes:
    if not limits.allow_dirs:
        raise ApiError(400, f"{ref.param}: local image paths are refused (the server was started without "
                            "--allow-dir); send the image as a data URL", param=ref.param, code="image_url_refused")
    path = Path(path_text)
    if not path.is_absolute():
        raise ApiError(400, f"{ref.param}: give an absolute path inside --allow-dir, or a data URL", param=ref.param,
                       code="image_url_refused")
    resolved = Path(os.path.realpath(path))  # symlinks followed: a link out of the directory is outside it
    if not any(resolved.is_relative_to(folder) for folder in limits.allow_dirs):
        raise ApiError(400, f"{ref.param}: the path is outside the directories this server may read "
                            "(--allow-dir)", param=ref.param, code="image_url_refused")
    try:
        size = resolved.stat().st_size
        if size > limits.max_image_bytes:
            raise _too_large(ref, size, limits)
        return resolved.read_bytes()
    except FileNotFoundError:
        raise ApiError(400, f"{ref.param}: no such image file", param=ref.param, code="invalid_image") from None
    except IsADirectoryError:
        raise ApiError(400, f"{ref.param}: is a folder, not an image file", param=ref.param,
                       code="invalid_image") from None
    except OSError as error:
        raise ApiError(400, f"{ref.param}: cannot read the file ({error.strerror or error})", param=ref.param,
                       code="invalid_image") from None


# ---------------------------------------------------------------- the prompt


def build_prompt(loaded: LoadedModel, turns: list[Turn]) -> str:
    """The model's prompt for a conversation: its chat template when it has one, else LLaVA-1.5's format.

    One user turn of an image and a question gives exactly ``loaded.prompt(question)``, the prompt ``pilot run``
    uses: a request answers as the same sample does in a pilot."""
    processor = loaded.processor
    if getattr(processor, "chat_template", None):
        conversation = [{"role": turn.role, "content": turn.parts} for turn in turns]
        return processor.apply_chat_template(conversation, add_generation_prompt=True)
    image_token = getattr(processor, "image_token", None) or "<image>"
    eos = getattr(processor.tokenizer, "eos_token", None) or ""
    system = " ".join(turn.text for turn in turns if turn.role == "system")
    pieces = [system + " "] if system else []
    for turn in turns:
        if turn.role == "user":
            question = f"{image_token}\n" * turn.images + turn.text
            # DEFAULT_PROMPT's own words, so one image and a question are the pilot's prompt to the character.
            pieces.append(DEFAULT_PROMPT.replace("<image>\n", "").format(question=question))
        elif turn.role == "assistant":
            pieces.append(f" {turn.text}{eos}")
    return "".join(pieces)
