"""The dashboard's data layer: read-only access to the store and the Optuna study, KPI tiles, verdicts, costs.

No Streamlit and no torch here (a test checks that importing this module pulls in neither torch nor transformers):
the KPI math lives in ``pilot.metrics`` / ``pilot.summaries``; this module only reads, arranges and formats it.
"""

from __future__ import annotations

import difflib
import math
import os
import re
import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from sqlalchemy import Engine, create_engine, func, inspect, select
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import NullPool

from pilot.metrics import METRICS, OPEN_TASKS, SCORE_METRICS, VS_BASELINE_METRICS, budget_verdict, metric_drop
from pilot.plan import TITLES, plan_comparison
from pilot.report import finite_number
from pilot.report import open_ended as open_ended  # re-exported: the app asks it
from pilot.store import models as db
from pilot.store.session import DEFAULT_URL, normalise_url
from pilot.summaries import BASELINE, build_report
from pilot.summaries import list_runs as _list_runs

ENV_VAR = "PILOT_DB"
IN_PROGRESS = ("pending", "running")
UNFINISHED = ("pending", "running", "interrupted", "failed")
# pilot.runner.demo_dataset_path(), without importing pilot.runner (it imports torch).
DEMO_MANIFEST = Path.home() / ".cache" / "transprune-pilot" / "demo-data-seed0-n600" / "manifest.csv"
MS_PER_HOUR = 3_600_000.0
MISSING = "–"


# ---------------------------------------------------------------- where the store is


def resolve_db_url(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> str:
    """The store URL: ``--db URL`` (or ``--db=URL``) in ``argv``, else ``$PILOT_DB``, else ``sqlite:///pilot.db``.

    A bare file path becomes a SQLite URL (``pilot.store.normalise_url``).
    """
    argv = list(argv or [])
    environ = os.environ if environ is None else environ
    url = None
    for i, arg in enumerate(argv):
        if arg == "--db" and i + 1 < len(argv):
            url = argv[i + 1]
        elif arg.startswith("--db="):
            url = arg.split("=", 1)[1]
    url = url or environ.get(ENV_VAR) or DEFAULT_URL
    return normalise_url(url)


def display_url(url: str) -> str:
    """The URL with any password hidden."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - only for display
        return url


class StoreUnavailable(RuntimeError):
    """The store cannot be shown: ``kind`` is "missing" (no file), "empty" (no tables) or "unreachable"."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind
        self.message = message


def sqlite_path(url: str) -> Path | None:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return None
    database = parsed.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database).expanduser()


def connect(url: str) -> Engine:
    """A read-only engine for the store; raises ``StoreUnavailable`` with a clear message when it cannot be read.

    SQLite opens the file with ``mode=ro`` (never creates it, never migrates it); PostgreSQL sessions default to
    read-only transactions. The dashboard never commits either way.
    """
    url = normalise_url(url)
    path = sqlite_path(url)
    if path is not None:
        if not path.is_file():
            raise StoreUnavailable(
                "missing",
                f"No database file at {path.absolute()}. Run `pilot run` or `pilot demo` first, or point the "
                f"dashboard at your store with `pilot dashboard --db URL` (or ${ENV_VAR}).",
            )
        uri = path.absolute().as_uri() + "?mode=ro"

        def creator() -> sqlite3.Connection:
            connection = sqlite3.connect(uri, uri=True, timeout=30, check_same_thread=False)
            connection.execute("PRAGMA busy_timeout=30000")
            return connection

        engine = create_engine("sqlite://", creator=creator, poolclass=NullPool)
    elif make_url(url).get_backend_name() == "postgresql":
        engine = create_engine(url, pool_pre_ping=True, pool_size=2, max_overflow=2,
                               connect_args={"options": "-c default_transaction_read_only=on", "connect_timeout": 5})
    else:
        engine = create_engine(url, pool_pre_ping=True)
    try:
        tables = set(inspect(engine).get_table_names())
    except Exception as error:  # noqa: BLE001 - any driver error means we cannot show the store
        engine.dispose()
        detail = str(getattr(error, "orig", None) or error).strip().splitlines()
        raise StoreUnavailable(
            "unreachable", f"Cannot read the database {display_url(url)}: {detail[0] if detail else error}"
        ) from error
    if "runs" not in tables:
        engine.dispose()
        raise StoreUnavailable(
            "empty",
            f"The database {display_url(url)} has no pilot tables yet. Run `pilot run` or `pilot demo` to fill it.",
        )
    return engine


