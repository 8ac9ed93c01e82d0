"""Generating answers: one batch through one arm (baseline or a pruning strategy), its result rows scored and costed.

The runner (``pilot.runner``: A/B replay into the store), the tuner (``tuner.study``) and the server
(``pilot serve``) all generate through here: ``prepare_batch`` loads the images and builds the model inputs,
``generate_batch`` runs greedy decoding with the strategy attached (timing the prefill and the whole answer),
``result_rows`` scores each answer for its task and adds its cost (paper and full TFLOPs, visual tokens kept per
layer, KV cache); ``run_arm_batch`` is the three in a row. No store here.
"""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Sequence
from dataclasses import dataclass, fields

import torch
from transformers import LogitsProcessor, LogitsProcessorList, StoppingCriteriaList

from pilot.data.answers import INVALID, free_answer, parse_answer
from pilot.data.images import ImageError, load_image
from pilot.data.manifest import UNLABELLED, Item
from pilot.metrics import Outcome
from pilot.models import LoadedModel
from pilot.pruning import NoPrune, PruneTrace, Strategy, attach, parse
from pilot.pruning.families.base import assign_to_samples, decoder_layer_types, visual_counts
from pilot.pruning.flops import ModelDims, full_prefill_flops, kv_cache_bytes, paper_flops
from pilot.scoring import normalize_vqa, score_json, score_text

# Generation stops at the end of sequence, or at these many new tokens per task (``--max-new-tokens`` sets one for
# all): a label is one or two words; DocVQA/OCR/ChartQA answers are a few words and a description one sentence
# (32 tokens hold the longest of them with room); an invoice's fields as JSON run to a few hundred tokens.
TASK_MAX_NEW_TOKENS = {"label": 4, "text": 32, "json": 256}


