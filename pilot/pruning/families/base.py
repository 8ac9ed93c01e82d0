"""The interface every model family implements, and the grid helpers they share.

An adapter answers, for one family of ``...ForConditionalGeneration`` models, what the engine's
family-agnostic loop needs (see docs/families.md):

1. ``language_model(model)``: the decoder stack (layers, final norm, rotary embedding).
2. ``visual_inputs(model, inputs)``: which input positions hold visual tokens, per sample, read
   from the multimodal model's forward arguments; and each image's token grid.
3. ``image_grids(...)``: the grid of each image's visual tokens, to pool them and draw them back.
4. ``prefill_positions`` / ``rotary``: the position scheme (1-D or multi-axis) and its rotary
   embedding; ``position_modes``: how positions may be numbered after a drop (first = default).
5. ``visual_additions``: anything else the LM adds per visual token in some layers (DeepStack).
6. The prefill attention pattern: every family here is plain causal; a family whose pattern the
   engine's masks cannot reproduce must refuse in ``check``.
7. The cost model's questions, answered torch-free (``pilot flops``, the controls and the
   dashboard ask them without loading torch; ``pilot.pruning.flops`` does the language model's
   arithmetic): ``dims`` (a ``ModelDims`` from a config dict), ``vision_flops`` (the tower and
   projector), ``typical_visual_tokens`` (``pilot flops``' default image), ``tower_size`` (how a
   run's sample sizes the tower), ``presets`` (public dimensions of released checkpoints) and
   ``max_images`` (images per prompt ``pilot serve`` accepts).

Torch is imported inside the methods that need it, so that importing an adapter (for its cost
side) does not import torch.

Positions inside the engine are ``[batch, seq, axes]`` long tensors: one axis for 1-D schemes,
three (temporal, height, width) for M-RoPE.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from pilot.pruning.families.dims import ModelDims, feature_layers, side, text_dims

if TYPE_CHECKING:
    import torch
    from torch import nn

SUPPORTED_ATTENTION = ("sdpa", "eager")


@dataclass(frozen=True)
class GridSegment:
    """A rows x cols grid of visual tokens starting at ``start`` in the sample's visual tokens.

    With ``newline`` each row is followed by one newline token (row stride cols + 1).
    """

    start: int
    rows: int
    cols: int
    newline: bool = False

    @property
    def length(self) -> int:
        return self.rows * (self.cols + int(self.newline))


@dataclass
class VisualInputs:
    """What one forward call's inputs say about its visual tokens: ``mask`` [batch, seq] marks
    the visual-token positions (None when the inputs cannot tell); ``attention_mask`` the 2D
    padding mask (for families whose LM receives prepared 4-D masks); ``block`` the groups of
    tokens that attend to each other both ways in prefill; ``grids`` each sample's image grids
    where the family reads them exactly off the prompt's token ids (else None: the engine asks
    ``image_grids``)."""

    mask: torch.Tensor | None
    attention_mask: torch.Tensor | None = None  # the 2D padding mask the multimodal forward was given
    block: torch.Tensor | None = None  # [batch, seq] long: bidirectional blocks (Gemma 3's images), -1 none
    grids: list[list[list[GridSegment]] | None] | None = None  # per sample, read off the token ids


class Family:
    """One model family. Subclasses set the class names and override what differs."""

    name: str = ""
    classes: tuple[str, ...] = ()
    position_modes: tuple[str, ...] = ("compact", "original")  # the first is the default
    position_axes: int = 1
    position_modes_reason: str = ""  # why a mode is missing, for the error message
    # Decoder-layer norms: attention input, attention output (or None), MLP input, MLP output (or None).
    layer_norms: tuple[str, str | None, str, str | None] = (
        "input_layernorm", None, "post_attention_layernorm", None,
    )
    # Attention types whose pattern the engine reproduces for this family (see ``decoder_layer_types``).
    layer_types: tuple[str, ...] = ("full_attention", "sliding_attention")
    # (given, needed, why): when the forward gets ``given``, it needs ``needed`` too. The processor
    # returns both; inputs built by hand without it get one message naming it (``check_inputs``).
    required_inputs: tuple[tuple[str, str, str], ...] = ()
    # -- 7. the cost model (torch-free) --
    model_types: tuple[str, ...] = ()  # config model_types this adapter reads besides ``name``
    presets: ClassVar[dict[str, dict]] = {}  # public config.json dimensions of released models, by preset name
    # Images per prompt ``pilot serve`` accepts: as many as the processor and the model take.
    max_images: int = 8
    typical_crops: int = 1  # crops (tiles) of one typical image, for ``typical_visual_tokens``

    # -- 1. the decoder stack ----------------------------------------------------------------
    def language_model(self, model: nn.Module) -> nn.Module:
        return model.model.language_model

    def check(self, model: nn.Module) -> nn.Module:
        """The language model of a supported model, or ValueError naming what does not fit."""
        name = type(model).__name__
        language_model = self.language_model(model)
        lm_name = type(language_model).__name__
        for attr in ("layers", "norm", "rotary_emb", "embed_tokens"):
            if not hasattr(language_model, attr):
                raise ValueError(f"{name}: its language model {lm_name} has no '{attr}'; not supported")
        for layer in language_model.layers:
            for attr in ("self_attn", "mlp", *filter(None, self.layer_norms)):
                if not hasattr(layer, attr):
                    raise ValueError(f"{name}: decoder layer {type(layer).__name__} has no '{attr}'; not supported")
        attention = language_model.layers[0].self_attn
        for attr in ("q_proj", "k_proj", "head_dim", "scaling"):
            if not hasattr(attention, attr):
                raise ValueError(f"{name}: attention {type(attention).__name__} has no '{attr}'")
        impl = language_model.config._attn_implementation
        if impl not in SUPPORTED_ATTENTION:
            raise ValueError(
                f"{name}: attention implementation {impl!r} is not supported; load the model with "
                f"attn_implementation='sdpa' or 'eager'"
            )
        layer_types = decoder_layer_types(language_model.config, len(language_model.layers))
        unknown = sorted(set(layer_types) - set(self.layer_types))
        if unknown:
            raise ValueError(
                f"{name}: layers of type {', '.join(unknown)} are not supported for this family; the engine "
                f"reproduces {', '.join(self.layer_types)} attention"
            )
        return language_model

    def position_mode(self, model: nn.Module, requested: str | None) -> str:
        """The position mode a strategy runs with: its own, or this family's default."""
        mode = requested or self.position_modes[0]
        if mode not in self.position_modes:
            raise ValueError(
                f"{type(model).__name__}: positions={mode} is not defined for this family; use "
                f"{' or '.join(self.position_modes)}. {self.position_modes_reason}".rstrip()
            )
        return mode

    def check_inputs(self, model: nn.Module, inputs: dict) -> None:
        """ValueError naming an input the multimodal forward needs and did not get (see ``required_inputs``)."""
        for given, needed, why in self.required_inputs:
            if inputs.get(given) is not None and inputs.get(needed) is None:
                raise ValueError(
                    f"{type(model).__name__} (pruning attached): the forward got {given} but no {needed}, "
                    f"which {why}. The processor returns {needed} alongside input_ids: pass all of its "
                    f"outputs, e.g. model.generate(**processor(images=..., text=..., return_tensors='pt'))"
                )

    # -- 2./3. visual tokens and their grids ---------------------------------------------------
    def visual_token_ids(self, config) -> tuple[int, ...]:
        return (config.image_token_id,)

    def visual_inputs(self, model: nn.Module, inputs: dict) -> VisualInputs:
        """Visual-token positions from the multimodal forward's keyword arguments."""
        mask = self._token_mask(model, inputs)
        grids = None
        if mask is not None and inputs.get("input_ids") is not None and bool(mask.any()):
            grids = self.prompt_grids(model, inputs)
        return VisualInputs(mask, inputs.get("attention_mask"), grids=grids)

    def prompt_grids(self, model: nn.Module, inputs: dict) -> list[list[list[GridSegment]] | None] | None:
        """Per sample, its images' grids read exactly off the prompt's token ids (and image sizes),
        or None where the token ids do not tell (then ``image_grids`` reads the LM's inputs)."""
        return None

    def _token_mask(self, model: nn.Module, inputs: dict) -> torch.Tensor | None:
        import torch

        ids = self.visual_token_ids(model.config)
        input_ids = inputs.get("input_ids")
        if input_ids is not None:
            return torch.isin(input_ids, torch.tensor(ids, device=input_ids.device))
        embeds = inputs.get("inputs_embeds")
        if embeds is None:
            return None
        table = model.model.get_input_embeddings()
        mask = torch.zeros(embeds.shape[:2], dtype=torch.bool, device=embeds.device)
        for token in ids:
            vector = table(torch.tensor(token, device=embeds.device))
            mask |= (embeds == vector).all(-1)
        return mask

    def image_grids(self, model: nn.Module, visual_tokens: torch.Tensor, visual_positions: torch.Tensor,
                    run_lengths: list[int]) -> list[list[GridSegment]]:
        """The grids of each image among one sample's visual tokens, in order.

        ``visual_tokens`` [n, hidden] are the sample's visual tokens as the LM receives them,
        ``visual_positions`` [n, axes] their positions, ``run_lengths`` the lengths of the runs
        of consecutive visual tokens in the prompt (images, or videos, between text).
        """
        raise NotImplementedError

    # -- 4. positions ----------------------------------------------------------------------------
    def prefill_positions(self, position_ids: torch.Tensor | None, valid: torch.Tensor) -> torch.Tensor:
        """[batch, seq, axes] positions of the prefill, from the LM's ``position_ids`` argument."""
        if position_ids is None:
            return compact_positions(valid)
        return position_ids.expand(valid.shape[0], -1).to(valid.device)[..., None]

    def rotary(self, language_model: nn.Module, hidden: torch.Tensor, positions: torch.Tensor,
               layer_type: str = "full_attention"):
        """The (cos, sin) rotary embeddings [batch, seq, head_dim] of [batch, seq, axes] positions,
        for layers of ``layer_type``."""
        return language_model.rotary_emb(hidden, position_ids=positions[..., 0])

    # -- 5. per-visual-token additions --------------------------------------------------------------
    def visual_additions(self, lm_kwargs: dict, visual_mask: torch.Tensor) -> dict[int, torch.Tensor]:
        """Per 0-indexed layer: features [batch, n_visual_max, hidden] added after that layer to
        the visual tokens (indexed by original visual index). None for most families."""
        return {}

    def lm_kwargs_handled(self) -> tuple[str, ...]:
        """Keyword arguments of the LM forward that ``visual_additions`` consumes."""
        return ()


    # -- 7. the cost model (torch-free) -----------------------------------------------------------
    def dims(self, config: dict) -> ModelDims:
        """The cost model's dimensions from a ``config.json`` dict (KeyError names a missing field).
        The default reads a fixed-crop model: ``text_config``, and a ``vision_config`` with
        ``image_size``, ``patch_size``, ``num_hidden_layers``; see ``crop_dims``."""
        return self.crop_dims(config)

    def crop_dims(self, data: dict, *, default_feature_layer: int = -1, vision_cls: bool = False,
                  downsample: int = 1) -> ModelDims:
        """A fixed-crop tower's dimensions: ``vision_cls`` when it adds a CLS token, ``downsample``
        patches per LM token along each side after the connector (pixel shuffle or pooling)."""
        text, vision = data["text_config"], data["vision_config"]
        return ModelDims(
            **text_dims(text),
            vision_hidden=vision["hidden_size"],
            vision_intermediate=vision["intermediate_size"],
            vision_layers=vision["num_hidden_layers"],
            patch=side(vision["patch_size"]),
            image_size=side(vision["image_size"]),
            feature_layers=feature_layers(data, default_feature_layer),
            vision_cls=vision_cls,
            downsample=downsample,
            family=data["model_type"],
        )

    def typical_visual_tokens(self, dims: ModelDims) -> int:
        """Visual tokens of one typical image (``pilot flops``' default): ``typical_crops`` crops."""
        return dims.tokens_per_crop * self.typical_crops

    def projector_flops(self, dims: ModelDims) -> int:
        """FLOPs of the projector on one crop. Default, LLaVA's: two linears on every patch."""
        shuffled = dims.vision_hidden * dims.feature_layers * dims.downsample**2  # projector input width
        return 2 * dims.patches_per_crop * (shuffled * dims.hidden + dims.hidden * dims.hidden)

    def vision_flops(self, dims: ModelDims, *, crops: int = 0, merged_tokens: int = 0,
                     image_grids: Sequence[Sequence[int]] | None = None) -> float:
        """FLOPs of the vision tower and projector for one sample. Default, fixed-size crops: a ViT
        (CLIP / InternViT with a CLS token, SigLIP without) and ``projector_flops``, per crop; every
        crop's tokens attend to each other only. Dynamic-resolution families read ``merged_tokens``
        (the LM tokens of the sample's images, one image assumed) or ``image_grids`` (their
        ``image_grid_thw`` rows, exact) instead of ``crops``."""
        patches, dv, mv = dims.patches_per_crop, dims.vision_hidden, dims.vision_intermediate
        tokens = patches + int(dims.vision_cls)
        embed = 2 * patches * 3 * dims.patch**2 * dv
        layer = 2 * tokens * 4 * dv * dv + 4 * tokens * tokens * dv + 4 * tokens * dv * mv
        return float(crops * (embed + dims.vision_layers * layer + self.projector_flops(dims)))

    def tower_size(self, dims: ModelDims, model, inputs: dict, row: int, n_visual: int,
                   image_grid_thw: list | None) -> dict:
        """How ``full_prefill_flops`` sizes sample ``row``'s vision tower in a run: keyword arguments
        (``crops``, ``visual_tokens_original``, ``image_grids``). ``n_visual`` is its visual tokens
        in the prompt, ``image_grid_thw`` its images' rows when the processor gave them. Default:
        fixed crops follow from the original tokens; dynamic resolution takes the exact grids when
        they account for every visual token (else video tokens are among them: the count alone)."""
        if not dims.dynamic_resolution:
            return {"visual_tokens_original": n_visual}
        thw = image_grid_thw
        if thw is not None and sum(t * h * w for t, h, w in thw) != n_visual * dims.spatial_merge**2:
            thw = None
        return {"visual_tokens_original": n_visual, "image_grids": thw}


