"""Loading a model for the pilot: the embedded demo checkpoint or a user's local LLaVA folder.

Offline, safetensors only, no remote code: the same path serves the demo and a real checkpoint.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoProcessor, LlavaForConditionalGeneration, LlavaNextForConditionalGeneration

DEMO_CHECKPOINT = Path(__file__).resolve().parent / "demo" / "checkpoint"
MODEL_CLASSES = {"llava": LlavaForConditionalGeneration, "llava_next": LlavaNextForConditionalGeneration}
# LLaVA-1.5's conversation format, used when a processor has no chat template.
DEFAULT_PROMPT = "USER: <image>\n{question} ASSISTANT:"


@dataclass
class LoadedModel:
    """A model with what the engine and the runner need to know about it."""

    model: torch.nn.Module
    processor: object
    name: str  # "demo" or the folder given
    path: Path
    family: str  # "llava" or "llava_next"
    config_hash: str  # sha256 of config.json: identifies the model in the store
    depth: int  # decoder layers of the language model

    @property
    def model_class(self) -> str:
        return type(self.model).__name__

    def prompt(self, question: str) -> str:
        """The model's prompt for one image and one question (its chat template if it has one)."""
        template = getattr(self.processor, "chat_template", None)
        if template:
            conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
            return self.processor.apply_chat_template(conversation, add_generation_prompt=True)
        return DEFAULT_PROMPT.format(question=question)


def resolve_path(name_or_path: str | Path | None) -> tuple[str, Path]:
    if name_or_path in (None, "", "demo"):
        if not (DEMO_CHECKPOINT / "config.json").is_file():
            raise FileNotFoundError(
                f"the embedded demo checkpoint is missing at {DEMO_CHECKPOINT}; "
                "train it with `python -m pilot.demo.train`"
            )
        return "demo", DEMO_CHECKPOINT
    path = Path(name_or_path).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"model {name_or_path}: no such folder (give a local checkpoint folder or 'demo')")
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"model {path}: no config.json in the folder; is it a Hugging Face checkpoint?")
    return str(path), path


def load(
    name_or_path: str | Path | None = "demo",
    device: str | torch.device = "cpu",
    dtype: torch.dtype | str = torch.float32,
    attn_implementation: str = "sdpa",
) -> LoadedModel:
    """Load ``demo`` (the embedded checkpoint) or a local LLaVA / LLaVA-NeXT checkpoint folder."""
    name, path = resolve_path(name_or_path)
    config_text = (path / "config.json").read_text()
    model_type = json.loads(config_text).get("model_type")
    if model_type not in MODEL_CLASSES:
        raise ValueError(
            f"model {path}: model_type {model_type!r} is not supported; supported: {', '.join(MODEL_CLASSES)}"
        )
    if not any(path.glob("*.safetensors")):
        raise ValueError(f"model {path}: no .safetensors weights (only safetensors are loaded)")
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    model = MODEL_CLASSES[model_type].from_pretrained(
        path, dtype=dtype, attn_implementation=attn_implementation, use_safetensors=True,
        local_files_only=True, trust_remote_code=False,
    ).to(device).eval()
    processor = AutoProcessor.from_pretrained(path, local_files_only=True, trust_remote_code=False)
    return LoadedModel(
        model=model, processor=processor, name=name, path=path, family=model_type,
        config_hash=hashlib.sha256(config_text.encode()).hexdigest(),
        depth=model.config.text_config.num_hidden_layers,
    )
