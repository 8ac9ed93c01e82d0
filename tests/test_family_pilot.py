"""End to end on the tiled families: a tiny random InternVL and a tiny random SmolVLM, each saved with an offline
processor (``tests/family_folders.py``), go through `pilot run --model FOLDER` (the processor's chat template;
baseline, TransPrune, FastV, random, pooling, DivPrune) into the store, and the dashboard draws their kept tokens
on the tiles.

Unlike Qwen's one grid per image, these processors cut an image into tiles of 4 x 4 tokens (plus a thumbnail, or
SmolVLM's global image) wrapped in text markers; the images differ in aspect ratio, so the samples of a batch have
different tile counts.
"""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from pilot.data import synthetic
from pilot.models import load
from pilot.pruning.strategies import kept_count
from pilot.testing import random_models as rm
from tests.family_folders import save_tiny_internvl, save_tiny_smolvlm
from tests.folder_pilot import assert_batched_equals_one_by_one, run_pilot_cli, stored

ARMS = ["baseline", "transprune", "fastv:after=2,keep=0.5", "random", "pool:factor=2", "divprune:keep=0.5"]
SIDE = 4  # tokens per tile side: 32 px tiles, 4 px patches, pixel shuffle 0.5 (InternVL) / scale factor 2 (SmolVLM)

# Per family: the model and processor folder, the demo images' sizes (sample index -> width x height; None: the
# 224 px square), and each sample's tiles as (rows, cols) of tiles before the thumbnail (None: one tile, no
# thumbnail).
FAMILIES = {
    # InternVL: the canvas of at most 4 tiles closest to the aspect ratio; a 40 px image stays one tile.
    "internvl": dict(save=save_tiny_internvl, model_class="InternVLForConditionalGeneration",
                     sizes={1: (224, 112), 2: (112, 224), 3: (40, 40)}, layouts=[(2, 2), (1, 2), (2, 1), None]),
    # SmolVLM: resized to a 96 px longest edge, then to whole 32 px tiles.
    "smolvlm": dict(save=save_tiny_smolvlm, model_class="SmolVLMForConditionalGeneration",
                    sizes={1: (224, 112), 2: (112, 224), 3: (224, 64)}, layouts=[(3, 3), (2, 3), (3, 2), (1, 3)]),
}


def tiles(layout: tuple[int, int] | None) -> int:
    return 1 if layout is None else layout[0] * layout[1] + 1


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The models are tiny: one thread is fastest, and immune to other processes on the CPUs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request, tmp_path_factory):
    """(family name, its spec, the saved folder, (manifest, sample ids))."""
    name = request.param
    spec = FAMILIES[name]
    folder = spec["save"](tmp_path_factory.mktemp(name) / f"tiny-{name}", layers=4)
    data = tmp_path_factory.mktemp(f"{name}-data")
    manifest = synthetic.write_dataset(data, 4, seed=5)
    ids = [line.split(",")[0] for line in manifest.read_text().splitlines()[1:]]
    for index, size in spec["sizes"].items():
        path = data / "images" / f"{ids[index]}.png"
        with Image.open(path) as image:
            image.convert("RGB").resize(size).save(path)
    return name, spec, folder, (manifest, ids)


@pytest.fixture(scope="module")
def pilot_run(family, tmp_path_factory):
    """`pilot run --model FOLDER` with every arm, two samples with different tile counts per batch: (report, url)."""
    name, _, folder, (manifest, _) = family
    url = f"sqlite:///{tmp_path_factory.mktemp(f'{name}-store') / 'pilot.db'}"
    return run_pilot_cli(folder, manifest, url, ARMS), url