def assign_to_samples(sizes: list[int], counts: list[int]) -> list[list[int] | None]:
    """Split items of ``sizes`` (images in batch order, their token counts) among samples holding
    ``counts`` visual tokens each: per sample the indices of its items, or None where its items do
    not add up to its count."""
    out, cursor = [], 0
    for count in counts:
        indices, covered = [], 0
        while covered < count and cursor < len(sizes):
            covered += sizes[cursor]
            indices.append(cursor)
            cursor += 1
        out.append(indices if covered == count else None)
    return out


def visual_counts(model: nn.Module, family: Family, inputs: dict) -> list[int]:
    """Each sample's visual tokens in the processor's ``input_ids`` (padding excluded)."""
    input_ids = inputs["input_ids"]
    mask = family._token_mask(model, inputs)
    if inputs.get("attention_mask") is not None:
        mask = mask & inputs["attention_mask"].bool()
    return [int(n) for n in mask.sum(dim=1).tolist()] if len(input_ids) else []


def decoder_layer_types(config, depth: int) -> list[str]:
    """Each decoder layer's attention type, as transformers' caches read them: the config's
    ``layer_types``, else every layer a sliding window when ``sliding_window`` is set (Mistral)."""
    layer_types = getattr(config, "layer_types", None)
    if layer_types:
        return list(layer_types)
    if getattr(config, "attention_chunk_size", None) is not None:
        return ["chunked_attention"] * depth
    kind = "sliding_attention" if getattr(config, "sliding_window", None) is not None else "full_attention"
    return [kind] * depth