def reader(engine: Engine) -> sessionmaker[Session]:
    """Sessions that never flush on their own; the dashboard only reads."""
    return sessionmaker(bind=engine, autoflush=False, expire_on_commit=False)


def has_table(engine: Engine, name: str) -> bool:
    return name in set(inspect(engine).get_table_names())


# ---------------------------------------------------------------- runs


def list_runs(engine: Engine) -> list[dict]:
    with reader(engine)() as session:
        return _list_runs(session)


def default_run_id(runs: Sequence[dict]) -> int | None:
    """The latest completed pilot run, else the latest completed run, else the latest run, else None.

    A pilot run compares arms on the whole dataset; the tuner's runs (a baseline-only run on the
    tuning split, verifications on the held-out split) are one click away, not the landing page.
    """
    if not runs:
        return None
    completed = [r for r in runs if r["status"] == "completed"]
    compared = [r for r in completed if any(a != BASELINE for a in r.get("arms") or [])]
    pilots = [r for r in compared if not r.get("split")]
    return max(pilots or compared or completed or runs, key=lambda r: r["run_id"])["run_id"]


def default_study(runs: Sequence[dict], studies: Sequence[dict]) -> str | None:
    """The tuning study to land on, or None for the run view: the latest study with a verified recommendation,
    when its held-out verification is newer than the latest pilot run (as after ``make demo``: the pilot run
    first, then the tuner's verdict, which is what a reader wants to see first)."""
    recommended = [s for s in studies if s.get("recommended_strategy") and s.get("verification_run_id")]
    if not recommended:
        return None
    latest = max(recommended, key=lambda s: s["verification_run_id"])
    pilot = default_run_id(runs)
    pilot_runs = [r for r in runs if r["run_id"] == pilot and not r.get("split")]
    if pilot_runs and pilot >= latest["verification_run_id"]:
        return None
    return latest["name"]


def load_report(engine: Engine, run_id: int) -> dict:
    with reader(engine)() as session:
        return build_report(session, run_id)


def run_info(engine: Engine, run_id: int) -> dict:
    """Status, settings, machine and per-arm progress (results stored vs expected) of one run."""
    with reader(engine)() as session:
        run = session.get(db.Run, run_id)
        if run is None:
            raise ValueError(f"no run {run_id}")
        counts = dict(session.execute(
            select(db.SampleResult.arm_id, func.count()).join(db.Arm).where(db.Arm.run_id == run_id)
            .group_by(db.SampleResult.arm_id)).all())
        errors = dict(session.execute(
            select(db.SampleResult.arm_id, func.count()).join(db.Arm)
            .where(db.Arm.run_id == run_id, db.SampleResult.error.is_not(None))
            .group_by(db.SampleResult.arm_id)).all())
        settings = dict(run.settings or {})
        size = run.dataset.size
        limit = settings.get("limit")
        expected = min(size, int(limit)) if limit else size
        arms = [{"name": arm.name, "strategy": arm.strategy, "stored": int(counts.get(arm.id, 0)),
                 "errors": int(errors.get(arm.id, 0)), "expected": expected} for arm in run.arms]
        return {
            "run_id": run.id, "name": run.name, "status": run.status, "error": run.error,
            "settings": settings, "machine": dict(run.machine or {}),
            "created_at": run.created_at, "started_at": run.started_at, "finished_at": run.finished_at,
            "heartbeat_at": run.heartbeat_at,
            "dataset": run.dataset.name, "dataset_size": size, "labels": list(run.dataset.labels),
            "manifest_path": run.dataset.manifest_path, "model": run.model.name,
            "arms": arms, "stored": sum(a["stored"] for a in arms), "expected": expected * len(arms),
        }


def stamp(info: dict) -> tuple:
    """What changes when a run's results change: a cache key."""
    finished = info["finished_at"].isoformat() if info.get("finished_at") else None
    return info["status"], finished, info["stored"]


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
             "answer_column": "answer_column", "dataset_split": "split"}
    return tuple((option, settings[key]) for key, option in names.items() if settings.get(key))


# ---------------------------------------------------------------- formatting


num = finite_number


def pct(value: Any, digits: int = 1) -> str:
    v = num(value)
    return MISSING if v is None else f"{v * 100:.{digits}f}%"