def machine_info(device: torch.device) -> dict:
    """What the latencies were measured on: the CPU (or GPU), torch's threads and the library versions."""
    import transformers

    from pilot.workers import cpu_name  # here, not at the top: generating needs no store (pilot.workers is one)

    return {
        "cpu": cpu_name(), "threads": torch.get_num_threads(), "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "torch": torch.__version__, "transformers": transformers.__version__,
        "python": platform.python_version(), "platform": platform.platform(),
    }


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _FirstTokenClock(LogitsProcessor):
    """Notes when the first token's logits exist: the end of the prefill (time to first token)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.at: float | None = None

    def __call__(self, input_ids, scores):
        if self.at is None:
            _synchronize(self.device)
            self.at = time.perf_counter()
        return scores


@dataclass
class PreparedBatch:
    items: list[Item]
    inputs: dict
    errors: dict[str, str]  # sample id -> error, for items that could not be prepared


def prepare_batch(loaded: LoadedModel, items: Sequence[Item], device: torch.device,
                  dtype: torch.dtype) -> PreparedBatch:
    """Load the images (a bad one becomes that sample's error) and build the model inputs."""
    good, images, errors = [], [], {}
    for item in items:
        try:
            images.append(load_image(item.image))
            good.append(item)
        except ImageError as error:
            errors[item.id] = str(error)
    inputs = {}
    if good:
        prompts = [loaded.prompt(item.question) for item in good]
        # Images nested per prompt (one each): SmolVLM's processor reads a flat list as all images of one prompt.
        inputs = loaded.processor(images=[[image] for image in images], text=prompts, return_tensors="pt",
                                  padding=True)
        inputs = {k: (v.to(device, dtype) if k == "pixel_values" else v.to(device)) for k, v in inputs.items()}
    return PreparedBatch(good, inputs, errors)


def sample_grids(loaded: LoadedModel, inputs: dict) -> tuple[list[list[list[int]] | None], list[list | None]]:
    """Per sample, the token grids of its images, in visual-token order, and its ``image_grid_thw`` rows.

    A grid is ``[rows, cols]``, or ``[rows, cols, 1]`` when each row ends with one newline token
    (LLaVA-NeXT's high-resolution grid). The family's adapter reads them off what the processor
    made (``prompt_grids``: Qwen's ``image_grid_thw``, LLaVA-NeXT's ``image_sizes``, InternVL's
    tiles, Pixtral's row breaks, ...). None for a sample whose grids cannot be told; the
    dashboard then falls back to one square grid when the count is a square. The grids only feed
    pictures (and Qwen's tower FLOPs, which fall back to the token count): never an error.
    """
    batch = len(inputs["input_ids"])
    try:
        images = loaded.adapter.prompt_grids(loaded.model, inputs) or [None] * batch
        grids = [None if sample is None else [[g.rows, g.cols, 1] if g.newline else [g.rows, g.cols]
                                               for image in sample for g in image] for sample in images]
        rows: list[list | None] = [None] * batch
        if "image_grid_thw" in inputs and "video_grid_thw" not in inputs:  # the tower's exact patch grids (Qwen)
            thw = inputs["image_grid_thw"].tolist()
            merge = loaded.model.config.vision_config.spatial_merge_size
            owners = assign_to_samples([t * h * w // merge**2 for t, h, w in thw],
                                       visual_counts(loaded.model, loaded.adapter, inputs))
            rows = [None if index is None else [thw[i] for i in index] for index in owners]
        return grids, rows
    except Exception:  # noqa: BLE001 - see above: no sample fails over its pictures
        return [None] * batch, [None] * batch


def max_new_tokens_of(item: Item, max_new_tokens: int | None) -> int:
    """The sample's token limit: the run's ``--max-new-tokens``, else its task's default."""
    return max_new_tokens or TASK_MAX_NEW_TOKENS[item.task]


def _generated(tokens: torch.Tensor, limit: int, stop_ids: set[int]) -> tuple[list[int], str]:
    """One sample's generated ids up to its end of sequence (included) or its limit, and why it stopped."""
    ids = tokens.tolist()[:limit]
    for index, token in enumerate(ids):
        if token in stop_ids:
            return ids[: index + 1], "stop"
    return ids, "length"


def _score(item: Item, text: str, labels: Sequence[str]) -> tuple[str, bool | None, dict | None]:
    """(prediction, correct, scores) of one answer for its task; scores None without references."""
    if item.task == "label":
        prediction = parse_answer(text, labels) if labels else free_answer(text)
        correct = prediction == item.label and prediction != INVALID if item.labelled else None
        return prediction, correct, None
    # Open-ended: the normalised text stands for the answer (agreement with the baseline reads it).
    prediction = normalize_vqa(text)[:255]
    if not item.references:
        return prediction, None, None
    if item.task == "json":
        return prediction, None, score_json(text, json.loads(item.references[0]))
    return prediction, None, score_text(text, item.references)


def run_arm_batch(loaded: LoadedModel, strategy_text: str, prepared: PreparedBatch, labels: Sequence[str],
                  max_new_tokens: int | None, device: torch.device) -> list[dict]:
    """Generate for one batch in one arm; one result row (a dict of SampleResult fields) per item.

    Greedy decoding to each sample's end of sequence or token limit (``max_new_tokens``, else its task's
    default). A batch generates to its longest limit; each sample's answer is cut at its own, which equals
    generating it alone (greedy decoding of one sample does not depend on the others)."""
    limits = [max_new_tokens_of(item, max_new_tokens) for item in prepared.items]
    generation = generate_batch(loaded, strategy_text, prepared.inputs, limits, device)
    return result_rows(loaded, prepared.items, prepared.inputs, generation, labels)


@dataclass
class Generation:
    """One batch's greedy generation in one arm: the answers and the clocks result rows are built from."""

    output: torch.Tensor  # [batch, prompt + new tokens]
    prompt_length: int
    generated: list[tuple[list[int], str]]  # per row: its ids to end of sequence (included) or limit, and why
    texts: list[str]  # per row: its ids decoded without special tokens
    start: float  # time.perf_counter() at the start, at the first token's logits, at the end
    first_token_at: float
    end: float
    trace: PruneTrace | None  # None for the baseline
    strategy: Strategy  # as resolved on the model (its depth-mapped schedule)
    peak_memory_mb: float | None


def generate_batch(loaded: LoadedModel, strategy_text: str, inputs: dict, limits: Sequence[int],
                   device: torch.device, *, streamer=None, stopping_criteria: list | None = None) -> Generation:
    """Greedy generation for one batch in one arm, to the batch's longest limit; each row cut at its own.

    ``streamer``: a transformers ``BaseStreamer`` handed the prompt, then each step's new token of every row
    (``pilot serve`` streams each request's tokens as they come). ``stopping_criteria``: extra criteria (per row:
    a row that is done gets padding, and generation ends when every row is done); neither changes an answer."""
    model = loaded.model
    strategy = parse(strategy_text)
    tokenizer = loaded.processor.tokenizer
    stop_ids = stop_token_ids(model, tokenizer)
    clock = _FirstTokenClock(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    extra = {"streamer": streamer} if streamer is not None else {}
    if stopping_criteria:
        extra["stopping_criteria"] = StoppingCriteriaList(stopping_criteria)
    handle = None if isinstance(strategy, NoPrune) else attach(model, strategy)
    try:
        with torch.inference_mode():
            _synchronize(device)
            start = time.perf_counter()
            output = model.generate(**inputs, max_new_tokens=max(limits), do_sample=False,
                                    logits_processor=LogitsProcessorList([clock]),
                                    pad_token_id=tokenizer.pad_token_id, eos_token_id=sorted(stop_ids) or None,
                                    **extra)
            _synchronize(device)
            end = time.perf_counter()
        trace = handle.last_trace if handle else None
        resolved = handle.strategy if handle else strategy
    finally:
        if handle:
            handle.detach()
    peak_mb = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    prompt_length = inputs["input_ids"].shape[1]
    generated = [_generated(output[row, prompt_length:], limits[row], stop_ids) for row in range(len(limits))]
    texts = tokenizer.batch_decode([ids for ids, _ in generated], skip_special_tokens=True)
    return Generation(output=output, prompt_length=prompt_length, generated=generated, texts=texts, start=start,
                      first_token_at=clock.at, end=end, trace=trace, strategy=resolved, peak_memory_mb=peak_mb)


def result_rows(loaded: LoadedModel, items: Sequence[Item], inputs: dict, generation: Generation,
                labels: Sequence[str]) -> list[dict]:
    """One result row (a dict of SampleResult fields) per item of a generated batch: its answer scored for its
    task, clocks, cost (paper and full TFLOPs, visual tokens kept per layer, KV cache) and kept tokens."""
    model = loaded.model
    batch = len(items)
    output, prompt_length, generated, texts = (generation.output, generation.prompt_length, generation.generated,
                                               generation.texts)
    start, first_token_at, end = generation.start, generation.first_token_at, generation.end
    trace, resolved, peak_mb = generation.trace, generation.strategy, generation.peak_memory_mb
    steps = output.shape[1] - prompt_length  # decode steps the batch ran: the first token ends the prefill
    ttft_ms = (first_token_at - start) * 1000
    tpot_ms = (end - first_token_at) * 1000 / (steps - 1) if steps > 1 else None
    dims = ModelDims.from_config(model.config)
    kv_windows = _kv_windows(model)
    visual_ids = torch.tensor(loaded.adapter.visual_token_ids(model.config), device=inputs["input_ids"].device)
    grids, grid_thw = sample_grids(loaded, inputs)
    rows = []
    for row, item in enumerate(items):
        valid = inputs["attention_mask"][row].bool()
        ids = inputs["input_ids"][row][valid]
        is_visual = torch.isin(ids, visual_ids)
        n_visual = int(is_visual.sum())
        if trace is not None:
            per_layer = trace.visual_tokens_per_layer[row].tolist()
            kept = [s.kept[row][s.kept[row] >= 0].tolist() for s in trace.stages]
            if trace.pooled_origin is not None:
                kept = [trace.pooled_origin[row][trace.pooled_origin[row] >= 0].tolist()]
        else:
            per_layer, kept = [n_visual] * dims.layers, []
        visual_positions = torch.nonzero(is_visual).flatten()
        text_tokens = int(valid.sum()) - n_visual
        # The instruction: the text after the last visual token (TransPrune's IGA queries).
        instruction = int(len(ids) - 1 - visual_positions.max()) if len(visual_positions) else 0
        # The tower sees every original token, whatever the pruning: the adapter says how to size it.
        tower = loaded.adapter.tower_size(dims, model, inputs, row, n_visual, grid_thw[row])
        prediction, correct, scores = _score(item, texts[row], labels)
        output_tokens = len(generated[row][0])
        rows.append({
            # Open-ended rows are scored against their references: a label they carry is not theirs to count.
            "sample_id": item.id, "label": item.label if item.task == "label" else UNLABELLED,
            "prediction": prediction, "answer_text": texts[row],
            "correct": correct, "task": item.task, "references": list(item.references) or None,
            "scores": scores, "output_tokens": output_tokens, "finish_reason": generated[row][1],
            # Tokens that end mid-character decode to U+FFFD (the tokenizer's replacement for bad bytes).
            "utf8_valid": "\ufffd" not in texts[row],
            "ttft_ms": ttft_ms, "tpot_ms": tpot_ms,
            # At its last token the cache holds the prompt and every output token but that last one.
            "kv_cache_bytes": kv_cache_bytes(dims, per_layer, text_tokens + max(output_tokens - 1, 0), kv_windows,
                                             _element_bytes(model)),
            "prefill_ms": (first_token_at - start) * 1000 / batch, "total_ms": (end - start) * 1000 / batch,
            "batch_size": batch,
            "paper_tflops": paper_flops(dims, per_layer) / 1e12,
            "full_tflops": full_prefill_flops(dims, per_layer, text_tokens, resolved, instruction, **tower) / 1e12,
            "visual_tokens": n_visual, "visual_tokens_kept": per_layer[-1], "tokens_per_layer": per_layer,
            "kept_indices": kept, "image_grids": grids[row], "peak_memory_mb": peak_mb, "error": None,
        })
    return rows


def stop_token_ids(model: torch.nn.Module, tokenizer) -> set[int]:
    """Token ids that end an answer: the generation config's end-of-sequence ids, else the tokenizer's."""
    eos = getattr(model.generation_config, "eos_token_id", None)
    if eos is None:
        eos = tokenizer.eos_token_id
    return set() if eos is None else {int(t) for t in (eos if isinstance(eos, list | tuple) else [eos])}


def _kv_windows(model) -> list[int | None]:
    """Per decoder layer, its sliding window (the cache holds at most that many tokens) or None."""
    config = model.config.get_text_config()
    window = getattr(config, "sliding_window", None)
    types = decoder_layer_types(config, config.num_hidden_layers)
    return [window if kind == "sliding_attention" else None for kind in types]


def _element_bytes(model) -> int:
    return torch.finfo(model.dtype).bits // 8


def outcomes_from_rows(rows: Sequence[dict]) -> list[Outcome]:
    """Result rows of ``run_arm_batch`` as metric outcomes (for comparisons without the store)."""
    names = [f.name for f in fields(Outcome)]
    return [Outcome(**{name: r.get(name) for name in names}) for r in rows]


def error_rows(errors: dict[str, str], items_by_id: dict[str, Item]) -> list[dict]:
    """Result rows of the samples that could not be prepared (``PreparedBatch.errors``): no answer, their error."""
    return [{"sample_id": sid, "label": items_by_id[sid].label if items_by_id[sid].task == "label" else UNLABELLED,
             "task": items_by_id[sid].task, "prediction": None, "correct": None,
             "batch_size": 0, "error": error} for sid, error in errors.items()]
