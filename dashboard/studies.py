"""The tuner's studies: their rows in the store and their Optuna trials, read without writing, as trade-off points.

Optuna is imported only when a study is read. No Streamlit, no torch.
"""

from __future__ import annotations

import sqlite3
from typing import Any

import pandas as pd
from sqlalchemy import Engine, inspect, select
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from dashboard.formatting import num
from dashboard.store import reader, sqlite_path
from dashboard.verdicts import POINT_COLUMNS
from pilot.metrics import METRICS, metric_key
from pilot.store import models as db
from pilot.store.session import normalise_url
from pilot.summaries import BASELINE


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