def signed_pct(value: Any, digits: int = 1) -> str:
    v = num(value)
    if v is None:
        return MISSING
    v = 0.0 if round(v * 100, digits) == 0 else v
    return f"{v * 100:+.{digits}f}%"


def pts(value: Any, digits: int = 1, signed: bool = True) -> str:
    """A macro-F1 (or accuracy) difference in points: 0.012 -> "+1.2 pts"."""
    v = num(value)
    if v is None:
        return MISSING
    v = 0.0 if round(v * 100, digits) == 0 else v
    return f"{v * 100:+.{digits}f} pts" if signed else f"{v * 100:.{digits}f} pts"


def ci_pts(ci: Any, digits: int = 1) -> str:
    if not isinstance(ci, list | tuple) or len(ci) != 2 or num(ci[0]) is None or num(ci[1]) is None:
        return MISSING
    lo, hi = (0.0 if round(num(v) * 100, digits) == 0 else num(v) for v in ci)
    return f"[{lo * 100:+.{digits}f}, {hi * 100:+.{digits}f}] pts"


def ms(value: Any) -> str:
    v = num(value)
    return MISSING if v is None else f"{v:,.1f} ms"


def short_ms(value: Any) -> str:
    """A latency for a tile: "209 ms", "12.5 ms"."""
    v = num(value)
    if v is None:
        return MISSING
    return f"{v:,.0f} ms" if abs(v) >= 100 else f"{v:.1f} ms"


def fixed(value: Any, digits: int = 3) -> str:
    v = num(value)
    return MISSING if v is None else f"{v:.{digits}f}"


def money(value: Any, currency: str = "$") -> str:
    v = num(value)
    if v is None:
        return MISSING
    sign = "-" if v < 0 else ""
    return f"{sign}{currency}{abs(v):,.0f}"


def hours(value: Any) -> str:
    v = num(value)
    return MISSING if v is None else f"{v:,.1f} h"


def machine_text(machine: Mapping[str, Any] | None) -> str:
    """One line naming the machine the latencies were measured on."""
    if not machine:
        return "unknown machine"
    device = machine.get("gpu") or machine.get("cpu") or machine.get("device") or "unknown device"
    parts = [str(device)]
    if not machine.get("gpu") and machine.get("threads"):
        parts.append(f"{machine['threads']} threads")
    if machine.get("torch"):
        parts.append(f"torch {machine['torch']}")
    return ", ".join(parts)


# ---------------------------------------------------------------- verdicts and tiles


def metric_key(metric: str | None) -> str:
    """The study's or user's metric name as ``budget_verdict`` wants it: "f1", "accuracy", "agreement", or an
    open-ended score (``pilot.metrics.SCORE_METRICS``, ``VS_BASELINE_METRICS``) by its own name."""
    name = (metric or "").lower()
    if name in METRICS:
        return name
    if name.startswith("acc"):
        return "accuracy"
    if name.startswith("agree"):
        return "agreement"
    return "f1"


def metric_title(metric: str) -> str:
    key = metric_key(metric)
    return {"f1": "macro-F1", "accuracy": "accuracy", "agreement": "agreement with baseline"}.get(key, TITLES[key])


METRIC_CHOICES = {"auto": "auto (macro-F1; agreement without labels)", "f1": "macro-F1", "accuracy": "accuracy",
                  "agreement": "answers changed (no labels needed)"}
# Continuous metrics of open-ended answers the sidebar offers when a run (or a study's trials) has them.
OPEN_CHOICES = {"anls": "ANLS (against references)", "exact_match": "exact match (against references)",
                "token_f1": "token F1 (against references)",
                "relaxed_accuracy": "relaxed accuracy (against references)",
                "field_f1": "JSON field F1 (against references)",
                "anls_vs_baseline": "ANLS to baseline (no references needed)",
                "token_f1_vs_baseline": "token F1 to baseline (no references needed)"}


def has_labels(report: Mapping[str, Any]) -> bool:
    """Whether any sample of the run carries a label (reports from before label-free pilots always do)."""
    arms = report.get("arms") or []
    return not arms or any(a.get("n_labelled") is None or a.get("n_labelled") > 0 for a in arms)


