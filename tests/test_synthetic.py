"""The synthetic inspection set is reproducible, balanced, truthful and hard in the intended way."""

import csv
import re

import numpy as np
import pytest
from PIL import Image

from pilot.data import synthetic
from pilot.data.synthetic import (
    DEFECT_TYPES,
    FAMILIES,
    IMAGE_SIZE,
    LABELS,
    MASK_CLASS,
    QUADRANTS,
    make_sample,
    patch_labels,
    write_dataset,
)

PLURAL = {"scratch": "scratches", "hole": "holes", "stain": "stains"}
HALF = IMAGE_SIZE // 2
MARGIN = 4  # defects keep this far from their quadrant's borders


@pytest.fixture(scope="module")
def samples():
    return [make_sample(11, index) for index in range(300)]


def pixels(sample) -> np.ndarray:
    return np.asarray(sample.image, dtype=np.float64)


def box(quadrant: str) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1), end-exclusive, written out independently of the module."""
    return {
        "top-left": (0, 0, HALF, HALF),
        "top-right": (HALF, 0, IMAGE_SIZE, HALF),
        "bottom-left": (0, HALF, HALF, IMAGE_SIZE),
        "bottom-right": (HALF, HALF, IMAGE_SIZE, IMAGE_SIZE),
    }[quadrant]


def only_quadrant(mask: np.ndarray, quadrant: str) -> np.ndarray:
    """The mask with everything outside `quadrant` cleared: one defect's pixels, as quadrants hold one each."""
    x0, y0, x1, y1 = box(quadrant)
    kept = np.zeros_like(mask)
    kept[y0:y1, x0:x1] = mask[y0:y1, x0:x1]
    return kept


def test_same_seed_and_index_give_the_same_sample():
    first, second = make_sample(3, 7), make_sample(3, 7)
    assert np.array_equal(np.asarray(first.image), np.asarray(second.image))
    assert np.array_equal(first.mask, second.mask)
    assert (first.id, first.question, first.label, first.defects) == (second.id, second.question, second.label,
                                                                        second.defects)
    assert first.id == "s3-00007"
    assert not np.array_equal(np.asarray(first.image), np.asarray(make_sample(3, 8).image))
    assert not np.array_equal(np.asarray(first.image), np.asarray(make_sample(4, 7).image))


def test_image_and_mask_shapes():
    sample = make_sample(0, 0)
    assert sample.image.mode == "RGB" and sample.image.size == (IMAGE_SIZE, IMAGE_SIZE)
    assert sample.mask.dtype == np.uint8 and sample.mask.shape == (IMAGE_SIZE, IMAGE_SIZE)


