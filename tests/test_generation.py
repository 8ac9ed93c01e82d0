"""Generating answers (``pilot.generation``): what a generated batch stores per sample."""

from pilot.generation import sample_grids


def test_sample_grids_of_each_family():
    """The token grids stored per sample for the dashboard's overlays: LLaVA squares, LLaVA-NeXT's base and
    newline-ended anyres grids, Qwen's merged-patch grid of each image (several per prompt, left-padded)."""
    from pathlib import Path

    from pilot.models import LoadedModel
    from pilot.pruning import families
    from pilot.pruning.families import next_image_grids
    from pilot.testing.random_models import random_llava, random_qwen2_5_vl
    from tests.models import llava_inputs, next_inputs, qwen_inputs

    def loaded(model):
        return LoadedModel(model, None, "test", Path("."), families.for_model(model).name, "", 2)

    llava = random_llava(layers=2)
    assert sample_grids(loaded(llava), llava_inputs([2, 3], [4, 1])) == ([[[6, 6]], [[6, 6]]], [None, None])

    llava_next = random_llava(layers=2, next=True)
    sizes = [(24, 48), (48, 24)]
    inputs, counts = next_inputs(llava_next, sizes, [3, 5])
    grids, _ = sample_grids(loaded(llava_next), inputs)
    for size, grid, count in zip(sizes, grids, counts, strict=True):
        base, tiles = next_image_grids(llava_next.config, size)
        assert grid == [[6, 6], [tiles.rows, tiles.cols, 1]]
        assert 36 + tiles.rows * (tiles.cols + 1) == count

    qwen = random_qwen2_5_vl(layers=2)
    inputs, counts = qwen_inputs(qwen, [[(8, 12)], [(4, 4), (8, 8)]], [4, 6])
    grids, thw = sample_grids(loaded(qwen), inputs)
    assert grids == [[[4, 6]], [[2, 2], [4, 4]]] and counts == [24, 20]
    assert thw == [[[1, 8, 12]], [[1, 4, 4], [1, 8, 8]]]
