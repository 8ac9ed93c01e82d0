"""The pruning engine: ``attach(model, strategy)`` makes a stock vision-language model drop visual tokens.

How it works. The handle replaces two ``forward`` methods on the model's *instances* (never the
classes): the multimodal model's, only to note which input positions hold visual tokens (and
their grids), and the language model's, with our own loop over the decoder layers. Between
layers the loop removes visual tokens for real: hidden states, positions, the padding mask and,
since each later layer writes its own KV cache, the cache of every later layer shrink.

Everything that differs between model families (where the visual tokens are, their grids, the
position scheme, DeepStack-style additions) comes from the family's adapter in
``pilot.pruning.families``; this loop knows no family by name. Positions are [batch, seq, axes]
(one axis for 1-D schemes, three for M-RoPE).

Batches are left-padded. After each drop every sample is re-packed (kept tokens in order, padding
on the left), so samples that keep different numbers of tokens (LLaVA-NeXT) share one batch.

Decoding. Prefill records, per stage, the padding mask and the next free position. A decoding
step appends its token to every layer's cache; a layer of stage s sees that stage's mask plus
the decoded tokens, and the new token's position follows stage s's last position ("compact":
positions renumbered after each drop, so the new token follows the last kept token;
"original": positions kept, the new token follows the original prompt).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field

import torch
from torch import nn
from transformers import DynamicCache
from transformers.modeling_outputs import BaseModelOutputWithPast

from pilot.pruning import families
from pilot.pruning.families import VisualInputs, compact_positions
from pilot.pruning.families.base import decoder_layer_types
from pilot.pruning.scores import normalise, query_attention, token_transition
from pilot.pruning.strategies import (
    RandomPrune,
    Strategy,
    kept_count,
    parse,
)


@dataclass
class StageTrace:
    """One pruning stage of one prefill. Tensors are per sample, padded with -1 / NaN.

    ``candidates`` [batch, n] are the original visual indices present before the stage (in
    order); ``ttv``/``iga``/``score`` [batch, n] are aligned with them; ``kept`` [batch, k] are
    the original indices kept, ascending.
    """

    after_layer: int
    keep: float
    candidates: torch.Tensor
    kept: torch.Tensor
    score: torch.Tensor
    ttv: torch.Tensor | None = None
    iga: torch.Tensor | None = None


@dataclass
class PruneTrace:
    """What the last prefill did."""

    strategy: str
    visual_tokens_original: torch.Tensor  # [batch]
    visual_tokens_per_layer: torch.Tensor  # [batch, n_layers]: visual tokens each layer saw
    stages: list[StageTrace] = field(default_factory=list)
    pooled_origin: torch.Tensor | None = None  # TokenPool: [batch, n] top-left index of each window

    @property
    def kept(self) -> list[torch.Tensor]:
        return [stage.kept for stage in self.stages]


@dataclass
class _Layout:
    """The token layout of one stage: left-padded rows, one per sample."""

    hidden: torch.Tensor  # [batch, seq, hidden]
    valid: torch.Tensor  # [batch, seq] bool: not padding
    positions: torch.Tensor  # [batch, seq, axes] long
    visual_index: torch.Tensor  # [batch, seq] long: original visual index, -1 for text/padding
    block: torch.Tensor  # [batch, seq] long: a block's tokens attend both ways (an image, in some families); -1 none

    @property
    def visual(self) -> torch.Tensor:
        return self.valid & (self.visual_index >= 0)


@dataclass
class _DecodeState:
    prompt_length: int  # columns of the prefill's attention mask
    stage_valid: list[torch.Tensor]  # per stage [batch, seq_s]
    stage_next_position: list[torch.Tensor]  # per stage [batch]
    layer_stage: list[int]  # stage of each decoder layer


def attention_mask_4d(
    valid: torch.Tensor,
    n_query: int,
    implementation: str,
    dtype,
    block: torch.Tensor | None = None,
    window: int | None = None,
) -> torch.Tensor | None:
    """Causal + padding mask for the last ``n_query`` of ``valid.shape[1]`` keys.

    ``block`` [batch, keys]: tokens of the same block (>= 0) also see each other's later tokens
    (bidirectional inside an image, where the family says so). ``window``: a query sees keys at most ``window - 1``
    tokens back (sliding-window layers; counted in the layer's own token sequence, as its KV
    cache is). Boolean for sdpa (True = attend), additive for eager. A padding query attends to
    itself only, so no row is empty (an empty row gives NaN in sdpa). Without padding, blocks or
    a binding window, sdpa gets None (causal when every key is queried; one query sees all keys).
    """
    n_key = valid.shape[1]
    plain = (block is None or not bool((block >= 0).any())) and (window is None or window >= n_key)
    if implementation == "sdpa" and plain and n_query in (1, n_key) and bool(valid.all()):
        return None  # as the stock model does: sdpa's own causal path, the fastest kernel
    key_index = torch.arange(n_key, device=valid.device)
    query_index = key_index[n_key - n_query :]
    allowed = (key_index[None, :] <= query_index[:, None])[None]  # [1, queries, keys]
    if block is not None:
        query_block = block[:, n_key - n_query :]
        allowed = allowed | ((query_block[:, :, None] == block[:, None, :]) & (query_block[:, :, None] >= 0))
    if window is not None:
        allowed = allowed & (query_index[:, None] - key_index[None, :] < window)[None]
    allowed = (allowed & valid[:, None, :]) | (key_index[None, :] == query_index[:, None])[None]
    allowed = allowed[:, None]
    if implementation == "eager":
        return torch.zeros(allowed.shape, dtype=dtype, device=valid.device).masked_fill(
            ~allowed, torch.finfo(dtype).min
        )
    return allowed


def _next_position(layout: _Layout) -> torch.Tensor:
    """Per row, one more than the largest position on any axis: where decoding continues."""
    return layout.positions.masked_fill(~layout.valid[..., None], -1).amax(dim=(1, 2)) + 1


def _run_lengths(columns: torch.Tensor) -> list[int]:
    """Lengths of the runs of consecutive indices in ``columns`` (ascending): the visual tokens'
    runs in a prompt, one per image (or video, or tile) between text tokens."""
    if len(columns) == 0:
        return []
    breaks = (torch.nonzero(torch.diff(columns) > 1).flatten() + 1).tolist()
    starts = [0, *breaks]
    return [end - start for start, end in zip(starts, [*breaks, len(columns)], strict=True)]


def _gather_visual(features: torch.Tensor, layout: _Layout) -> torch.Tensor:
    """Per-visual-index features [batch, n_visual, hidden] laid out on the layout's tokens (0 elsewhere)."""
    index = layout.visual_index.clamp_min(0)[..., None].expand(-1, -1, features.shape[-1])
    gathered = features.to(layout.hidden.dtype).gather(1, index)
    return gathered.masked_fill(~layout.visual[..., None], 0.0)


