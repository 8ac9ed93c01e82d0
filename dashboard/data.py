"""A run's stored results sample by sample: loaded from the store, paired with the baseline's, and shown.

The samples a pruned arm answers differently, the open-ended answers it lost most on (with a word diff safe to
render as HTML), the visual tokens each layer saw, and where each sample's image is. No Streamlit, no torch.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from sqlalchemy import Engine, inspect, select

from dashboard.formatting import num
from dashboard.store import reader
from pilot.data.synthetic import demo_manifest_path
from pilot.metrics import OPEN_TASKS, VS_BASELINE_METRICS
from pilot.store import models as db
from pilot.summaries import BASELINE

DEMO_MANIFEST = demo_manifest_path()


SAMPLE_COLUMNS = ("sample_id", "label", "prediction", "answer_text", "correct", "prefill_ms", "total_ms",
                  "batch_size", "paper_tflops", "full_tflops", "visual_tokens", "visual_tokens_kept",
                  "tokens_per_layer", "kept_indices", "image_grids", "peak_memory_mb", "error", "task", "references",
                  "scores", "finish_reason")
# Columns added by later revisions: a store the dashboard reads without upgrading it may lack them (None then).
LATER_COLUMNS = ("image_grids", "task", "references", "scores", "finish_reason")


def load_samples(engine: Engine, run_id: int) -> pd.DataFrame:
    """Every stored result of a run, one row per (arm, sample), with the arm's name, strategy and position."""
    present = {c["name"] for c in inspect(engine).get_columns(db.SampleResult.__tablename__)}
    names = [c for c in SAMPLE_COLUMNS if c in present or c not in LATER_COLUMNS]
    columns = [getattr(db.SampleResult, c) for c in names]
    with reader(engine)() as session:
        rows = session.execute(
            select(db.Arm.name, db.Arm.strategy, db.Arm.position, *columns)
            .join(db.Arm, db.SampleResult.arm_id == db.Arm.id)
            .where(db.Arm.run_id == run_id).order_by(db.Arm.position, db.SampleResult.sample_id)).all()
    frame = pd.DataFrame(rows, columns=["arm", "strategy", "position", *names])
    for name in SAMPLE_COLUMNS:
        if name not in frame:
            frame[name] = None
    return frame[["arm", "strategy", "position", *SAMPLE_COLUMNS]]