def test_write_dataset_is_reproducible(tmp_path):
    first = write_dataset(tmp_path / "a", n=12, seed=5)
    second = write_dataset(tmp_path / "b", n=12, seed=5)
    assert first == tmp_path / "a" / "manifest.csv"
    assert first.read_text() == second.read_text()
    assert (first.parent / "annotations.jsonl").read_text() == (second.parent / "annotations.jsonl").read_text()

    with first.open(newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["id", "image", "label", "question"]
    assert len(rows) == 13
    for sample_id, image, label, question in rows[1:]:
        assert image == f"images/{sample_id}.png"
        assert label in LABELS and question.endswith(("?", "."))
        assert (first.parent / image).read_bytes() == (second.parent / image).read_bytes()
        with Image.open(first.parent / image) as loaded:
            assert loaded.mode == "RGB" and loaded.size == (IMAGE_SIZE, IMAGE_SIZE)
    # Rows are the samples make_sample gives, so the files and the API agree.
    assert rows[4][2:] == [make_sample(5, 3).label, make_sample(5, 3).question]


def test_command_line_prints_the_manifest(tmp_path, capsys):
    synthetic.main(["--out", str(tmp_path / "cli"), "--n", "3", "--seed", "2"])
    printed = capsys.readouterr().out.strip()
    assert printed == str(tmp_path / "cli" / "manifest.csv")
    assert len((tmp_path / "cli" / "manifest.csv").read_text().splitlines()) == 4


def test_labels_cover_the_label_set(samples):
    assert set(LABELS) == {*DEFECT_TYPES, "none", "yes", "no", "0", "1", "2", "3"}
    assert all(sample.label in LABELS for sample in samples)
    assert {sample.family for sample in samples} == set(FAMILIES)
    assert {sample.label for sample in samples} == set(LABELS)


def test_answers_are_balanced(samples):
    # Roughly uniform answers within each family: the question alone must not give the answer away.
    for family, answers in (("type", (*DEFECT_TYPES, "none")), ("presence", ("yes", "no")),
                            ("count", ("0", "1", "2", "3"))):
        labels = [sample.label for sample in samples if sample.family == family]
        for answer in answers:
            share = labels.count(answer) / len(labels)
            assert 0.5 / len(answers) < share < 1.6 / len(answers), (family, answer, share)
    defect_counts = np.bincount([len(sample.defects) for sample in samples], minlength=4)
    assert len(defect_counts) == 4 and (defect_counts > 0.05 * len(samples)).all()


def test_labels_agree_with_the_defects(samples):
    for sample in samples:
        kind_in = {defect.quadrant: defect.kind for defect in sample.defects}
        assert len(kind_in) == len(sample.defects), "two defects share a quadrant"
        if sample.family == "type":
            assert sample.kind is None and f"{sample.quadrant} quarter" in sample.question
            assert sample.label == kind_in.get(sample.quadrant, "none")
        elif sample.family == "presence":
            assert sample.kind in DEFECT_TYPES and f"{sample.quadrant} quarter" in sample.question
            assert re.search(rf"\b{sample.kind}\b", sample.question)
            assert sample.label == ("yes" if kind_in.get(sample.quadrant) == sample.kind else "no")
        else:
            assert sample.quadrant is None and PLURAL[sample.kind] in sample.question
            assert sample.label == str(sum(defect.kind == sample.kind for defect in sample.defects))


def test_extra_training_questions_are_answered_from_the_image(samples):
    """``ask`` (more questions per training image): answers read off the question text agree with
    the defects, and draw answers first, so "none" and "no" are not what a guesser would say."""
    rng = np.random.default_rng(0)
    answers = {family: [] for family in FAMILIES}
    for sample in samples:
        kind_in = {defect.quadrant: defect.kind for defect in sample.defects}
        for _ in range(4):
            question, label, family = synthetic.ask(sample.defects, rng)
            quadrant = next((q for q in QUADRANTS if f"{q} quarter" in question), None)
            kind = next((k for k in DEFECT_TYPES if re.search(rf"\b({k}|{PLURAL[k]})\b", question)), None)
            if family == "type":
                assert kind is None and label == kind_in.get(quadrant, "none"), (question, label, kind_in)
            elif family == "presence":
                assert label == ("yes" if kind_in.get(quadrant) == kind else "no"), (question, label, kind_in)
            else:
                assert quadrant is None and label == str(sum(k == kind for k in kind_in.values()))
            answers[family].append(label)
    assert 0.35 < answers["presence"].count("yes") / len(answers["presence"]) < 0.65
    assert answers["type"].count("none") / len(answers["type"]) < 0.55  # 4 random quarters: about 0.6


def test_extra_questions_of_a_chosen_family(samples):
    """Training asks more type questions than the uniform draw gives: ``family`` must be honoured,
    and a misspelt family must fail rather than silently fall back to another."""
    rng = np.random.default_rng(1)
    for sample in samples[:10]:
        kind_in = {defect.quadrant: defect.kind for defect in sample.defects}
        question, label, family = synthetic.ask(sample.defects, rng, "type")
        quadrant = next(q for q in QUADRANTS if f"{q} quarter" in question)
        assert family == "type" and label == kind_in.get(quadrant, "none")
        assert synthetic.ask(sample.defects, rng, "count")[2] == "count"
    with pytest.raises(ValueError, match="family"):
        synthetic.ask(samples[0].defects, rng, "types")


def test_caption_names_every_quarter_once_in_a_random_order(samples):
    sample = next(s for s in samples if len(s.defects) == 2)
    rng = np.random.default_rng(0)
    captions = [synthetic.caption(sample.defects, rng).split() for _ in range(20)]
    for words in captions:
        assert sorted(words[0::2]) == sorted(QUADRANTS)
        kind_in = {d.quadrant: d.kind for d in sample.defects}
        assert words[1::2] == [kind_in.get(q, "none") for q in words[0::2]]
    assert len({tuple(words[0::2]) for words in captions}) > 5  # the order varies


def test_defects_are_small_and_stay_in_their_quadrant(samples):
    for sample in samples:
        occupied = {defect.quadrant for defect in sample.defects}
        for quadrant in QUADRANTS:
            if quadrant not in occupied:
                assert not only_quadrant(sample.mask, quadrant).any(), (sample.id, quadrant)
        for defect in sample.defects:
            own = only_quadrant(sample.mask, defect.quadrant)
            assert set(np.unique(own)) == {0, MASK_CLASS[defect.kind]}
            assert 10 <= np.count_nonzero(own) <= 400, (sample.id, defect)
            x0, y0, x1, y1 = box(defect.quadrant)
            rows, columns = np.nonzero(own)
            assert columns.min() >= x0 + MARGIN and columns.max() < x1 - MARGIN, (sample.id, defect)
            assert rows.min() >= y0 + MARGIN and rows.max() < y1 - MARGIN, (sample.id, defect)
            assert x0 <= defect.center[0] < x1 and y0 <= defect.center[1] < y1
            # A few tokens of the 16 x 16 grid: pruning decides whether the defect is still seen.
            assert 1 <= np.count_nonzero(patch_labels(own)) <= 12, (sample.id, defect)


def test_patch_labels_take_the_majority_defect_class():
    mask = np.zeros((IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
    mask[0, 0] = MASK_CLASS["hole"]  # a single defect pixel is enough
    mask[14:17, 14:17] = MASK_CLASS["scratch"]  # 9 scratch pixels ...
    mask[20:24, 20:24] = MASK_CLASS["stain"]  # ... lose to 16 stain pixels in the same patch
    labels = patch_labels(mask)
    assert labels.shape == (16, 16) and labels.dtype == np.int64
    assert labels[0, 0] == MASK_CLASS["hole"] and labels[1, 1] == MASK_CLASS["stain"]
    assert np.count_nonzero(labels) == 2
    with pytest.raises(ValueError):
        patch_labels(np.zeros((20, 20), dtype=np.uint8))


def test_defects_stand_out_far_more_than_distractors():
    inside, outside, defect_means, distractor_changes = [], [], [], []
    for index in range(40):
        full = synthetic._render(21, index)
        clean = synthetic._render(21, index, draw_defects=False)
        bare = synthetic._render(21, index, draw_defects=False, draw_distractors=False)
        # Leaving the defects out changes (almost) only the defect pixels.
        change = np.abs(pixels(full) - pixels(clean)).mean(axis=-1)
        inside.append(change[full.mask > 0])
        outside.append(change[full.mask == 0])
        for defect in full.defects:
            defect_means.append(change[only_quadrant(full.mask, defect.quadrant) > 0].mean())
        # Distractors are all that differs between the defect-free render and the bare surface.
        distractor_change = np.abs(pixels(clean) - pixels(bare)).mean(axis=-1)
        distractor_changes.append(distractor_change[distractor_change >= 2])
        assert not clean.mask.any() and clean.question == full.question
    inside_mean, outside_mean = np.concatenate(inside).mean(), np.concatenate(outside).mean()
    assert inside_mean > 5 * outside_mean
    distractor_changes = np.concatenate(distractor_changes)
    assert len(distractor_changes) > 0
    # Every single defect, on average over its pixels, is stronger than nearly every distractor pixel.
    assert min(defect_means) > 1.5 * np.percentile(distractor_changes, 99)
    assert inside_mean > 5 * distractor_changes.mean()