def test_folder_loads_offline_and_prompts_mark_the_tiles(family):
    """The loader reads the folder (images-only processor without torchvision) and its chat template; the prompt's
    visual tokens come in tiles of 16 between the family's marker tokens, as many as the layouts say."""
    from dashboard.charts import tile_layout

    name, spec, folder, (manifest, ids) = family
    loaded = load(folder)
    assert loaded.family == name and loaded.model_class == spec["model_class"] and loaded.depth == 4
    assert loaded.processor.tokenizer.padding_side == "left"
    prompt = loaded.prompt("Is there a hole in the top-left quarter?")
    if name == "internvl":
        assert prompt.startswith("<|im_start|>user\n<IMG_CONTEXT>\n") and prompt.endswith("<|im_start|>assistant\n")
    else:
        assert prompt.startswith("<|im_start|>User:<image>") and prompt.endswith("<end_of_utterance>\nAssistant:")
    for index, layout in enumerate(spec["layouts"]):
        with Image.open(manifest.parent / "images" / f"{ids[index]}.png") as picture:
            image = picture.convert("RGB")
        ids_ = loaded.processor(images=[[image]], text=[prompt], return_tensors="pt")["input_ids"][0].tolist()
        runs = [i for i in range(len(ids_)) if ids_[i] == rm.INTERNVL_IMAGE_TOKEN and ids_[i - 1] != ids_[i]]
        assert ids_.count(rm.INTERNVL_IMAGE_TOKEN) == 16 * tiles(layout)
        if name == "internvl":  # one run of all tiles between <img> and </img>
            assert runs == [ids_.index(rm.INTERNVL_IMG_START) + 1]
            assert ids_[runs[0] + 16 * tiles(layout)] == rm.INTERNVL_IMG_END
        else:  # a run per tile after its <row_i_col_j>, then the global image's after <global-img>
            assert len(runs) == tiles(layout) and all(ids_[start + 16] == rm.SMOLVLM_FAKE_TOKEN for start in runs)
            markers = [ids_[start - 1] - rm.SMOLVLM_FIRST_ROW_COL for start in runs[:-1]]
            assert markers == [3 * r + c for r in range(layout[0]) for c in range(layout[1])]
            assert ids_[runs[-1] - 1] == rm.SMOLVLM_GLOBAL_IMG
        # The dashboard reads the same arrangement off the stored grids and the image's size.
        grids = [(SIDE, SIDE, False)] * tiles(layout)
        assert tile_layout(grids, image.size) == layout
    if name == "internvl":  # the processor's own canvas (cols, rows) for the 2 x 2 and 1 x 2 images
        from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import get_optimal_tiled_canvas

        assert get_optimal_tiled_canvas((224, 224), (32, 32), 1, 4) == (2, 2)
        assert get_optimal_tiled_canvas((112, 224), (32, 32), 1, 4) == (2, 1)


