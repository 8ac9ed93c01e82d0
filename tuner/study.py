"""The budget tuner: the cheapest TransPrune schedule that stays within an accuracy budget.

1. Split the dataset (stratified, seeded) into a tuning part and a held-out part.
2. Baseline answers on the tuning part: one pilot run, computed once, shared by every trial and
   every worker (it is stored; a second worker joins it).
3. An Optuna study in the same database: each trial draws a schedule, replays the tuning part
   (vision tower and projector outputs cached per batch), reports after each chunk the lower
   end of its drop's 95% interval (``BudgetPruner`` stops hopeless trials), and ends with the
   constraint ``drop - max_drop <= 0`` set through ``trial.set_constraint``.
4. Honest selection: feasible trials, cheapest first, are re-run by the pilot runner on the
   held-out part against baseline; the first whose drop and the upper end of its 95% interval
   both respect the budget is recommended, with its verification run stored.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

import optuna
import torch
from sqlalchemy import select

from pilot.metrics import Outcome, budget_verdict, compare
from pilot.models import LoadedModel, load
from pilot.runner import (
    PreparedBatch,
    RunSettings,
    execute,
    load_dataset,
    outcomes_from_rows,
    prepare_batch,
    run_arm_batch,
    select_items,
)
from pilot.store import get_or_create, normalise_url, open_store, schema_lock
from pilot.store import models as db
from pilot.summaries import outcomes
from tuner.pruner import BudgetPruner
from tuner.space import suggest

METRICS = {"f1_macro": "f1", "accuracy": "accuracy"}
OBJECTIVES = ("tflops", "latency")


@dataclass
class TuneSettings:
    model: str = "demo"
    dataset: str | None = None
    labels: list[str] | None = None
    prompt_template: str | None = None
    metric: str = "f1_macro"
    max_drop: float = 0.01
    objective: str = "tflops"
    mode: str = "ratio"  # "ratio": keep ratios; "mass": score-mass thresholds
    multi_objective: bool = False
    trials: int = 30  # total finished trials the study should reach (reruns resume)
    timeout_s: float | None = None
    study: str | None = None
    seed: int = 0
    heldout_fraction: float = 0.5
    split_seed: int = 0
    batch_size: int = 8
    max_new_tokens: int = 4
    device: str = "cpu"
    dtype: str = "float32"
    chunks: int = 4  # reports per trial (early pruning points)
    max_verifications: int = 3
    cache_features: bool = True
    limit: int | None = None

    def validate(self) -> None:
        if self.metric not in METRICS:
            raise ValueError(f"metric {self.metric!r}: use one of {', '.join(METRICS)}")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective {self.objective!r}: use one of {', '.join(OBJECTIVES)}")
        if not -1 < self.max_drop < 1:
            raise ValueError(f"max_drop {self.max_drop}: a drop in metric units, e.g. 0.01 for one point")
        if self.trials < 1:
            raise ValueError("trials must be >= 1")

    def study_name(self) -> str:
        if self.study:
            return self.study
        fixed = {k: v for k, v in asdict(self).items() if k not in ("trials", "timeout_s", "max_verifications")}
        return "tune-" + hashlib.sha256(json.dumps(fixed, sort_keys=True).encode()).hexdigest()[:10]

    def run_settings(self, arms: list[str], split: str) -> RunSettings:
        return RunSettings(model=self.model, dataset=self.dataset, arms=arms, limit=self.limit,
                           batch_size=self.batch_size, device=self.device, dtype=self.dtype,
                           max_new_tokens=self.max_new_tokens, labels=self.labels,
                           prompt_template=self.prompt_template, split=split,
                           split_fraction=self.heldout_fraction, split_seed=self.split_seed)


class TrialEvaluator:
    """Replays the tuning part for one strategy, reusing cached vision features per batch."""

    def __init__(self, loaded: LoadedModel, batches: list[PreparedBatch], labels, max_new_tokens: int,
                 device: torch.device, cache_features: bool):
        self.loaded = loaded
        self.labels = list(labels)
        self.max_new_tokens = max_new_tokens
        self.device = device
        self.batches = [self._cache(b) for b in batches] if cache_features else batches

    def _cache(self, prepared: PreparedBatch) -> PreparedBatch:
        """The vision tower + projector output of a batch, computed once for every trial."""
        if not prepared.items:
            return prepared
        inputs = dict(prepared.inputs)
        model = self.loaded.model
        with torch.inference_mode():
            extra = {"image_sizes": inputs["image_sizes"]} if "image_sizes" in inputs else {}
            features = model.model.get_image_features(pixel_values=inputs.pop("pixel_values"), return_dict=True,
                                                      **extra)
        inputs["mm_encoder_outputs"] = {"image": features}
        return PreparedBatch(prepared.items, inputs, prepared.errors)

    def retime(self, outcomes: dict[str, Outcome]) -> dict[str, Outcome]:
        """``outcomes`` (the stored baseline) with latencies measured as trials measure theirs.

        Trials replay cached vision features, so their prefill leaves the vision tower out, while
        the stored baseline ran it: compared as they are, every schedule would look faster by the
        tower's share. The baseline is timed again here, on the same inputs, in this process,
        after an untimed pass of the baseline and of a pruned schedule (without it the first trial
        paid the pruning path's first-use costs: prefill x2.2 where later trials got x0.4-0.8).
        """
        first = [b for b in self.batches if b.items][:1]
        if not first:
            return outcomes
        for strategy in ("baseline", "transprune"):
            self.run(strategy, first)
        timed = {row["sample_id"]: row for row in self.run("baseline", self.batches)}
        return {sample_id: replace(outcome, prefill_ms=timed[sample_id]["prefill_ms"],
                                   total_ms=timed[sample_id]["total_ms"]) if sample_id in timed else outcome
                for sample_id, outcome in outcomes.items()}

    def run(self, strategy: str, batches: list[PreparedBatch]) -> list[dict]:
        rows: list[dict] = []
        for prepared in batches:
            if prepared.items:
                rows += run_arm_batch(self.loaded, strategy, prepared, self.labels, self.max_new_tokens, self.device)
        return rows


def _drop(comparison: dict, metric: str) -> tuple[float | None, float | None, float | None]:
    """(drop, low end, high end) of the metric's drop: drop = baseline - pruned."""
    key = METRICS[metric]
    delta, ci = comparison[f"{key}_delta"], comparison[f"{key}_delta_ci"]
    if delta is None:
        return None, None, None
    return -delta, -ci[1], -ci[0]


def tune(settings: TuneSettings, *, db_url: str | None = None, log: Callable[[str], None] | None = None,
         progress: bool = True) -> dict:
    """Run (or resume) the study, then verify candidates on held-out data. Returns the result dict."""
    log = log or (lambda message: print(message, file=sys.stderr))
    settings.validate()
    started = time.time()
    sessions = open_store(db_url)
    url = normalise_url(db_url)
    name = settings.study_name()
    device = torch.device(settings.device)
    loaded = load(settings.model, device=device, dtype=getattr(torch, settings.dtype))
    dataset = load_dataset(settings.run_settings(["baseline"], "tune"))

    log(f"study {name}: baseline on the tuning split (computed once, stored)")
    baseline_report = execute(settings.run_settings(["baseline"], "tune"), db_url=db_url,
                              name=f"{name}-tune-baseline", progress=progress, log=log, loaded=loaded)
    baseline_run_id = baseline_report["run_id"]
    with sessions() as session:
        arm_id = session.scalar(select(db.Arm.id).where(db.Arm.run_id == baseline_run_id))
        baseline = {o.sample_id: o for o in outcomes(session, arm_id) if o.error is None}
    items = [item for item in select_items(dataset, settings.run_settings(["baseline"], "tune"))
             if item.id in baseline]
    batches = [prepare_batch(loaded, items[i : i + settings.batch_size], device, loaded.model.dtype)
               for i in range(0, len(items), settings.batch_size)]
    evaluator = TrialEvaluator(loaded, batches, dataset.labels, settings.max_new_tokens, device,
                               settings.cache_features)
    baseline = evaluator.retime(baseline)
    chunk_size = max(1, -(-len(evaluator.batches) // settings.chunks))
    chunks = [evaluator.batches[i : i + chunk_size] for i in range(0, len(evaluator.batches), chunk_size)]

    with schema_lock(url):  # workers starting together must not both create Optuna's tables
        storage = optuna.storages.RDBStorage(url)
    directions = ["minimize", "minimize"] if settings.multi_objective else ["minimize"]
    study = optuna.create_study(study_name=name, storage=storage, load_if_exists=True, directions=directions,
                                pruner=BudgetPruner(settings.max_drop))
    # Seeded: a fresh study is reproducible; a worker joining a running study draws other points.
    seed = settings.seed + len(study.get_trials(deepcopy=False))
    # TPE reads the constraints that trials set (optuna 5), so infeasible regions are avoided.
    with warnings.catch_warnings():  # group=True is marked experimental; it is what a conditional space needs
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.sampler = optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, n_startup_trials=8)
    _link_study(sessions, name, settings, baseline_run_id)

    def objective(trial: optuna.Trial):
        strategy = str(suggest(trial, loaded.depth, settings.mode))
        trial.set_user_attr("strategy", strategy)
        twin = next((t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
                     if t.user_attrs.get("strategy") == strategy), None)
        if twin is not None:  # the same schedule was measured already: reuse, do not replay
            for key, value in twin.user_attrs.items():
                trial.set_user_attr(key, value)
            for key, value in twin.constraints.items():
                trial.set_constraint(key, value)
            return twin.values if settings.multi_objective else twin.values[0]
        rows: list[dict] = []
        for step, chunk in enumerate(chunks):
            rows += evaluator.run(strategy, chunk)
            trial.set_user_attr("evaluated_samples", len(rows))
            if step < len(chunks) - 1:
                done = {r["sample_id"] for r in rows}
                partial = compare([baseline[i] for i in done], outcomes_from_rows(rows), dataset.labels,
                                  resamples=300, seed=settings.seed)
                _, low, _ = _drop(partial, settings.metric)
                trial.report(low, step)
                if trial.should_prune():
                    trial.set_user_attr("feasible", False)
                    trial.set_user_attr("f1_drop", -partial["f1_delta"])  # on the samples seen so far
                    trial.set_user_attr("paper_tflops_ratio", partial["paper_tflops_ratio"])
                    raise optuna.TrialPruned(f"drop's lower bound {low:.3f} > budget {settings.max_drop}")
        comparison = compare(list(baseline.values()), outcomes_from_rows(rows), dataset.labels, resamples=1000,
                             seed=settings.seed)
        drop, _, high = _drop(comparison, settings.metric)
        compute = comparison["paper_tflops_ratio"] if settings.objective == "tflops" else comparison["prefill_ratio"]
        attrs = {"f1_drop": -comparison["f1_delta"], "accuracy_drop": -comparison["accuracy_delta"],
                 "drop_ci_high": high, "paper_tflops_ratio": comparison["paper_tflops_ratio"],
                 "prefill_ratio": comparison["prefill_ratio"], "feasible": drop <= settings.max_drop + 1e-9,
                 "mean_visual_tokens_kept": sum(r["visual_tokens_kept"] for r in rows) / len(rows)}
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
        trial.set_constraint("drop_over_budget", drop - settings.max_drop)
        return (compute, drop) if settings.multi_objective else compute

    def report(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        attrs = trial.user_attrs
        if trial.state == optuna.trial.TrialState.COMPLETE:
            log(f"trial {trial.number}: {attrs['strategy']}  drop {attrs['f1_drop']:+.3f} (F1), "
                f"TFLOPs x{attrs['paper_tflops_ratio']:.3f}, prefill x{attrs['prefill_ratio']:.3f}, "
                f"{'feasible' if attrs['feasible'] else 'over budget'}")
        else:
            log(f"trial {trial.number}: {attrs.get('strategy')}  {trial.state.name.lower()} "
                f"after {attrs.get('evaluated_samples', 0)} samples")

    finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    remaining = settings.trials - len(study.get_trials(deepcopy=False, states=finished))
    log(f"study {name}: {len(items)} tuning samples in {len(chunks)} chunks, {max(0, remaining)} trials to run")
    if remaining > 0:
        study.optimize(objective, n_trials=remaining, timeout=settings.timeout_s, callbacks=[
            optuna.study.MaxTrialsCallback(settings.trials, states=finished), report])
    return _select_and_verify(study, settings, sessions, name, db_url, loaded, log, progress, started)


def _candidates(study: optuna.Study, settings: TuneSettings) -> list[optuna.trial.FrozenTrial]:
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    feasible = [t for t in complete if all(v <= 0 for v in t.constraints.values())]
    pool = study.best_trials if settings.multi_objective else feasible
    pool = [t for t in pool if t in feasible]
    unique: dict[str, optuna.trial.FrozenTrial] = {}
    for trial in sorted(pool, key=lambda t: (t.values[0], t.number)):
        unique.setdefault(trial.user_attrs["strategy"], trial)
    return list(unique.values())


def _select_and_verify(study, settings, sessions, name, db_url, loaded, log, progress, started) -> dict:
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    pruned = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.PRUNED,))
    result: dict = {"study": name, "trials": len(complete) + len(pruned), "complete": len(complete),
                    "pruned": len(pruned), "recommended": None, "heldout": None, "verified": [],
                    "metric": settings.metric, "max_drop": settings.max_drop, "objective": settings.objective}
    candidates = _candidates(study, settings)
    if not candidates:
        measured = [t for t in complete + pruned if "f1_drop" in t.user_attrs]
        best = min(measured, key=lambda t: t.user_attrs["f1_drop"], default=None)
        result["best_found"] = None if best is None else {
            "strategy": best.user_attrs["strategy"], "f1_drop": best.user_attrs["f1_drop"],
            "paper_tflops_ratio": best.user_attrs["paper_tflops_ratio"],
            "evaluated_samples": best.user_attrs.get("evaluated_samples"), "state": best.state.name.lower()}
        result["message"] = "no schedule meets the budget on the tuning split"
        log(result["message"] + (f"; the best found: {result['best_found']}" if best else ""))
    for trial in candidates[: settings.max_verifications]:
        strategy = trial.user_attrs["strategy"]
        log(f"verifying trial {trial.number} on the held-out split: {strategy}")
        report = execute(settings.run_settings(["baseline", strategy], "heldout"), db_url=db_url,
                         name=f"{name}-verify-{trial.number}", progress=progress, log=log, loaded=loaded)
        base, arm = report["arms"][0], report["arms"][1]
        verdict = budget_verdict(arm["vs_baseline"], METRICS[settings.metric], settings.max_drop)
        heldout = {"run_id": report["run_id"], "strategy": strategy, "trial": trial.number,
                   "baseline_f1_macro": base["f1_macro"], "f1_macro": arm["f1_macro"],
                   "f1_drop": -arm["vs_baseline"]["f1_delta"], "f1_drop_ci_high": -arm["vs_baseline"]["f1_delta_ci"][0],
                   "accuracy_drop": -arm["vs_baseline"]["accuracy_delta"],
                   "paper_tflops_ratio": arm["vs_baseline"]["paper_tflops_ratio"],
                   "prefill_ratio": arm["vs_baseline"]["prefill_ratio"], "verdict": verdict}
        result["verified"].append(heldout)
        if verdict["met_with_confidence"]:
            result["recommended"], result["heldout"] = strategy, heldout
            break
        log(f"trial {trial.number} does not hold on held-out data (drop {verdict['drop']:+.3f}, upper end "
            f"{verdict['drop_ci_high']:+.3f} > {settings.max_drop}); next candidate")
    if candidates and result["recommended"] is None:
        result["message"] = (f"none of the {len(result['verified'])} cheapest feasible schedules held the budget "
                             "with confidence on held-out data")
        result["heldout"] = result["verified"][0] if result["verified"] else None
    with sessions() as session:
        row = session.scalar(select(db.TuningStudy).where(db.TuningStudy.name == name))
        row.recommended_strategy = result["recommended"]
        row.verification_run_id = result["heldout"]["run_id"] if result["heldout"] else None
        session.commit()
    result["wall_s"] = round(time.time() - started, 1)
    if result["recommended"]:
        result["how_to_run"] = (f"pilot run --model {settings.model} "
                                + (f"--dataset {settings.dataset} " if settings.dataset else "")
                                + f"--arm baseline --arm '{result['recommended']}'")
    return result


def _link_study(sessions, name: str, settings: TuneSettings, baseline_run_id: int) -> None:
    with sessions() as session:
        row, _ = get_or_create(session, db.TuningStudy, name=name,
                               defaults={"optuna_study_name": name, "settings": asdict(settings),
                                         "baseline_run_id": baseline_run_id})
        session.commit()