def run_metrics(report: Mapping[str, Any]) -> list[str]:
    """The open-ended metrics (``OPEN_CHOICES`` order) a run has values of: a score against references when an arm
    has its mean or a pruned arm its paired change, a similarity to the baseline when a pruned arm has it."""
    arms = report.get("arms") or []
    out = []
    for metric in OPEN_CHOICES:
        if metric in VS_BASELINE_METRICS:
            present = any((a.get("vs_baseline") or {}).get(metric) is not None for a in arms)
        else:
            present = any(a.get(metric) is not None or (a.get("vs_baseline") or {}).get(f"{metric}_delta") is not None
                          for a in arms)
        if present:
            out.append(metric)
    return out


def trial_metrics(trials: pd.DataFrame, study_metric: str | None = None) -> list[str]:
    """The open-ended metrics a study's trials carry a drop of (``{key}_drop``), and the study's own metric."""
    own = metric_key(study_metric) if study_metric else None
    return [m for m in OPEN_CHOICES if m == own or (f"{m}_drop" in trials and trials[f"{m}_drop"].notna().any())]


def metric_choices(metrics: Sequence[str] = (), auto: str | None = None) -> dict[str, str]:
    """The sidebar's "Budget on" choices: ``METRIC_CHOICES`` (exactly, without ``metrics``), then the open-ended
    ``metrics`` the run or study has; ``auto`` is what "auto" resolves to, named in its label when it is one of
    them."""
    extra = {m: OPEN_CHOICES[m] for m in metrics if m in OPEN_CHOICES}
    if not extra:
        return dict(METRIC_CHOICES)
    label = f"auto ({metric_title(auto)})" if auto else METRIC_CHOICES["auto"]
    return {**METRIC_CHOICES, "auto": label, **extra}


def resolve_metric(choice: str | None, report: Mapping[str, Any]) -> str:
    """The sidebar's metric choice for a run: "auto" is macro-F1, or without labels the run's open-ended score
    against references (ANLS, else JSON field F1), else ANLS to the baseline's open-ended answers, else agreement."""
    if choice in (None, "auto"):
        if has_labels(report):
            return "f1"
        present = run_metrics(report)
        return next((m for m in ("anls", "field_f1", "anls_vs_baseline") if m in present), "agreement")
    return metric_key(choice)


@dataclass(frozen=True)
class Verdict:
    status: str  # "met_with_confidence", "met", "not_met", "unknown"
    label: str
    text: str
    detail: dict
    plan: Mapping[str, Any] | None = None  # pilot.plan.plan_comparison: the paired samples the verdict needs


def verdict(arm: Mapping[str, Any], max_drop: float, metric: str = "f1") -> Verdict:
    """The budget verdict of a pruned arm (``pilot.metrics.budget_verdict`` on its ``vs_baseline``)."""
    key = metric_key(metric)
    name = metric_title(key)
    comparison = arm.get("vs_baseline")
    if not comparison:
        return Verdict("unknown", "No verdict", "No comparison with a baseline arm.", {})
    v = budget_verdict(comparison, key, max_drop)
    if v.get("reason"):  # refused: the baseline scores at the floor of the metric
        return Verdict("unknown", "No verdict", f"{v['reason'][0].upper()}{v['reason'][1:]} (baseline {name} 0).", v)
    if v["met"] is None:
        if key in SCORE_METRICS and comparison.get("n_paired"):
            return Verdict("unknown", "No verdict", f"No paired samples with reference answers, so no {name} "
                           "verdict: set the budget on ANLS to baseline (sidebar).", v)
        if key in VS_BASELINE_METRICS and comparison.get("n_paired"):
            return Verdict("unknown", "No verdict", f"No open-ended answers paired with the baseline's, so no {name} "
                           "verdict.", v)
        if key != "agreement" and comparison.get("n_paired") and not comparison.get("n_labelled", 1):
            return Verdict("unknown", "No verdict", f"No labelled samples, so no {name} verdict: set the budget on "
                           "answers changed (sidebar).", v)
        return Verdict("unknown", "No verdict", "No paired results with the baseline yet.", v)
    if key == "agreement":
        budget = f"{pct(max_drop)} of answers changed"
        change = f"{pct(v['drop'])} of answers change"
        high = pct(v["drop_ci_high"])
    elif key in VS_BASELINE_METRICS:  # a similarity to the baseline's answers: 1 when nothing changed
        budget = pts(max_drop, signed=False)
        change = f"{name} {fixed(1 - v['drop'])}, a drop of {pts(v['drop'], signed=False)} from identical answers"
        high = pts(v["drop_ci_high"], signed=False) if v["drop_ci_high"] is not None else MISSING
    else:
        budget = pts(max_drop, signed=False)
        change = (f"{name} drop {pts(v['drop'], signed=False)}" if v["drop"] >= 0
                  else f"{name} rises by {pts(-v['drop'], signed=False)}")
        high = pts(v["drop_ci_high"], signed=False) if v["drop_ci_high"] is not None else MISSING
    plan = plan_comparison(comparison, max_drop, key)
    if v["met_with_confidence"]:
        return Verdict("met_with_confidence", "Budget met with confidence",
                       f"{change}; even the 95% upper bound of the drop ({high}) is within the budget of {budget}.", v,
                       plan)
    if v["met"]:
        settle = "more samples would settle it."
        if plan["more_needed"]:
            verb = ("run about" if key in ("agreement", *VS_BASELINE_METRICS) else
                    "get reference answers for about" if key in SCORE_METRICS else "label about")
            spread = "spread" if key in (*SCORE_METRICS, *VS_BASELINE_METRICS) else "discordance"
            settle = (f"{verb} {plan['more_needed']:,} more images ({plan['samples_needed']:,} paired samples in "
                      f"all) to settle it, if the observed drop and {spread} hold.")
        return Verdict("met", "Budget met (not yet with confidence)",
                       f"{change}, within the budget of {budget}, but the 95% upper bound of the drop is {high}: "
                       f"{settle}", v, plan)
    return Verdict("not_met", "Budget not met",
                   f"{change} (95% upper bound {high}) exceeds the budget of {budget}; the observed drop is over it, "
                   "so more samples will not show it met.", v, plan)


