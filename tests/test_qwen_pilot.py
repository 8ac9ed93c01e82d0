"""End to end on Qwen2.5-VL: a tiny random model saved with an offline processor goes through `pilot run`
(baseline, TransPrune, FastV, random, pooling) into the store, and the dashboard draws its kept tokens.

The images differ in size (dynamic resolution: 8x8, 6x9 and 9x6 merged-patch grids), and two share each
left-padded batch.
"""

from __future__ import annotations

import csv
import json
import math

import pytest
from PIL import Image

from pilot.data import synthetic
from pilot.models import load
from pilot.pruning.flops import ModelDims, full_prefill_flops
from pilot.pruning.strategies import kept_count
from tests.folder_pilot import assert_batched_equals_one_by_one, run_pilot_cli, stored
from tests.qwen_folder import save_tiny_qwen2_5_vl

ARMS = ["baseline", "transprune", "fastv", "random", "pool"]
# Resized by the processor (8 px per merged token, at most 64 x 64 px): 224x224 -> 8x8, 224x144 -> 6x9 (rows x
# cols), 144x224 -> 9x6.
SIZES = {0: None, 1: (224, 144), 2: (144, 224), 3: None}
GRIDS = {0: [8, 8], 1: [6, 9], 2: [9, 6], 3: [8, 8]}


@pytest.fixture(scope="module")
def qwen_folder(tmp_path_factory):
    return save_tiny_qwen2_5_vl(tmp_path_factory.mktemp("qwen") / "tiny-qwen2.5-vl", layers=4)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    folder = tmp_path_factory.mktemp("qwen-data")
    manifest = synthetic.write_dataset(folder, 4, seed=5)
    ids = [line.split(",")[0] for line in manifest.read_text().splitlines()[1:]]
    for index, size in SIZES.items():
        if size is not None:
            path = folder / "images" / f"{ids[index]}.png"
            with Image.open(path) as image:
                image.convert("RGB").resize(size).save(path)
    return manifest, ids


def test_folder_loads_offline_as_qwen(qwen_folder):
    loaded = load(qwen_folder)
    assert loaded.family == "qwen2_5_vl" and loaded.model_class == "Qwen2_5_VLForConditionalGeneration"
    assert loaded.depth == 4 and loaded.processor.tokenizer.padding_side == "left"
    prompt = loaded.prompt("Is there a hole in the top-left quarter?")
    assert prompt.startswith("<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>")
    assert prompt.endswith("<|im_start|>assistant\n")


def test_unsupported_model_type_names_the_supported_ones(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ValueError, match="model_type 'bert' is not supported; supported: .*qwen2_5_vl "
                                         r"\(Qwen2_5_VLForConditionalGeneration\).*qwen3_vl"):
        load(tmp_path)


@pytest.fixture(scope="module")
def pilot_run(qwen_folder, dataset, tmp_path_factory):
    """`pilot run --model FOLDER` with every arm, two samples of different sizes per batch: (report, url)."""
    manifest, _ = dataset
    url = f"sqlite:///{tmp_path_factory.mktemp('qwen-store') / 'pilot.db'}"
    return run_pilot_cli(qwen_folder, manifest, url, ARMS), url


def test_pilot_run_on_qwen_end_to_end(pilot_run, dataset, qwen_folder):
    from dashboard import charts

    manifest, ids = dataset
    report, url = pilot_run
    assert report["status"] == "completed"
    assert [arm["n"] for arm in report["arms"]] == [4] * len(ARMS)
    assert all(arm["errors"] == 0 for arm in report["arms"])

    by_arm = stored(url)
    assert set(by_arm) == {"baseline", "transprune", "fastv:after=2,keep=0.5", "random", "pool:factor=2"}
    assert all(set(rows) == set(ids) for rows in by_arm.values())
    for arm, rows in by_arm.items():
        for index, sample in enumerate(ids):
            result = rows[sample]
            rows_, cols = GRIDS[index]
            n = rows_ * cols
            assert result.error is None and result.answer_text is not None
            assert result.visual_tokens == n and result.image_grids == [GRIDS[index]]
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
            else:  # pool 2x2 on each image's own rows x cols grid
                pooled = math.ceil(rows_ / 2) * math.ceil(cols / 2)
                assert result.tokens_per_layer == [pooled] * 4 and len(result.kept_indices[0]) == pooled
                assert all((i // cols) % 2 == 0 and (i % cols) % 2 == 0 for i in result.kept_indices[0])
    baseline = by_arm["baseline"][ids[1]]
    pruned = by_arm["transprune"][ids[1]]
    assert pruned.full_tflops < baseline.full_tflops and pruned.paper_tflops < baseline.paper_tflops
    # The vision tower is sized by the image's own patch grid (12 x 18 patches of 4 px for 48 x 72 px), not crops.
    loaded = load(qwen_folder)
    with manifest.open(newline="") as file:
        question = list(csv.DictReader(file))[1]["question"]
    with Image.open(manifest.parent / "images" / f"{ids[1]}.png") as picture:
        inputs = loaded.processor(images=[picture.convert("RGB")], text=[loaded.prompt(question)], return_tensors="pt")
    assert inputs["image_grid_thw"].tolist() == [[1, 12, 18]]
    dims = ModelDims.from_config(loaded.model.config)
    text_tokens = inputs["input_ids"].shape[1] - 54
    expected = full_prefill_flops(dims, [54] * 4, text_tokens, "baseline", image_grids=[[1, 12, 18]])
    assert baseline.full_tflops == pytest.approx(expected / 1e12, rel=1e-12)

    # The dashboard draws the kept tokens of a TransPrune row onto its (non-square) image.
    image = manifest.parent / "images" / f"{ids[1]}.png"
    kept = pruned.kept_indices
    pictures, captions, note = charts.kept_overlays(image, pruned.visual_tokens, kept, "transprune",
                                                    pruned.tokens_per_layer, cell=10, image_grids=pruned.image_grids)
    assert note is None and len(pictures) == 1 + 3
    assert captions[0] == "input: 54 tokens" and captions[3] == f"after layer 3: {len(kept[2])} kept"
    assert all(picture.size == (90, 60) for picture in pictures)  # 9 columns x 6 rows of 10 px cells
    source, last = pictures[0], pictures[3]
    for index in range(54):
        r, c = divmod(index, 9)
        centre = (c * 10 + 5, r * 10 + 5)
        if index in kept[2]:
            assert last.getpixel(centre) == source.getpixel(centre)  # kept: the image itself
        else:
            dimmed = last.getpixel(centre)
            assert sum(dimmed) < 0.5 * sum(source.getpixel(centre)) + 3  # dropped: darkened
    # Pooled windows are drawn as 2x2 blocks on the same grid.
    pool = by_arm["pool:factor=2"][ids[1]]
    pictures, captions, note = charts.kept_overlays(image, pool.visual_tokens, pool.kept_indices, "pool:factor=2",
                                                    pool.tokens_per_layer, cell=10, image_grids=pool.image_grids)
    assert note is None and captions[1] == "pooled 2×2: 15 tokens" and pictures[1].size == (90, 60)


def test_left_padded_batches_answer_as_samples_alone(qwen_folder, dataset, pilot_run, tmp_path):
    """Two images of different sizes shared each left-padded batch: same answers and kept tokens one by one."""
    manifest, ids = dataset
    url = f"sqlite:///{tmp_path / 'one-by-one.db'}"
    assert_batched_equals_one_by_one(qwen_folder, manifest, ids, pilot_run[1], url)