def blank(value: Any) -> bool:
    """None or NaN: pandas 3 stores a missing text as NaN in a column of strings (``error`` of a run with errors)."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def normalise_prediction(prediction: Any, labels: Sequence[str]) -> str | None:
    """A label, ``invalid`` for an answer that matches none, None for an errored sample; without a label set
    (free-text answers of a pilot without labels) the answer itself."""
    if prediction is None or (isinstance(prediction, float) and math.isnan(prediction)):
        return None
    if not labels:
        return prediction
    return prediction if prediction in set(labels) else db.INVALID_PREDICTION


def disagreements(samples: pd.DataFrame, pruned_arm: str, labels: Sequence[str],
                  baseline_arm: str | None = None) -> pd.DataFrame:
    """Samples where ``pruned_arm`` answers differently from the baseline (both without error), baseline order.

    Columns: sample_id, label, baseline, pruned (normalised answers), baseline_text, pruned_text, baseline_correct,
    pruned_correct, visual_tokens, kept_indices, tokens_per_layer, strategy, image_grids. A sample without a label
    (``""``) has None in both ``*_correct``.
    """
    columns = ["sample_id", "label", "baseline", "pruned", "baseline_text", "pruned_text", "baseline_correct",
               "pruned_correct", "visual_tokens", "kept_indices", "tokens_per_layer", "strategy", "image_grids"]
    if samples.empty:
        return pd.DataFrame(columns=columns)
    if baseline_arm is None:
        base_rows = samples[samples["strategy"] == BASELINE]
    else:
        base_rows = samples[samples["arm"] == baseline_arm]
    pruned_rows = samples[samples["arm"] == pruned_arm]
    pruned_by_id = {row.sample_id: row for row in pruned_rows.itertuples(index=False)}
    out = []
    for base in base_rows.itertuples(index=False):
        other = pruned_by_id.get(base.sample_id)
        if other is None or not blank(base.error) or not blank(other.error):
            continue
        b = normalise_prediction(base.prediction, labels)
        p = normalise_prediction(other.prediction, labels)
        if b is None or p is None or b == p:
            continue
        out.append({
            "sample_id": base.sample_id, "label": base.label, "baseline": b, "pruned": p,
            "baseline_text": base.answer_text, "pruned_text": other.answer_text,
            "baseline_correct": bool(b == base.label) if base.label else None,
            "pruned_correct": bool(p == other.label) if other.label else None,
            "visual_tokens": other.visual_tokens, "kept_indices": other.kept_indices,
            "tokens_per_layer": other.tokens_per_layer, "strategy": other.strategy,
            "image_grids": getattr(other, "image_grids", None),
        })
    return pd.DataFrame(out, columns=columns)


def tokens_per_layer(samples: pd.DataFrame) -> pd.DataFrame:
    """Long table (arm, strategy, layer, tokens): visual tokens each LLM layer saw, from one sample per arm."""
    rows = []
    if samples.empty:
        return pd.DataFrame(columns=["arm", "strategy", "layer", "tokens"])
    for arm, group in samples.groupby("arm", sort=False):
        with_trace = group[group["tokens_per_layer"].map(lambda v: isinstance(v, list) and len(v) > 0)]
        if with_trace.empty:
            continue
        first = with_trace.iloc[0]
        for layer, count in enumerate(first["tokens_per_layer"], start=1):
            rows.append({"arm": arm, "strategy": first["strategy"], "layer": layer, "tokens": int(count)})
    return pd.DataFrame(rows, columns=["arm", "strategy", "layer", "tokens"])


# The per-sample score a task's answers are ranked by when the chosen metric does not apply to them.
TASK_SCORE = {"text": "anls", "json": "field_f1"}
WORST_COLUMNS = ["sample_id", "task", "drop", "basis", "baseline_score", "pruned_score", "similarity",
                 "similarity_basis", "changed", "baseline_text", "pruned_text", "references", "baseline_scores",
                 "pruned_scores", "pruned_finish", "visual_tokens", "kept_indices", "tokens_per_layer", "strategy",
                 "image_grids"]


def _answer(row: Any) -> str | None:
    """The generated answer of a result row (the prediction for rows stored without it)."""
    for value in (row.answer_text, row.prediction):
        if isinstance(value, str):
            return value
    return None


def worst_hit_answers(samples: pd.DataFrame, pruned_arm: str, metric: str = "anls",
                      baseline_arm: str | None = None) -> pd.DataFrame:
    """The open-ended samples of ``pruned_arm``, the ones it lost most on first.

    The drop of a sample is its baseline score minus its pruned score against the references, on ``metric`` when
    both arms' scores have it, else on its task's own score (text: ANLS, json: field F1); for a sample without
    references, or when ``metric`` is a similarity to the baseline (``anls_vs_baseline``, ``token_f1_vs_baseline``),
    it is 1 - that similarity of the pruned answer to the baseline's (ANLS by default). ``basis`` names what the
    drop is on; ``similarity`` is the pruned answer's similarity to the baseline's, ``similarity_basis`` its measure
    (``anls_vs_baseline`` unless ``metric`` is ``token_f1_vs_baseline``). Samples where either arm errored or has
    no answer, and label-task samples, are left out; ties keep the baseline's order.
    """
    from pilot.scoring import score_vs_baseline  # plain Python and rapidfuzz: no torch

    if samples.empty:
        return pd.DataFrame(columns=WORST_COLUMNS)
    base_rows = (samples[samples["strategy"] == BASELINE] if baseline_arm is None
                 else samples[samples["arm"] == baseline_arm])
    pruned_by_id = {row.sample_id: row for row in samples[samples["arm"] == pruned_arm].itertuples(index=False)}
    similarity_key = metric if metric in VS_BASELINE_METRICS else "anls_vs_baseline"
    out = []
    for base in base_rows.itertuples(index=False):
        other = pruned_by_id.get(base.sample_id)
        if other is None or not blank(base.error) or not blank(other.error) or base.task not in OPEN_TASKS:
            continue
        before, after = _answer(base), _answer(other)
        if before is None or after is None:
            continue
        similar = score_vs_baseline(after, before)
        similarity = float(similar[similarity_key])
        base_scores = base.scores if isinstance(base.scores, dict) else {}
        pruned_scores = other.scores if isinstance(other.scores, dict) else {}
        basis, base_score, pruned_score = similarity_key, None, None
        if metric not in VS_BASELINE_METRICS:
            for key in (metric, TASK_SCORE.get(base.task)):
                if num(base_scores.get(key)) is not None and num(pruned_scores.get(key)) is not None:
                    basis, base_score, pruned_score = key, num(base_scores[key]), num(pruned_scores[key])
                    break
        drop = 1.0 - similarity if base_score is None else base_score - pruned_score
        references = base.references if isinstance(base.references, list | tuple) else []
        out.append({
            "sample_id": base.sample_id, "task": base.task, "drop": drop + 0.0, "basis": basis,
            "baseline_score": base_score, "pruned_score": pruned_score, "similarity": similarity,
            "similarity_basis": similarity_key, "changed": bool(similar["changed"]), "baseline_text": before,
            "pruned_text": after, "references": [str(r) for r in references], "baseline_scores": base_scores or None,
            "pruned_scores": pruned_scores or None,
            "pruned_finish": None if blank(other.finish_reason) else other.finish_reason,
            "visual_tokens": other.visual_tokens, "kept_indices": other.kept_indices,
            "tokens_per_layer": other.tokens_per_layer, "strategy": other.strategy, "image_grids": other.image_grids,
        })
    out.sort(key=lambda row: -row["drop"])  # stable: ties stay in the baseline's order
    return pd.DataFrame(out, columns=WORST_COLUMNS)


_WORD = re.compile(r"\S+\s*")
# Answers are untrusted text shown through Markdown with HTML allowed: one pass turns the HTML specials and every
# character Markdown (or its LaTeX extension) could read as syntax into entities, and newlines into <br> so that a
# blank line in an answer cannot end the HTML block and hand the rest to the Markdown parser.
_ENTITIES = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;", "*": "&#42;",
                           "_": "&#95;", "`": "&#96;", "[": "&#91;", "]": "&#93;", "~": "&#126;", "#": "&#35;",
                           "\\": "&#92;", "$": "&#36;", "|": "&#124;", "\n": "<br>", "\r": "", "\t": "&#9;"})
DEL_STYLE = "color:#b42318;background:#fee4e2"
INS_STYLE = "color:#067647;background:#dcfae6;text-decoration:none"


def html_text(text: str) -> str:
    """``text`` safe to put inside HTML rendered by ``st.markdown(..., unsafe_allow_html=True)``."""
    return text.translate(_ENTITIES)


def _marked(tag: str, style: str, words: Sequence[str]) -> str:
    """A run of changed words in one tag, the whitespace after the last word outside it."""
    joined = "".join(words)
    core = joined.rstrip()
    return f'<{tag} style="{style}">{html_text(core)}</{tag}>{html_text(joined[len(core):])}'


def word_diff(before: str, after: str) -> tuple[str, str]:
    """A word-level diff (difflib) of two answers as two HTML strings: ``before`` with the words the change removed
    struck through in red (``<del>``), ``after`` with the words it added in green (``<ins>``). Every word is
    HTML-escaped (``html_text``); whitespace and line breaks are kept."""
    old, new = _WORD.findall(before.lstrip()), _WORD.findall(after.lstrip())
    matcher = difflib.SequenceMatcher(None, [w.rstrip() for w in old], [w.rstrip() for w in new], autojunk=False)
    left, right = [], []
    for op, i1, i2, j1, j2 in matcher.get_opcodes():
        if op == "equal":
            left.append(html_text("".join(old[i1:i2])))
            right.append(html_text("".join(new[j1:j2])))
            continue
        if i2 > i1:
            left.append(_marked("del", DEL_STYLE, old[i1:i2]))
        if j2 > j1:
            right.append(_marked("ins", INS_STYLE, new[j1:j2]))
    return "".join(left), "".join(right)


def image_paths(manifest_path: str | None, labels: Sequence[str] | None = None,
                prompt_template: str | None = None, demo: bool = False,
                options: Sequence[tuple[str, str]] = ()) -> dict[str, Any]:
    """Sample id -> its image (a path, or an image embedded in a Hugging Face dataset, read when shown) from the
    run's dataset (torch-free); ``{}`` when it cannot be read. ``options``: the run's dataset options (task,
    columns, split) as (name, value) pairs."""
    from pilot.data.hf import open_dataset
    from pilot.data.manifest import ManifestError

    candidates = [Path(manifest_path)] if manifest_path else []
    if demo:
        candidates.append(DEMO_MANIFEST)
    for candidate in candidates:
        if not candidate.exists():
            continue
        try:
            # Only ids and images are read: a fixed question never fails on a manifest without labels.
            dataset = open_dataset(candidate, labels=list(labels) if labels else None,
                                   prompt_template=prompt_template or "-", **dict(options))
        except (ManifestError, OSError, TypeError, ValueError):
            continue
        return {item.id: item.image for item in dataset.items}
    return {}


def dataset_options(settings: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    """The run's dataset options (``pilot.runner.RunSettings``) as ``image_paths`` takes them (hashable)."""
    names = {"task": "task", "image_column": "image_column", "question_column": "question_column",
             "answer_column": "answer_column", "dataset_split": "split", "id_column": "id_column"}
    return tuple((option, settings[key]) for key, option in names.items() if settings.get(key))