@dataclass(frozen=True)
class Tile:
    key: str
    label: str
    value: str
    delta: str | None = None
    delta_color: str = "off"
    help: str | None = None


def baseline_arm(report: Mapping[str, Any]) -> dict | None:
    arms = report.get("arms") or []
    return next((a for a in arms if a.get("strategy") == BASELINE), None)


def pruned_arms(report: Mapping[str, Any]) -> list[dict]:
    return [a for a in report.get("arms") or [] if a.get("strategy") != BASELINE]


def _neg(value: Any) -> float | None:
    v = num(value)
    return None if v is None else -v + 0.0


def compute_saved(arm: Mapping[str, Any]) -> float | None:
    ratio = num((arm.get("vs_baseline") or {}).get("paper_tflops_ratio"))
    return None if ratio is None else 1.0 - ratio


def quality_tile(vs: Mapping[str, Any], metric: str) -> Tile | None:
    """The quality tile of an open-ended ``metric`` (its change against references, or the similarity to the
    baseline's answers) with its 95% interval; None for the label metrics."""
    key = metric_key(metric)
    title = metric_title(key)
    if key in SCORE_METRICS:
        return Tile(f"{key}_change", f"{title[0].upper()}{title[1:]} change", pts(vs.get(f"{key}_delta")),
                    f"CI {ci_pts(vs.get(f'{key}_delta_ci'))}", "off",
                    f"Pruned minus baseline mean {title} against the reference answers, on the same samples "
                    f"({vs.get(f'{key}_n') or 0} with references), in points; below: paired bootstrap 95% CI")
    if key in VS_BASELINE_METRICS:
        ci = vs.get(f"{key}_ci") or [None, None]
        return Tile(key, title, fixed(vs.get(key)), f"CI [{fixed(ci[0])}, {fixed(ci[1])}]", "off",
                    f"Mean {title.removesuffix(' to baseline')} of each pruned answer against the baseline's answer "
                    "(1 = unchanged; no references needed); below: bootstrap 95% CI")
    return None


