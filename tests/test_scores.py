"""TTV and IGA, checked against direct computations on the stock model."""

import torch

from pilot.pruning import TransPrune, attach
from pilot.pruning.families import GridSegment, pool_visual
from tests.checks import reference_ttv
from tests.models import llava_inputs, tiny_llava


@torch.no_grad()
def test_first_stage_scores_match_the_stock_model():
    model = tiny_llava(attn="eager", layers=5)
    inputs = llava_inputs([2], [6])
    inputs.pop("attention_mask")
    before = 3
    layers = model.model.language_model.layers
    captured = {}

    def keep(name):
        def hook(module, args, output):
            captured[name] = (args[0] if args else None, output[0] if isinstance(output, tuple) else output)
        return hook

    hooks = []
    for i in (1, 2):  # layers 2 and 3 (1-indexed): the accumulation window
        hooks.append(layers[i].self_attn.register_forward_hook(
            lambda m, a, kw, o, i=i: captured.__setitem__(("attn", i), (kw["hidden_states"], o[0])),
            with_kwargs=True))
        hooks.append(layers[i].mlp.register_forward_hook(keep(("mlp", i))))
    stock = model(**inputs, output_attentions=True)
    for h in hooks:
        h.remove()

    ttv = sum(reference_ttv(*captured[(kind, i)])[0] for kind in ("attn", "mlp") for i in (1, 2))
    ttv_visual = ttv[before : before + 36]
    ttv_visual = ttv_visual / ttv_visual.sum()
    # IGA: layer 4 (the one after the stage) attention from the instruction rows, over heads.
    attention = stock.attentions[3][0].double()  # [heads, seq, seq]
    iga = attention[:, before + 36 :, before : before + 36].mean(dim=(0, 1))
    iga = iga / iga.sum()

    strategy = TransPrune(prune_after=(3,), keep=(0.5,), accumulate_from=2, alpha=0.3)
    with attach(model, strategy) as handle:
        model(**inputs)
    stage = handle.last_trace.stages[0]
    assert stage.candidates[0].tolist() == list(range(36))
    assert torch.allclose(stage.ttv[0].double(), ttv_visual, atol=1e-6)
    assert torch.allclose(stage.iga[0].double(), iga, atol=1e-6)
    score = 0.3 * ttv_visual + 0.7 * iga
    assert torch.allclose(stage.score[0].double(), score, atol=1e-6)
    top = torch.argsort(score, descending=True)[:18].sort().values
    assert stage.kept[0].tolist() == top.tolist()


def test_pool_visual_averages_windows_and_keeps_newlines():
    tokens = torch.arange(2 * 5 * 1, dtype=torch.float32).view(10, 1)  # 2 rows x (4 cols + newline)
    pooled, origin = pool_visual(tokens, [GridSegment(0, 2, 4, newline=True)], factor=2)
    # windows: cols 0-1 and 2-3 of rows 0-1, then the newline of row 0
    assert pooled.flatten().tolist() == [(0 + 1 + 5 + 6) / 4, (2 + 3 + 7 + 8) / 4, 4.0]
    assert origin.tolist() == [0, 2, 4]
    odd = torch.arange(9, dtype=torch.float32).view(9, 1)  # 3x3, ceil mode keeps the edge
    pooled, origin = pool_visual(odd, [GridSegment(0, 3, 3)], factor=2)
    assert pooled.flatten().tolist() == [(0 + 1 + 3 + 4) / 4, (2 + 5) / 2, (6 + 7) / 2, 8.0]
    assert origin.tolist() == [0, 2, 6, 8]