def compact_positions(valid: torch.Tensor) -> torch.Tensor:
    """Consecutive positions over each row's valid tokens, as [batch, seq, 1]."""
    return (valid.long().cumsum(dim=1) - 1).clamp_min(0)[..., None]


def per_sample_visual(features: torch.Tensor, visual_mask: torch.Tensor) -> torch.Tensor:
    """Features [total_visual, hidden] in row-major order of ``visual_mask`` [batch, seq] as
    [batch, n_visual_max, hidden], indexed by each sample's visual index."""
    import torch

    counts = visual_mask.sum(dim=1)
    out = features.new_zeros(visual_mask.shape[0], int(counts.max()) if counts.numel() else 0, features.shape[-1])
    rows, _ = torch.nonzero(visual_mask, as_tuple=True)
    index = (visual_mask.long().cumsum(dim=1) - 1)[visual_mask]
    out[rows, index] = features.to(out.dtype)
    return out


def pool_visual(
    embeddings: torch.Tensor, grids: list[GridSegment], factor: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Average-pool one image's visual tokens [n, hidden] grid by grid.

    Returns the pooled tokens and, for each, the index of the original token at the top-left of
    its window (newline tokens are kept, one per pooled row). Tokens outside every grid (a
    trailing newline) pass through.
    """
    import torch

    pieces, origins = [], []
    covered = 0
    for grid in grids:
        stride = grid.cols + int(grid.newline)
        block = embeddings[grid.start : grid.start + grid.length].view(grid.rows, stride, -1)
        cells = block[:, : grid.cols].permute(2, 0, 1).float()
        pooled = torch.nn.functional.avg_pool2d(cells[None], factor, factor, ceil_mode=True)[0]
        out_rows, out_cols = pooled.shape[1:]
        pooled = pooled.permute(1, 2, 0).to(embeddings.dtype)
        row_index = torch.arange(out_rows) * factor
        col_index = torch.arange(out_cols) * factor
        origin = grid.start + row_index[:, None] * stride + col_index[None, :]
        if grid.newline:
            pooled = torch.cat([pooled, block[row_index, grid.cols][:, None]], dim=1)
            origin = torch.cat([origin, (grid.start + row_index * stride + grid.cols)[:, None]], dim=1)
        pieces.append(pooled.reshape(-1, embeddings.shape[-1]))
        origins.append(origin.reshape(-1))
        covered = grid.start + grid.length
    if covered < embeddings.shape[0]:
        pieces.append(embeddings[covered:])
        origins.append(torch.arange(covered, embeddings.shape[0]))
    return torch.cat(pieces), torch.cat(origins).to(embeddings.device)
