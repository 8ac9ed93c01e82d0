"""Plain references and probes shared by the engine tests of every family."""

from __future__ import annotations

import torch

from pilot.pruning.families import for_model


def reference_ttv(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The spec, written plainly for one sample: softmax(1 - cos) * ||y|| / ||x||."""
    x, y = x.double(), y.double()
    magnitude = y.norm(dim=-1) / x.norm(dim=-1)
    change = 1 - torch.nn.functional.cosine_similarity(x, y, dim=-1)
    return torch.softmax(change, dim=-1) * magnitude


def perturb_after(model, layer_index: int, position: int):
    """Perturb one token's output of an LM layer (through its MLP, which every code path calls);
    returns the hook's handle."""

    def hook(module, args, output):
        output = output.clone()
        output[:, position] += 100.0
        return output

    return for_model(model).language_model(model).layers[layer_index].mlp.register_forward_hook(hook)
