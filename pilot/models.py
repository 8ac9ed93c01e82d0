"""Loading a model for the pilot: the embedded demo checkpoint or a user's local checkpoint folder.

Any family the pruning engine supports (``pilot.pruning.families.FAMILIES``; docs/families.md
lists them: LLaVA-1.5, LLaVA-NeXT, Qwen2.5-VL, Qwen3-VL and its MoE variant, Gemma 3,
LLaVA-OneVision, InternVL, Mistral 3, SmolVLM, Idefics3) loads through the Auto classes for
image-text-to-text models and processors; the supported ``model_type``s follow from the
adapters' classes. Offline, safetensors only, no remote code: the same path serves the demo and
a real checkpoint.

Qwen, InternVL, SmolVLM and LLaVA-OneVision processors hold a video processor, which transformers
builds only with torchvision. The pilot feeds images only, so without torchvision the stock
processor class is built without it (``images_only``): images and text are processed exactly as
by the full processor; video input then needs torchvision. (SmolVLM's processor also needs the
``num2words`` package, for its video prompts.)
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

from pilot.pruning import families
from pilot.pruning.families import Family

DEMO_CHECKPOINT = Path(__file__).resolve().parent / "demo" / "checkpoint"
# LLaVA-1.5's conversation format, used when a processor has no chat template.
DEFAULT_PROMPT = "USER: <image>\n{question} ASSISTANT:"


def _model_classes() -> dict[str, str]:
    """model_type -> class name, for the types whose image-text-to-text class the engine supports."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    return {model_type: name for model_type, name in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES.items()
            if name in families.SUPPORTED_CLASSES}


# model_type -> ForConditionalGeneration class, derived from the engine's families.
MODEL_CLASSES: dict[str, str] = _model_classes()
SUPPORTED_MODEL_TYPES: tuple[str, ...] = tuple(MODEL_CLASSES)


def _supported() -> str:
    return ", ".join(f"{model_type} ({name})" for model_type, name in MODEL_CLASSES.items())


@dataclass
class LoadedModel:
    """A model with what the engine and the runner need to know about it."""

    model: torch.nn.Module
    processor: object
    name: str  # "demo" or the folder given
    path: Path
    family: str  # the name of the engine's adapter of its class (``families.for_model``), e.g. llava, gemma3
    config_hash: str  # sha256 of config.json: identifies the model in the store
    depth: int  # decoder layers of the language model

    @property
    def model_class(self) -> str:
        return type(self.model).__name__

    @property
    def adapter(self) -> Family:
        """The adapter of this model's family: visual token ids, grids, positions, and the cost
        model's answers (tower sizing, images per prompt)."""
        return families.for_model(self.model)

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


@cache
def images_only(processor_class: type) -> type:
    """``processor_class`` without its video processor (which transformers builds only with torchvision).

    Same name and behaviour for images and text: ``__call__`` skips videos when the processor has
    no ``video_processor``; ``from_pretrained`` then loads the image processor, the tokenizer and
    the chat template only. ``from_pretrained`` passes ``video_processor=None`` (SmolVLM's
    ``__init__`` requires the argument; built directly, pass it too). The chat template is rendered
    by ``ProcessorMixin.apply_chat_template``: SmolVLM's own only adds its video processor's frame
    defaults, and reads them even for images.
    """
    from transformers import ProcessorMixin

    def get_attributes(cls):
        return [name for name in processor_class.get_attributes() if name != "video_processor"]

    # transformers up to 5.24 builds processors through from_args_and_dict, 5.25 through from_dict.
    def from_args_and_dict(cls, args, processor_dict, **kwargs):
        processor_dict = {k: v for k, v in processor_dict.items() if k != "video_processor"}
        return processor_class.from_args_and_dict.__func__(cls, args, processor_dict, **kwargs,
                                                           video_processor=None)

    def from_dict(cls, processor_dict, **kwargs):
        processor_dict = {k: v for k, v in processor_dict.items() if k != "video_processor"}
        return processor_class.from_dict.__func__(cls, processor_dict, **kwargs, video_processor=None)

    def apply_chat_template(self, conversation, chat_template=None, **kwargs):
        return ProcessorMixin.apply_chat_template(self, conversation, chat_template, **kwargs)

    return type(processor_class.__name__, (processor_class,), {
        "get_attributes": classmethod(get_attributes), "from_args_and_dict": classmethod(from_args_and_dict),
        "from_dict": classmethod(from_dict),
        "apply_chat_template": apply_chat_template, "__module__": processor_class.__module__,
        "__qualname__": processor_class.__qualname__,
        "__doc__": f"{processor_class.__name__} for images and text only (no torchvision: no video processor).",
    })


def load_processor(path: Path, model_type: str):
    """The checkpoint's processor (AutoProcessor), offline; images-only without torchvision (see the module)."""
    from transformers.models.auto.processing_auto import PROCESSOR_MAPPING_NAMES
    from transformers.utils import is_torchvision_available

    options = dict(local_files_only=True, trust_remote_code=False)
    class_name = PROCESSOR_MAPPING_NAMES.get(model_type)
    processor_class = None
    if class_name:
        import transformers

        processor_class = getattr(transformers, class_name, None)
    if processor_class is None or "video_processor" not in processor_class.get_attributes():
        return AutoProcessor.from_pretrained(path, **options)
    if not is_torchvision_available():
        return images_only(processor_class).from_pretrained(path, **options)
    try:
        return AutoProcessor.from_pretrained(path, **options)
    except (OSError, ValueError, TypeError) as error:  # e.g. a checkpoint saved without a video processor config
        try:
            return images_only(processor_class).from_pretrained(path, **options)
        except Exception:  # noqa: BLE001 - the full processor's error says more
            raise error from None


def load(
    name_or_path: str | Path | None = "demo",
    device: str | torch.device = "cpu",
    dtype: torch.dtype | str = torch.float32,
    attn_implementation: str = "sdpa",
) -> LoadedModel:
    """Load ``demo`` (the embedded checkpoint) or a local checkpoint folder of a supported family."""
    name, path = resolve_path(name_or_path)
    config_text = (path / "config.json").read_text()
    config = json.loads(config_text)
    model_type = config.get("model_type")
    if model_type not in MODEL_CLASSES:
        raise ValueError(f"model {path}: model_type {model_type!r} is not supported; supported: {_supported()}")
    if not any(path.glob("*.safetensors")):
        raise ValueError(f"model {path}: no .safetensors weights (only safetensors are loaded)")
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    model = AutoModelForImageTextToText.from_pretrained(
        path, dtype=dtype, attn_implementation=attn_implementation, use_safetensors=True,
        local_files_only=True, trust_remote_code=False,
    ).to(device).eval()
    family = families.for_model(model)  # ValueError naming the class and the supported ones
    processor = load_processor(path, model_type)
    tokenizer = getattr(processor, "tokenizer", None)
    if tokenizer is not None and tokenizer.padding_side != "left":
        tokenizer.padding_side = "left"  # the engine and batched generate need left-padded batches
    return LoadedModel(
        model=model, processor=processor, name=name, path=path, family=family.name,
        config_hash=hashlib.sha256(config_text.encode()).hexdigest(),
        depth=model.config.get_text_config().num_hidden_layers,
    )