def arm_tiles(arm: Mapping[str, Any], baseline: Mapping[str, Any] | None, metric: str | None = None) -> list[Tile]:
    """The KPI tiles of a pruned arm against the baseline, formatted as the page shows them; the quality tile
    follows ``metric`` when it is an open-ended one (macro-F1, or agreement without labels, otherwise)."""
    vs = arm.get("vs_baseline") or {}
    base = baseline or {}
    kept, total = num(arm.get("visual_tokens_kept")), num(base.get("visual_tokens_kept"))
    tokens = None if kept is None else (f"{kept:,.0f}/{total:,.0f} tokens" if total else f"{kept:,.0f} tokens")
    prefill, total_ratio = num(vs.get("prefill_ratio")), num(vs.get("total_ratio"))
    invalid, base_invalid = num(arm.get("invalid_rate")), num(base.get("invalid_rate"))
    quality = quality_tile(vs, metric) if metric else None
    if quality is None and vs.get("f1_delta") is None and vs.get("agreement") is not None:  # no labels: agreement
        ci = vs.get("agreement_ci") or [None, None]
        quality = Tile("agreement", "Answers unchanged", pct(vs.get("agreement")),
                       f"CI [{pct(ci[0])}, {pct(ci[1])}]", "off",
                       "Share of samples the pruned arm answers as the baseline does (no labels needed); below: "
                       "Wilson 95% interval")
    elif quality is None:
        quality = Tile("f1_change", "Macro-F1 change", pts(vs.get("f1_delta")), f"CI {ci_pts(vs.get('f1_delta_ci'))}",
                       "off", "Pruned minus baseline macro-F1 on the same samples, in points; below: paired bootstrap "
                       "95% CI")
    return [
        Tile("compute_saved", "Compute saved", pct(compute_saved(arm)), tokens, "off",
             "1 − paper TFLOPs ratio (pruned / baseline, mean of per-sample ratios); below: visual tokens kept"),
        Tile("prefill", "Prefill latency", signed_pct(None if prefill is None else prefill - 1),
             f"{short_ms(arm.get('prefill_ms_p50'))} vs {short_ms(base.get('prefill_ms_p50'))}", "off",
             "Change of the median time to first token against the baseline (p50 pruned vs baseline below)"),
        Tile("total", "Total latency", signed_pct(None if total_ratio is None else total_ratio - 1),
             f"{short_ms(arm.get('total_ms_p50'))} vs {short_ms(base.get('total_ms_p50'))}", "off",
             "Change of the median time of the whole answer against the baseline (p50 pruned vs baseline below)"),
        quality,
        Tile("invalid", "Invalid answers", pct(invalid),
             None if invalid is None or base_invalid is None else pts(invalid - base_invalid),
             "inverse" if invalid is not None and base_invalid is not None and invalid != base_invalid else "off",
             "Share of answers that match no label; below: the change against the baseline"),
    ]


# ---------------------------------------------------------------- cost


@dataclass(frozen=True)
class CostInputs:
    images_per_month: float = 1_000_000
    price_per_gpu_hour: float = 2.50
    utilisation: float = 0.6
    currency: str = "$"

    def describe(self) -> str:
        return (f"{self.images_per_month:,.0f} images per month · {self.currency}{self.price_per_gpu_hour:,.2f} "
                f"per GPU-hour · {self.utilisation:.0%} utilisation")


def gpu_hours_per_month(total_ms: float | None, inputs: CostInputs) -> float | None:
    """images per month × total_ms / 3,600,000 / utilisation (docs/kpis.md)."""
    t = num(total_ms)
    if t is None or inputs.utilisation <= 0:
        return None
    return inputs.images_per_month * t / MS_PER_HOUR / inputs.utilisation


def cost_rows(report: Mapping[str, Any], inputs: CostInputs) -> list[dict]:
    """Per arm: p50 total latency, GPU-hours and money per month, and savings against the baseline."""
    base = baseline_arm(report)
    base_hours = gpu_hours_per_month(base.get("total_ms_p50"), inputs) if base else None
    rows = []
    for arm in report.get("arms") or []:
        h = gpu_hours_per_month(arm.get("total_ms_p50"), inputs)
        cost = None if h is None else h * inputs.price_per_gpu_hour
        saved_h = None if h is None or base_hours is None else base_hours - h
        rows.append({
            "arm": arm["name"], "strategy": arm["strategy"], "total_ms_p50": num(arm.get("total_ms_p50")),
            "gpu_hours": h, "cost": cost, "gpu_hours_saved": saved_h,
            "money_saved": None if saved_h is None else saved_h * inputs.price_per_gpu_hour,
            "saved_share": None if saved_h is None or not base_hours else saved_h / base_hours,
        })
    return rows


# ---------------------------------------------------------------- trade-off points


POINT_COLUMNS = ["label", "name", "strategy", "kind", "compute_ratio", "prefill_ratio", "change", "change_lo",
                 "change_hi", "feasible", "recommended", "trial", "state"]


