"""Token-importance scores: TTV (token transition variation) and instruction attention (IGA).

All scores are computed in float32, per sample, over that sample's valid (non-padding) tokens.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.models.llama.modeling_llama import rotate_half

_EPS = 1e-6


def token_transition(
    module_input: torch.Tensor,
    module_output: torch.Tensor,
    valid: torch.Tensor,
    direction: str = "signed",
) -> torch.Tensor:
    """TTV of one sub-module for every token: ``softmax_over_tokens(1 - cos) * ||y|| / ||x||``.

    ``module_input`` is the sub-module's input after its RMSNorm, ``module_output`` its output
    before the residual add, both [batch, seq, hidden]; ``valid`` [batch, seq] marks real tokens.
    The softmax runs over each sample's valid tokens; padding gets 0.
    """
    x = module_input.float()
    y = module_output.float()
    x_norm = x.norm(dim=-1)
    y_norm = y.norm(dim=-1)
    magnitude = y_norm / x_norm.clamp_min(_EPS)
    cosine = (x * y).sum(-1) / (x_norm * y_norm).clamp_min(_EPS)
    change = 1.0 - (cosine if direction == "signed" else cosine.abs())
    weights = change.masked_fill(~valid, float("-inf")).softmax(dim=-1)
    return (weights * magnitude).masked_fill(~valid, 0.0)


def query_attention(
    layer: nn.Module,
    hidden_states: torch.Tensor,
    position_embeddings: tuple[torch.Tensor, torch.Tensor],
    valid: torch.Tensor,
    query_rows: torch.Tensor,
    window: int | None = None,
) -> torch.Tensor:
    """Attention that the ``query_rows`` tokens pay to every token, as ``layer`` would compute it.

    Uses the layer's input RMSNorm, ``q_proj`` and ``k_proj`` (and ``q_norm``/``k_norm`` where
    the attention has them) with rotary embeddings at the
    current positions; causal and padding masks; softmax over keys in float32; averaged over
    heads and over each sample's query rows. Only the query rows are projected to queries, so
    the cost is O(queries x sequence), and the model's own attention kernel is not involved.

    ``window``: the layer attends within a sliding window of that many tokens.

    Returns [batch, seq]: the mean attention each token receives (0 for samples without queries).
    Query rows must be the trailing tokens of each sample (true for the instruction and for the
    last token under left padding).
    """
    attn = layer.self_attn
    batch, seq, _ = hidden_states.shape
    n_query = int(query_rows.sum(dim=1).max().item()) if query_rows.any() else 0
    if n_query == 0:
        return hidden_states.new_zeros(batch, seq, dtype=torch.float32)
    head_dim = attn.head_dim
    normed = layer.input_layernorm(hidden_states)
    tail = normed[:, seq - n_query :]
    queries = attn.q_proj(tail).view(batch, n_query, -1, head_dim)
    keys = attn.k_proj(normed).view(batch, seq, -1, head_dim)
    if hasattr(attn, "q_norm"):  # per-head RMSNorm before the rotary embedding (Qwen3, Gemma 3)
        queries, keys = attn.q_norm(queries), attn.k_norm(keys)
    queries, keys = queries.transpose(1, 2), keys.transpose(1, 2)
    cos, sin = position_embeddings
    queries = _rotate(queries, cos[:, seq - n_query :], sin[:, seq - n_query :])
    keys = _rotate(keys, cos, sin)

    n_heads, n_kv = queries.shape[1], keys.shape[1]
    # Grouped-query attention: fold the query heads of one key/value head together.
    queries = queries.reshape(batch, n_kv, (n_heads // n_kv) * n_query, head_dim)
    logits = torch.matmul(queries.float(), keys.float().transpose(-1, -2)) * attn.scaling
    logits = logits.view(batch, n_heads, n_query, seq)

    query_index = torch.arange(seq - n_query, seq, device=hidden_states.device)
    key_index = torch.arange(seq, device=hidden_states.device)
    allowed = key_index[None, :] <= query_index[:, None]
    if window is not None:  # a sliding-window layer: keys at most window - 1 tokens back
        allowed = allowed & (query_index[:, None] - key_index[None, :] < window)
    allowed = allowed[None] & valid[:, None, :]
    allowed = allowed | (key_index[None, :] == query_index[:, None])[None]  # no empty rows
    probs = logits.masked_fill(~allowed[:, None], float("-inf")).softmax(dim=-1)

    rows = query_rows[:, seq - n_query :].float()  # [batch, n_query]
    per_row = probs.mean(dim=1)  # heads -> [batch, n_query, seq]
    received = (per_row * rows[:, :, None]).sum(dim=1) / rows.sum(dim=1, keepdim=True).clamp_min(1.0)
    return received


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding of x [batch, heads, seq, head_dim] at positions given by cos/sin [batch, seq, dim]."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return x * cos + rotate_half(x) * sin


def normalise(scores: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """Scale ``scores`` to sum to 1 over each sample's ``candidates``; 0 elsewhere."""
    scores = scores.float().masked_fill(~candidates, 0.0)
    return scores / scores.sum(dim=-1, keepdim=True).clamp_min(1e-12)