def _pack_left(values: torch.Tensor, select: torch.Tensor, fill) -> torch.Tensor:
    """Per row, the selected values in order, left-aligned, padded with ``fill``."""
    width = int(select.sum(dim=1).max().item()) if select.numel() else 0
    order = torch.argsort((~select).to(torch.int8), dim=1, stable=True)[:, :width]
    packed = values.gather(1, order)
    return packed.masked_fill(~select.gather(1, order), fill)


def _repack(layout: _Layout, keep: torch.Tensor, positions: str, extra: torch.Tensor | None = None):
    """Keep the ``keep`` tokens of each row, in order, re-padded on the left."""
    counts = keep.sum(dim=1)
    length = int(counts.max().item())
    order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)
    source = torch.arange(length, device=keep.device)[None, :] - (length - counts)[:, None]
    valid = source >= 0
    index = order.gather(1, source.clamp_min(0))
    hidden = layout.hidden.gather(1, index[..., None].expand(-1, -1, layout.hidden.shape[-1]))
    visual_index = layout.visual_index.gather(1, index).masked_fill(~valid, -1)
    if positions == "original":
        axes = layout.positions.shape[-1]
        new_positions = layout.positions.gather(1, index[..., None].expand(-1, -1, axes))
        new_positions = new_positions.masked_fill(~valid[..., None], 0)
    else:
        new_positions = compact_positions(valid)
    block = layout.block.gather(1, index).masked_fill(~valid, -1)
    new_extra = extra.gather(1, index).masked_fill(~valid, 0) if extra is not None else None
    return _Layout(hidden, valid, new_positions, visual_index, block), new_extra