def recommended_arm(report: Mapping[str, Any], max_drop: float, metric: str = "f1",
                    recommended_strategy: str | None = None) -> str | None:
    """The arm to recommend: the tuner's recommendation when it is an arm of this run, else the cheapest arm
    (lowest paper TFLOPs ratio) that meets the budget with confidence; None when none does."""
    arms = pruned_arms(report)
    if recommended_strategy:
        for arm in arms:
            if arm["strategy"] == recommended_strategy:
                return arm["name"]
    confident = [a for a in arms if verdict(a, max_drop, metric).status == "met_with_confidence"
                 and num((a.get("vs_baseline") or {}).get("paper_tflops_ratio")) is not None]
    if not confident:
        return None
    return min(confident, key=lambda a: a["vs_baseline"]["paper_tflops_ratio"])["name"]


def run_points(report: Mapping[str, Any], max_drop: float, metric: str = "f1",
               recommended: str | None = None) -> pd.DataFrame:
    """One trade-off point per arm: compute and prefill ratios vs. baseline and the metric change (with its CI)."""
    key = metric_key(metric)
    rows = []
    for arm in report.get("arms") or []:
        vs = arm.get("vs_baseline")
        if arm.get("strategy") == BASELINE:
            rows.append({"label": arm["name"], "name": arm["name"], "strategy": arm["strategy"], "kind": "baseline",
                         "compute_ratio": 1.0, "prefill_ratio": 1.0, "change": 0.0, "change_lo": None,
                         "change_hi": None, "feasible": True, "recommended": False, "trial": None, "state": None})
            continue
        if not vs:
            continue
        drop, drop_lo, drop_hi = metric_drop(vs, key)
        v = verdict(arm, max_drop, key)
        rows.append({"label": arm["name"], "name": arm["name"], "strategy": arm["strategy"], "kind": "arm",
                     "compute_ratio": num(vs.get("paper_tflops_ratio")), "prefill_ratio": num(vs.get("prefill_ratio")),
                     "change": _neg(drop), "change_lo": _neg(drop_hi), "change_hi": _neg(drop_lo),
                     "feasible": v.status in ("met", "met_with_confidence"), "recommended": arm["name"] == recommended,
                     "trial": None, "state": None})
    return pd.DataFrame(rows, columns=POINT_COLUMNS)


# ---------------------------------------------------------------- tuning studies


def optuna_storage(url: str):
    """An Optuna RDB storage on the store's database that neither creates tables nor writes."""
    import optuna

    url = normalise_url(url)
    kwargs: dict[str, Any] = {}
    path = sqlite_path(url)
    if path is not None:
        uri = path.absolute().as_uri() + "?mode=ro"
        kwargs = {"creator": lambda: sqlite3.connect(uri, uri=True, timeout=30, check_same_thread=False),
                  "poolclass": NullPool}
    elif make_url(url).get_backend_name() == "postgresql":
        kwargs = {"connect_args": {"options": "-c default_transaction_read_only=on", "connect_timeout": 5},
                  "pool_pre_ping": True}
    return optuna.storages.RDBStorage(url, engine_kwargs=kwargs, skip_compatibility_check=True,
                                      skip_table_creation=True)


def list_studies(engine: Engine, url: str) -> list[dict]:
    """Tuning studies: every ``TuningStudy`` row, then Optuna studies in the database that have no such row."""
    studies: list[dict] = []
    tables = set(inspect(engine).get_table_names())
    if "tuning_studies" in tables:
        with reader(engine)() as session:
            for row in session.scalars(select(db.TuningStudy).order_by(db.TuningStudy.id)):
                studies.append({
                    "name": row.name, "optuna_study_name": row.optuna_study_name, "settings": dict(row.settings or {}),
                    "baseline_run_id": row.baseline_run_id, "verification_run_id": row.verification_run_id,
                    "recommended_strategy": row.recommended_strategy,
                    "created_at": row.created_at.isoformat() if row.created_at else None,
                })
    if "studies" in tables and "trials" in tables:
        import optuna

        known = {s["optuna_study_name"] for s in studies}
        for summary in optuna.get_all_study_summaries(storage=optuna_storage(url), include_best_trial=False):
            if summary.study_name not in known:
                studies.append({"name": summary.study_name, "optuna_study_name": summary.study_name, "settings": {},
                                "baseline_run_id": None, "verification_run_id": None,
                                "recommended_strategy": None, "created_at": None})
    return studies


