"""The dashboard's data layer: read-only access to the store and the Optuna study, KPI tiles, verdicts, costs.

No Streamlit and no torch here (a test checks that importing this module pulls in neither torch nor transformers):
the KPI math lives in ``pilot.metrics`` / ``pilot.summaries``; this module only reads, arranges and formats it.
"""

from __future__ import annotations

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

from pilot.metrics import budget_verdict, metric_drop
from pilot.plan import plan_comparison
from pilot.report import finite_number
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
                  "tokens_per_layer", "kept_indices", "image_grids", "peak_memory_mb", "error")
# Columns added by later revisions: a store the dashboard reads without upgrading it may lack them (None then).
LATER_COLUMNS = ("image_grids",)


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
        if other is None or base.error is not None or other.error is not None:
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


def image_paths(manifest_path: str | None, labels: Sequence[str] | None = None,
                prompt_template: str | None = None, demo: bool = False) -> dict[str, Path]:
    """Sample id -> image path from the run's manifest (torch-free); ``{}`` when the manifest cannot be read."""
    from pilot.data.manifest import ManifestError, load_manifest

    candidates = [Path(manifest_path)] if manifest_path else []
    if demo:
        candidates.append(DEMO_MANIFEST)
    for candidate in candidates:
        if not candidate.is_file():
            continue
        try:
            # Only ids and paths are read: a fixed question never fails on a manifest without labels.
            dataset = load_manifest(candidate, labels=list(labels) if labels else None,
                                    prompt_template=prompt_template or "-")
        except (ManifestError, OSError, TypeError, ValueError):
            continue
        return {item.id: Path(item.image) for item in dataset.items}
    return {}


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
    """The study's or user's metric name as ``budget_verdict`` wants it: "f1", "accuracy" or "agreement"."""
    if metric and metric.lower().startswith("acc"):
        return "accuracy"
    if metric and metric.lower().startswith("agree"):
        return "agreement"
    return "f1"


def metric_title(metric: str) -> str:
    return {"accuracy": "accuracy", "agreement": "agreement with baseline"}.get(metric_key(metric), "macro-F1")


METRIC_CHOICES = {"auto": "auto (macro-F1; agreement without labels)", "f1": "macro-F1", "accuracy": "accuracy",
                  "agreement": "answers changed (no labels needed)"}


def has_labels(report: Mapping[str, Any]) -> bool:
    """Whether any sample of the run carries a label (reports from before label-free pilots always do)."""
    arms = report.get("arms") or []
    return not arms or any(a.get("n_labelled") is None or a.get("n_labelled") > 0 for a in arms)


def resolve_metric(choice: str | None, report: Mapping[str, Any]) -> str:
    """The sidebar's metric choice for a run: "auto" is macro-F1, or agreement when no sample has a label."""
    if choice in (None, "auto"):
        return "f1" if has_labels(report) else "agreement"
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
    if v["met"] is None:
        if key != "agreement" and comparison.get("n_paired") and not comparison.get("n_labelled", 1):
            return Verdict("unknown", "No verdict", f"No labelled samples, so no {name} verdict: set the budget on "
                           "answers changed (sidebar).", v)
        return Verdict("unknown", "No verdict", "No paired results with the baseline yet.", v)
    if key == "agreement":
        budget = f"{pct(max_drop)} of answers changed"
        change = f"{pct(v['drop'])} of answers change"
        high = pct(v["drop_ci_high"])
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
            verb = "run about" if key == "agreement" else "label about"
            settle = (f"{verb} {plan['more_needed']:,} more images ({plan['samples_needed']:,} paired samples in "
                      "all) to settle it, if the observed drop and discordance hold.")
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


def arm_tiles(arm: Mapping[str, Any], baseline: Mapping[str, Any] | None) -> list[Tile]:
    """The KPI tiles of a pruned arm against the baseline, formatted as the page shows them."""
    vs = arm.get("vs_baseline") or {}
    base = baseline or {}
    kept, total = num(arm.get("visual_tokens_kept")), num(base.get("visual_tokens_kept"))
    tokens = None if kept is None else (f"{kept:,.0f}/{total:,.0f} tokens" if total else f"{kept:,.0f} tokens")
    prefill, total_ratio = num(vs.get("prefill_ratio")), num(vs.get("total_ratio"))
    invalid, base_invalid = num(arm.get("invalid_rate")), num(base.get("invalid_rate"))
    if vs.get("f1_delta") is None and vs.get("agreement") is not None:  # no labels: agreement in the quality tile
        ci = vs.get("agreement_ci") or [None, None]
        quality = Tile("agreement", "Answers unchanged", pct(vs.get("agreement")),
                       f"CI [{pct(ci[0])}, {pct(ci[1])}]", "off",
                       "Share of samples the pruned arm answers as the baseline does (no labels needed); below: "
                       "Wilson 95% interval")
    else:
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


TRIAL_COLUMNS = ["trial", "state", "values", "strategy", "f1_drop", "accuracy_drop", "agreement_drop", "drop_ci_high",
                 "paper_tflops_ratio", "prefill_ratio", "feasible", "evaluated_samples"]


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