class PruningHandle:
    """Returned by ``attach``. ``last_trace`` describes the last prefill; ``detach()`` restores."""

    def __init__(self, model: nn.Module, strategy: Strategy):
        self.model = model
        self.family = families.for_model(model)
        self.language_model = self.family.check(model)
        self.depth = len(self.language_model.layers)
        # Each layer's attention type (full, or sliding window) sets its mask and rotary embedding.
        config = self.language_model.config
        self.layer_types = decoder_layer_types(config, self.depth)
        self.layer_kinds = sorted(set(self.layer_types))
        self.sliding_window = getattr(config, "sliding_window", None)
        self.strategy = parse(strategy).resolve(self.depth)
        requested = self.strategy.position_mode
        if requested is None and self.strategy.preferred_positions in self.family.position_modes:
            requested = self.strategy.preferred_positions  # the strategy's authors' numbering
        self.position_mode = self.family.position_mode(model, requested)
        self.last_trace: PruneTrace | None = None
        # Set to a trace's ``kept`` to force the same selection (e.g. to recompute without cache).
        self.replay_kept: list[torch.Tensor] | None = None
        self._states: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._visual: VisualInputs | None = None
        self._attached = False

    def _window(self, kind: str) -> int | None:
        return self.sliding_window if kind == "sliding_attention" else None

    # -- attach / detach -------------------------------------------------------------------
    def _attach(self) -> PruningHandle:
        multimodal = self.model.model
        if "forward" in vars(multimodal) or "forward" in vars(self.language_model):
            raise RuntimeError(f"{type(self.model).__name__} already has a pruning handle; detach it first")
        original_multimodal = multimodal.forward

        def multimodal_forward(*args, **kwargs):
            inputs = {"input_ids": args[0], **kwargs} if args else kwargs  # input_ids comes first
            self.family.check_inputs(self.model, inputs)
            self._visual = self.family.visual_inputs(self.model, inputs)
            try:
                return original_multimodal(*args, **kwargs)
            finally:
                self._visual = None

        multimodal.forward = multimodal_forward
        self.language_model.forward = self._language_model_forward
        self._attached = True
        return self

    def detach(self) -> None:
        """Restore the model exactly: the class methods are used again."""
        if self._attached:
            del self.model.model.forward
            del self.language_model.forward
            self._attached = False

    def __enter__(self) -> PruningHandle:
        return self

    def __exit__(self, *exc) -> None:
        self.detach()

    # -- the language model's forward --------------------------------------------------------
    def _language_model_forward(
        self,
        input_ids=None,
        attention_mask=None,
        position_ids=None,
        cache=None,
        inputs_embeds=None,
        use_cache=None,
        past_key_values=None,
        **kwargs,
    ):
        lm = self.language_model
        cache = cache if cache is not None else past_key_values
        if inputs_embeds is None:
            inputs_embeds = lm.embed_tokens(input_ids)
        visual = self._visual
        if isinstance(attention_mask, dict) and visual is not None:
            attention_mask = visual.attention_mask  # prepared 4-D masks: the engine builds its own
        if attention_mask is not None and (isinstance(attention_mask, dict) or attention_mask.ndim != 2):
            raise ValueError("the pruning engine needs a 2D attention mask (static caches are not supported)")
        use_cache = lm.config.use_cache if use_cache is None else use_cache
        if use_cache and cache is None:
            cache = DynamicCache(config=lm.config)
        if not use_cache:
            cache = None
        state = self._states.get(cache) if cache is not None else None
        if state is not None:
            hidden = self._decode(inputs_embeds, attention_mask, cache, state)
        elif visual is not None and visual.mask is not None and bool(visual.mask.any()):
            hidden = self._prefill(inputs_embeds, attention_mask, position_ids, cache, visual, kwargs)
        else:  # no image: the stock forward, unpruned
            self.last_trace = None
            return type(lm).forward(
                lm, attention_mask=attention_mask, position_ids=position_ids, cache=cache,
                inputs_embeds=inputs_embeds, use_cache=use_cache, **kwargs,
            )
        return BaseModelOutputWithPast(last_hidden_state=lm.norm(hidden), cache=cache)

    def _run_layer(self, index: int, hidden, mask, embeddings, positions, cache):
        layer = self.language_model.layers[index]
        return layer(
            hidden, attention_mask=mask, position_embeddings=embeddings,
            position_ids=positions[..., 0], cache=cache, use_cache=cache is not None,
        )

    def _run_layer_with_ttv(self, index: int, hidden, mask, embeddings, positions, cache, valid):
        """The decoder layer written out, to read each sub-module's input and output for TTV.

        Input: after the sub-module's input norm; output: what is added to the residual (after
        the output norm where the family's layer has one).
        """
        layer = self.language_model.layers[index]
        direction = self.strategy.direction
        attn_in_norm, attn_out_norm, mlp_in_norm, mlp_out_norm = self.family.layer_norms
        attn_in = getattr(layer, attn_in_norm)(hidden)
        attn_out, _ = layer.self_attn(
            hidden_states=attn_in, attention_mask=mask, position_embeddings=embeddings,
            position_ids=positions[..., 0], cache=cache,
        )
        if attn_out_norm:
            attn_out = getattr(layer, attn_out_norm)(attn_out)
        hidden = hidden + attn_out
        mlp_in = getattr(layer, mlp_in_norm)(hidden)
        mlp_out = layer.mlp(mlp_in)
        if mlp_out_norm:
            mlp_out = getattr(layer, mlp_out_norm)(mlp_out)
        ttv = token_transition(attn_in, attn_out, valid, direction)
        ttv = ttv + token_transition(mlp_in, mlp_out, valid, direction)
        return hidden + mlp_out, ttv

    def _prefill(self, inputs_embeds, attention_mask, position_ids, cache, visual: VisualInputs, lm_kwargs: dict):
        lm = self.language_model
        strategy = self.strategy
        implementation = lm.config._attn_implementation
        batch, length = inputs_embeds.shape[:2]
        device = inputs_embeds.device
        valid = (
            attention_mask.bool() if attention_mask is not None
            else torch.ones(batch, length, dtype=torch.bool, device=device)
        )
        image_mask = visual.mask.to(device) & valid
        positions = self.family.prefill_positions(position_ids, valid)
        visual_index = (image_mask.long().cumsum(dim=1) - 1).masked_fill(~image_mask, -1)
        block = visual.block.to(device).masked_fill(~valid, -1) if visual.block is not None else torch.full_like(
            visual_index, -1)
        layout = _Layout(inputs_embeds, valid, positions, visual_index, block)
        # Per layer: features the LM adds to the visual tokens after it (DeepStack-style),
        # indexed by original visual index so that they follow the pruning.
        additions = self.family.visual_additions(lm_kwargs, visual.mask.to(device))
        n_visual = image_mask.sum(dim=1)
        trace = PruneTrace(
            strategy=str(strategy),
            visual_tokens_original=n_visual.cpu(),
            visual_tokens_per_layer=torch.zeros(batch, self.depth, dtype=torch.long),
        )
        if strategy.pool_factor > 1:
            layout, trace.pooled_origin, additions = self._pool(layout, visual, additions)
        if strategy.before_lm_keep is not None:
            keep_visual, stage_trace = self._select_diverse(layout, visual, strategy.before_lm_keep)
            trace.stages.append(stage_trace)
            layout, _ = _repack(layout, (layout.valid & (layout.visual_index < 0)) | keep_visual, self.position_mode)

        stage_keep = dict(strategy.stages)
        last_stage_layer = max(stage_keep, default=0)
        accumulate = strategy.accumulate_start
        ttv_sum = torch.zeros(layout.valid.shape, dtype=torch.float32, device=device) if accumulate else None

        state = _DecodeState(length, [], [], [])
        masks = embeddings = None
        for index in range(self.depth):
            if masks is None:  # a new stage: its masks, rotary embeddings and decode bookkeeping, per layer type
                n_tokens = layout.valid.shape[1]
                masks = {kind: attention_mask_4d(layout.valid, n_tokens, implementation, layout.hidden.dtype,
                                                 layout.block, self._window(kind)) for kind in self.layer_kinds}
                embeddings = {kind: self.family.rotary(lm, layout.hidden, layout.positions, kind)
                              for kind in self.layer_kinds}
                state.stage_valid.append(layout.valid)
                state.stage_next_position.append(_next_position(layout))
            state.layer_stage.append(len(state.stage_valid) - 1)
            kind = self.layer_types[index]
            mask = masks[kind]
            layer_input = layout.hidden  # FastV scores with the stage layer's own attention on it
            trace.visual_tokens_per_layer[:, index] = layout.visual.sum(dim=1).cpu()
            layer_number = index + 1  # 1-indexed, as in the schedule
            if accumulate and accumulate <= layer_number <= last_stage_layer:
                hidden, ttv = self._run_layer_with_ttv(
                    index, layout.hidden, mask, embeddings[kind], layout.positions, cache, layout.valid
                )
                ttv_sum = ttv_sum + ttv
            else:
                hidden = self._run_layer(index, layout.hidden, mask, embeddings[kind], layout.positions, cache)
            if index in additions:
                hidden = hidden + _gather_visual(additions[index], layout)
            layout.hidden = hidden
            if layer_number in stage_keep:
                stage = len(trace.stages)
                if strategy.score_layer == "own":
                    scoring = (self.language_model.layers[index], layer_input, embeddings[kind], self._window(kind))
                else:  # the layer after the stage, on this layer's output
                    next_kind = self.layer_types[layer_number]
                    scoring = (self.language_model.layers[layer_number], layout.hidden, embeddings[next_kind],
                               self._window(next_kind))
                keep_visual, stage_trace = self._select(
                    stage, layer_number, stage_keep[layer_number], layout, n_visual, ttv_sum, scoring,
                )
                trace.stages.append(stage_trace)
                keep_tokens = (layout.valid & (layout.visual_index < 0)) | keep_visual
                layout, ttv_sum = _repack(layout, keep_tokens, self.position_mode, ttv_sum)
                masks = None
        if cache is not None:
            self._states[cache] = state
        self.last_trace = trace
        return layout.hidden

    def _select(self, stage, layer_number, keep, layout, n_visual, ttv_sum, scoring):
        """Choose the visual tokens to keep after ``layer_number``; returns a mask and the trace.

        ``scoring``: (layer, hidden states, rotary embeddings, window) that the attention score
        is computed with: the next layer on this layer's output, or (FastV) this layer on its input.
        """
        strategy = self.strategy
        candidates = layout.visual
        length = candidates.shape[1]
        if keep is not None:
            # Of the original tokens, or (PyramidDrop) of the tokens still present.
            base = candidates.sum(dim=1) if strategy.keep_of_present else n_visual
            targets = torch.tensor([kept_count(int(n), keep) for n in base.tolist()], device=candidates.device)
            targets = torch.minimum(targets, candidates.sum(dim=1))
        ttv = iga = None
        if self.replay_kept is not None:
            kept = self.replay_kept[stage].to(candidates.device)
            spare = int(n_visual.max())  # padding (-1) goes to a spare column, never onto index 0
            chosen = torch.zeros(candidates.shape[0], spare + 1, dtype=torch.bool, device=candidates.device)
            chosen.scatter_(1, kept.masked_fill(kept < 0, spare), kept >= 0)
            score = chosen.gather(1, layout.visual_index.clamp_min(0)).float() * candidates
            targets = (score > 0).sum(dim=1)
        elif isinstance(strategy, RandomPrune):
            score = torch.zeros(candidates.shape, dtype=torch.float32)
            for row, count in enumerate(candidates.sum(dim=1).tolist()):
                generator = torch.Generator().manual_seed(strategy.seed * 1_000_003 + stage * 10_007 + count)
                draws = torch.rand(count, generator=generator)
                score[row, candidates[row].cpu()] = draws
            score = score.to(candidates.device)
        else:
            if strategy.score_queries == "instruction":  # the text after the last image
                last_visual = torch.where(candidates, torch.arange(length, device=candidates.device), -1)
                after_image = torch.arange(length, device=candidates.device)[None, :] > last_visual.max(
                    dim=1, keepdim=True
                ).values
                queries = layout.valid & after_image
            elif strategy.score_queries == "last":
                queries = torch.zeros_like(candidates)
                queries[:, -1] = True  # the last token; left padding puts it last in every row
            else:
                raise ValueError(f"{strategy} has no in-LLM scoring")
            layer, hidden, embeddings, window = scoring
            received = query_attention(layer, hidden, embeddings, layout.valid, queries, window)
            iga = normalise(received, candidates)
            if ttv_sum is not None:  # TransPrune
                ttv = normalise(ttv_sum, candidates)
                score = strategy.alpha * ttv + (1.0 - strategy.alpha) * iga
            else:
                score = iga
        order = torch.argsort(score.masked_fill(~candidates, float("-inf")), dim=1, descending=True, stable=True)
        if keep is None and self.replay_kept is None:  # score mass: the fewest tokens reaching the threshold
            mass = strategy.mass[stage]
            reached = score.gather(1, order).masked_fill(~candidates.gather(1, order), 0.0).cumsum(dim=1) >= mass - 1e-6
            targets = torch.minimum(reached.float().argmax(dim=1) + 1, candidates.sum(dim=1).clamp_min(1))
        rank = torch.empty_like(order)
        rank.scatter_(1, order, torch.arange(length, device=order.device).expand_as(order))
        keep_visual = candidates & (rank < targets[:, None])

        def per_candidate(values):
            return None if values is None else _pack_left(values.float(), candidates, float("nan")).cpu()

        stage_trace = StageTrace(
            after_layer=layer_number,
            keep=keep,
            candidates=_pack_left(layout.visual_index, candidates, -1).cpu(),
            kept=_pack_left(layout.visual_index, keep_visual, -1).cpu(),
            score=per_candidate(score),
            ttv=per_candidate(ttv),
            iga=per_candidate(iga),
        )
        return keep_visual, stage_trace

    def _select_diverse(self, layout: _Layout, visual: VisualInputs, keep: float):
        """DivPrune: per image, the greedy max-min cosine-diverse ``keep`` share of its tokens."""
        candidates = layout.visual
        chosen = torch.zeros_like(candidates)
        score = torch.full(candidates.shape, float("nan"))
        if self.replay_kept is not None:
            kept = self.replay_kept[0].to(candidates.device)
            spare = int(layout.visual_index.max()) + 1
            wanted = torch.zeros(candidates.shape[0], spare + 1, dtype=torch.bool, device=candidates.device)
            wanted.scatter_(1, kept.masked_fill(kept < 0, spare), kept >= 0)
            chosen = wanted.gather(1, layout.visual_index.clamp_min(0)) & candidates
        else:
            for row in range(candidates.shape[0]):
                present = torch.nonzero(candidates[row]).flatten()
                tokens = layout.hidden[row, present]
                positions = layout.positions[row, present]
                offset = 0
                for image in self._image_grids(visual, row, tokens, positions, present):
                    size = sum(g.length for g in image)
                    picked, spread = max_min_diverse(tokens[offset : offset + size], kept_count(size, keep))
                    chosen[row, present[offset + picked]] = True
                    score[row, present[offset : offset + size].cpu()] = spread.cpu()
                    offset += size
        stage_trace = StageTrace(
            after_layer=0, keep=keep,
            candidates=_pack_left(layout.visual_index, candidates, -1).cpu(),
            kept=_pack_left(layout.visual_index, chosen, -1).cpu(),
            score=_pack_left(score.to(candidates.device), candidates, float("nan")).cpu(),
        )
        return chosen, stage_trace

    def _image_grids(self, visual: VisualInputs, row: int, tokens, positions, columns) -> list:
        """Sample ``row``'s image grids: exact from the prompt's token ids where the family reads
        them there, else from its visual tokens, their positions and runs (``columns``: where they sit)."""
        if visual.grids is not None and visual.grids[row] is not None:
            return visual.grids[row]
        return self.family.image_grids(self.model, tokens, positions, _run_lengths(columns))

    def _pool(self, layout: _Layout, visual: VisualInputs, additions: dict[int, torch.Tensor]):
        """TokenPool: replace each image's visual tokens by their average-pooled grid.

        A pooled token stands for its window's top-left token: it takes that token's visual
        index and, with original positions, its position. Per-visual-token additions (DeepStack)
        are pooled with the same windows.
        """
        factor = self.strategy.pool_factor
        additions = {layer: values.clone() for layer, values in additions.items()}
        rows = []  # per row: (hidden, visual index, positions) of its tokens after pooling
        for row in range(layout.hidden.shape[0]):
            present = torch.nonzero(layout.valid[row]).flatten()
            tokens = layout.hidden[row, present]
            index = layout.visual_index[row, present]
            positions = layout.positions[row, present]
            block = layout.block[row, present]
            is_visual = index >= 0
            visual_positions = positions[is_visual]  # by visual index: they are in order
            visual_at = torch.nonzero(is_visual).flatten()  # the row's visual tokens, in visual-index order
            visual_tokens = tokens[visual_at]
            grids = self._image_grids(visual, row, visual_tokens, visual_positions, visual_at)
            # Pooled tokens take their window's top-left token's place; text (separators such as
            # row breaks between an image's rows) stays where it is.
            keep, hidden_row, offset = ~is_visual, tokens.clone(), 0
            for image in grids:
                size = sum(g.length for g in image)
                pooled, origin = families.pool_visual(visual_tokens[offset : offset + size], image, factor)
                origin = origin + offset
                for values in additions.values():
                    values[row, origin] = families.pool_visual(values[row, offset : offset + size], image, factor)[0]
                hidden_row[visual_at[origin]] = pooled
                keep[visual_at[origin]] = True
                offset += size
            keep[visual_at[offset:]] = True  # visual tokens after every image's grids pass through, as before
            rows.append((hidden_row[keep], index[keep], positions[keep], block[keep]))
        length = max(len(hidden) for hidden, *_ in rows)
        batch = len(rows)
        hidden = layout.hidden.new_zeros(batch, length, layout.hidden.shape[-1])
        visual_index = torch.full((batch, length), -1, dtype=torch.long, device=hidden.device)
        positions = layout.positions.new_zeros(batch, length, layout.positions.shape[-1])
        valid = torch.zeros(batch, length, dtype=torch.bool, device=hidden.device)
        blocks = torch.full((batch, length), -1, dtype=torch.long, device=hidden.device)
        for row, (tokens, index, position, block) in enumerate(rows):
            hidden[row, length - len(tokens) :] = tokens
            visual_index[row, length - len(tokens) :] = index
            positions[row, length - len(tokens) :] = position
            blocks[row, length - len(tokens) :] = block
            valid[row, length - len(tokens) :] = True
        if self.position_mode == "compact":
            positions = compact_positions(valid)
        new = _Layout(hidden, valid, positions, visual_index, blocks)
        return new, _pack_left(visual_index, new.visual, -1).cpu(), additions

    def _decode(self, inputs_embeds, attention_mask, cache, state: _DecodeState):
        lm = self.language_model
        implementation = lm.config._attn_implementation
        batch, n_new = inputs_embeds.shape[:2]
        device = inputs_embeds.device
        first_stage = state.stage_valid[state.layer_stage[0]]
        n_decoded = cache.get_seq_length(0) - first_stage.shape[1] + n_new
        if attention_mask is not None:
            decoded = attention_mask[:, state.prompt_length :].bool()
            if decoded.shape[1] != n_decoded:
                raise ValueError(
                    f"attention mask has {attention_mask.shape[1]} columns; expected the prompt's "
                    f"{state.prompt_length} plus {n_decoded} decoded tokens"
                )
        else:
            decoded = torch.ones(batch, n_decoded, dtype=torch.bool, device=device)
        offsets = decoded.long().cumsum(dim=1)[:, -n_new:] - 1
        masks, embeddings = [], []  # per stage, per layer type
        for valid, next_position in zip(state.stage_valid, state.stage_next_position, strict=True):
            full = torch.cat([valid, decoded], dim=1)
            stage_masks = {}
            for kind in self.layer_kinds:
                window = self._window(kind)
                mask = attention_mask_4d(full, n_new, implementation, inputs_embeds.dtype, window=window)
                if mask is not None and window is not None:
                    # A sliding layer's cache keeps its last window - 1 tokens: the mask covers those.
                    kept = min(valid.shape[1] + n_decoded - n_new, window - 1) + n_new
                    mask = mask[..., -kept:]
                stage_masks[kind] = mask
            masks.append(stage_masks)
            positions = next_position[:, None] + offsets.clamp_min(0)  # the same on every axis
            positions = positions[..., None].expand(-1, -1, self.family.position_axes)
            embeddings.append((positions, {kind: self.family.rotary(lm, inputs_embeds, positions, kind)
                                           for kind in self.layer_kinds}))
        hidden = inputs_embeds
        for index, stage in enumerate(state.layer_stage):
            positions, rotary = embeddings[stage]
            kind = self.layer_types[index]
            hidden = self._run_layer(index, hidden, masks[stage][kind], rotary[kind], positions, cache)
        return hidden