def test_pilot_run_on_tiled_family_end_to_end(family, pilot_run):
    from dashboard import charts

    name, spec, _, (manifest, ids) = family
    report, url = pilot_run
    assert report["status"] == "completed"
    assert [arm["n"] for arm in report["arms"]] == [4] * len(ARMS)
    assert all(arm["errors"] == 0 for arm in report["arms"])

    by_arm = stored(url)
    assert set(by_arm) == set(ARMS)
    assert all(set(rows) == set(ids) for rows in by_arm.values())
    for arm, rows in by_arm.items():
        for index, sample in enumerate(ids):
            result = rows[sample]
            n = 16 * tiles(spec["layouts"][index])
            assert result.error is None and result.answer_text is not None, (arm, sample, result.error)
            assert result.visual_tokens == n and result.image_grids == [[SIDE, SIDE]] * tiles(spec["layouts"][index])
            assert len(result.tokens_per_layer) == 4 and result.tokens_per_layer[0] <= n
            assert 0 < result.paper_tflops < result.full_tflops
            if arm == "baseline":
                assert result.tokens_per_layer == [n] * 4 and result.kept_indices == []
            elif arm.startswith(("transprune", "random")):
                counts = [kept_count(n, keep) for keep in (0.875, 0.625, 0.125)]
                assert result.tokens_per_layer == [n, *counts]
                assert [len(stage) for stage in result.kept_indices] == counts
                for before, after in zip([list(range(n)), *result.kept_indices], result.kept_indices, strict=False):
                    assert set(after) <= set(before) and after == sorted(after)
            elif arm.startswith("fastv"):
                assert result.tokens_per_layer == [n, n, kept_count(n, 0.5), kept_count(n, 0.5)]
            elif arm.startswith("divprune"):  # before the first layer
                assert result.tokens_per_layer == [kept_count(n, 0.5)] * 4
                assert len(result.kept_indices) == 1 and len(set(result.kept_indices[0])) == kept_count(n, 0.5)
            else:  # pool 2x2 on each tile's own 4 x 4 grid: the top-left token of each window
                assert result.tokens_per_layer == [n // 4] * 4
                assert result.kept_indices == [[t * 16 + i for t in range(n // 16) for i in (0, 2, 8, 10)]]
    baseline, pruned = by_arm["baseline"][ids[0]], by_arm["transprune"][ids[0]]
    assert pruned.full_tflops < baseline.full_tflops and pruned.paper_tflops < baseline.paper_tflops

    # The dashboard draws the kept tokens of a TransPrune row on the tiles in their arrangement, then the thumbnail.
    rows_, cols_ = spec["layouts"][0]
    path = manifest.parent / "images" / f"{ids[0]}.png"
    kept = pruned.kept_indices
    pictures, captions, note = charts.kept_overlays(path, pruned.visual_tokens, kept, "transprune",
                                                    pruned.tokens_per_layer, cell=10, image_grids=pruned.image_grids)
    assert note is None and len(pictures) == 1 + 3
    assert captions[0] == f"input: {pruned.visual_tokens} tokens ({rows_}×{cols_} tiles + thumbnail)"
    assert captions[3] == f"after layer 3: {len(kept[2])} kept"
    tile, gap = 4 * 10, charts.tile_gap(10)  # a tile: 4 x 4 cells of 10 px
    right = cols_ * (tile + gap) - gap + 10  # the thumbnail's left edge
    assert all(picture.size == (right + tile, rows_ * (tile + gap) - gap) for picture in pictures)
    source, last = pictures[0], pictures[3]
    with Image.open(path) as opened:
        image = opened.convert("RGB")
    canvas = image.resize((cols_ * tile, rows_ * tile), Image.Resampling.BICUBIC)
    second = source.crop((tile + gap, 0, 2 * tile + gap, tile))  # the second tile of the first row
    assert second.tobytes() == canvas.crop((tile, 0, 2 * tile, tile)).tobytes()
    thumbnail = image.resize((tile, tile), Image.Resampling.BICUBIC)
    assert source.crop((right, 0, right + tile, tile)).tobytes() == thumbnail.tobytes()
    assert source.getpixel((tile + gap // 2, 5)) == (255, 255, 255)  # the gap between two tiles
    for index in range(pruned.visual_tokens):
        k, (r, c) = index // 16, divmod(index % 16, 4)
        left, top = (right, 0) if k == rows_ * cols_ else ((k % cols_) * (tile + gap), (k // cols_) * (tile + gap))
        centre = (left + c * 10 + 5, top + r * 10 + 5)
        if index in kept[2]:
            assert last.getpixel(centre) == source.getpixel(centre)  # kept: the image itself
        else:
            assert sum(last.getpixel(centre)) < 0.5 * sum(source.getpixel(centre)) + 3  # dropped: darkened
    # Pooled windows as 2x2 blocks on each tile.
    pool = by_arm["pool:factor=2"][ids[0]]
    pictures, captions, note = charts.kept_overlays(path, pool.visual_tokens, pool.kept_indices, "pool:factor=2",
                                                    pool.tokens_per_layer, cell=10, image_grids=pool.image_grids)
    assert note is None and captions[1] == f"pooled 2×2: {pool.visual_tokens // 4} tokens"
    assert pictures[1].size == pictures[0].size
    # One tile (InternVL's small image): one plain 4 x 4 grid over the whole image.
    if spec["layouts"][3] is None:
        single = by_arm["transprune"][ids[3]]
        pictures, captions, note = charts.kept_overlays(manifest.parent / "images" / f"{ids[3]}.png",
                                                        single.visual_tokens, single.kept_indices, "transprune",
                                                        single.tokens_per_layer, cell=10,
                                                        image_grids=single.image_grids)
        assert note is None and captions[0] == "input: 16 tokens" and all(p.size == (40, 40) for p in pictures)


def test_batches_of_different_tile_counts_answer_as_samples_alone(family, pilot_run, tmp_path):
    """Each batch paired images with different tile counts (left-padded): same answers and kept tokens one by one."""
    _, _, folder, (manifest, ids) = family
    assert_batched_equals_one_by_one(folder, manifest, ids, pilot_run[1], f"sqlite:///{tmp_path / 'one-by-one.db'}")