# The open-ended metrics' drops (``{key}_drop``, as the tuner stores them) follow the label ones.
OPEN_DROPS = [f"{m}_drop" for m in METRICS if m not in ("f1", "accuracy", "agreement")]
TRIAL_COLUMNS = ["trial", "state", "values", "strategy", "f1_drop", "accuracy_drop", "agreement_drop", *OPEN_DROPS,
                 "drop_ci_high", "paper_tflops_ratio", "prefill_ratio", "feasible", "evaluated_samples"]


def load_trials(url: str, optuna_study_name: str) -> pd.DataFrame:
    """Every trial of an Optuna study with the tuner's user attributes (missing ones as None)."""
    import optuna

    study = optuna.load_study(study_name=optuna_study_name, storage=optuna_storage(url))
    rows = []
    for trial in study.get_trials(deepcopy=False):
        attrs = trial.user_attrs
        feasible = attrs.get("feasible")
        rows.append({
            "trial": trial.number, "state": trial.state.name,
            "values": list(trial.values) if trial.values is not None else None,
            "strategy": attrs.get("strategy"), "f1_drop": num(attrs.get("f1_drop")),
            "accuracy_drop": num(attrs.get("accuracy_drop")), "agreement_drop": num(attrs.get("agreement_drop")),
            **{column: num(attrs.get(column)) for column in OPEN_DROPS},
            "drop_ci_high": num(attrs.get("drop_ci_high")),
            "paper_tflops_ratio": num(attrs.get("paper_tflops_ratio")),
            "prefill_ratio": num(attrs.get("prefill_ratio")), "feasible": None if feasible is None else bool(feasible),
            "evaluated_samples": attrs.get("evaluated_samples"),
        })
    return pd.DataFrame(rows, columns=TRIAL_COLUMNS)


def trial_points(trials: pd.DataFrame, metric: str = "f1", recommended_strategy: str | None = None,
                 max_drop: float | None = None) -> pd.DataFrame:
    """Trade-off points of the trials that carry a strategy, a metric drop and a compute ratio, plus the baseline.

    Complete trials, and trials pruned early (their drop is an estimate on the samples seen before pruning; they are
    drawn apart and never count for the Pareto front).
    """
    key = metric_key(metric)
    rows = [{"label": "baseline", "name": "baseline", "strategy": BASELINE, "kind": "baseline", "compute_ratio": 1.0,
             "prefill_ratio": 1.0, "change": 0.0, "change_lo": None, "change_hi": None, "feasible": True,
             "recommended": False, "trial": None, "state": None}]
    for t in trials.itertuples(index=False):
        drop = getattr(t, f"{key}_drop")
        if t.state not in ("COMPLETE", "PRUNED") or drop is None or t.strategy is None \
                or num(t.paper_tflops_ratio) is None:
            continue
        feasible = t.feasible if t.feasible is not None else (None if max_drop is None else drop <= max_drop + 1e-9)
        rows.append({"label": f"trial {t.trial}", "name": f"trial {t.trial}", "strategy": t.strategy,
                     "kind": "trial", "compute_ratio": num(t.paper_tflops_ratio), "prefill_ratio": num(t.prefill_ratio),
                     "change": -drop + 0.0, "change_lo": None, "change_hi": None, "feasible": bool(feasible),
                     "recommended": bool(recommended_strategy) and t.strategy == recommended_strategy,
                     "trial": int(t.trial), "state": t.state})
    return pd.DataFrame(rows, columns=POINT_COLUMNS)


_POOL_FACTOR = re.compile(r"factor=(\d+)")
_PRUNE_AFTER = re.compile(r"(?:prune_after|after)=([\d/]+)")


def pool_factor(strategy: str) -> int | None:
    """The pooling factor of a ``pool`` strategy string (2 by default), None for other strategies."""
    if not strategy.startswith("pool"):
        return None
    match = _POOL_FACTOR.search(strategy)
    return int(match.group(1)) if match else 2


def stage_layers(strategy: str) -> list[int]:
    """The layers a strategy prunes after, when its string spells them out (``prune_after=7/9/12``)."""
    match = _PRUNE_AFTER.search(strategy)
    return [int(v) for v in match.group(1).split("/") if v] if match else []