def max_min_diverse(tokens: torch.Tensor, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy max-min diversity (DivPrune): ``count`` of ``tokens`` [n, d], far apart in cosine distance.

    The first pick is the token whose nearest other token is farthest; each next pick the token
    farthest from its nearest pick. Returns the picked indices (ascending) and, per token, its
    cosine distance to the nearest pick (0 for the picks themselves).
    """
    unit = nn.functional.normalize(tokens.float(), dim=-1)
    distance = 1.0 - unit @ unit.T
    n = len(tokens)
    nearest_other = distance.masked_fill(torch.eye(n, dtype=torch.bool, device=tokens.device), float("inf"))
    first = int(nearest_other.min(dim=1).values.argmax()) if n > 1 else 0
    picked = [first]
    to_nearest_pick = distance[:, first].clone()
    to_nearest_pick[first] = float("-inf")
    for _ in range(min(count, n) - 1):
        choice = int(to_nearest_pick.argmax())
        picked.append(choice)
        to_nearest_pick = torch.minimum(to_nearest_pick, distance[:, choice])
        to_nearest_pick[picked] = float("-inf")
    spread = to_nearest_pick.clamp_min(0.0)
    return torch.tensor(sorted(picked), device=tokens.device), spread


def attach(model: nn.Module, strategy: Strategy | str) -> PruningHandle:
    """Make ``model`` (a loaded model of a supported family) prune visual tokens on every forward.

    The bare ``transprune`` / ``random`` strategies are mapped onto the model's depth. Raises
    ValueError for an unsupported model or a strategy that does not fit it.
    """
    return PruningHandle(model, strategy)._attach()
