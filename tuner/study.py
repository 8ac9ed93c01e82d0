"""The budget tuner: the cheapest TransPrune schedule that stays within an accuracy budget.

1. Split the dataset (stratified, seeded) into a tuning part and a held-out part.
2. Baseline answers on the tuning part: one pilot run, computed once, shared by every trial and
   every worker (it is stored; a second worker joins it).
3. An Optuna study in the same database: each trial draws a schedule, replays the tuning part
   (vision tower and projector outputs cached per batch), reports after each chunk the lower
   end of its drop's 95% interval (``BudgetPruner`` stops hopeless trials), and ends with the
   constraint ``drop - max_drop <= 0`` set through ``trial.set_constraint``. The first trials are known-good
   points (``tuner.space.warm_start_points``: the paper's schedule shape at final keep ratios 0.5, 0.25 and
   0.125, in each position mode the model's family allows); the space draws the final keep ratio directly, so
   TPE moves along the compute axis with one parameter.
4. Honest selection (``tuner.select``): the feasible trials on the frontier of (compute, upper end of the
   tuning-split interval) are verified on the held-out part by the pilot runner against baseline, in an order
   fixed on the tuning split (safest first, then cheaper), each with the report's rule (the upper end of the
   drop's 95% interval within the budget); the sequence stops at the first that fails and the last that held is
   recommended. A fixed-sequence test: the chance of recommending a schedule whose true drop breaks the budget
   stays at most 2.5%. Every verification run is stored, with how many more samples its verdict would need.
5. Latency is measured paired (``TrialEvaluator.run_paired``): the baseline and the trial timed back to back on
   the same cached batches, so that load from other processes moves both alike.
"""

from __future__ import annotations

import hashlib
import json
import shlex
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

import optuna
import torch
from sqlalchemy import select, update

from pilot.generation import PreparedBatch, outcomes_from_rows, prepare_batch, run_arm_batch
from pilot.metrics import SCORE_METRICS, VS_BASELINE_METRICS, budget_verdict, compare, metric_drop
from pilot.models import LoadedModel, load
from pilot.plan import plan_comparison, plan_sentence
from pilot.progress import duration_text
from pilot.runner import (
    DEFAULT_BATCH_SIZE,
    RunSettings,
    execute,
    load_dataset,
    select_items,
    stop_signals_interrupt,
)
from pilot.store import get_or_create, normalise_url, open_store, schema_lock, with_retries
from pilot.store import models as db
from pilot.summaries import outcomes
from pilot.workers import resolve_device
from tuner.pruner import BudgetPruner
from tuner.select import RULE, Candidate, fixed_sequence, verification_order
from tuner.space import suggest, warm_start_points

# The tuner's metric name -> pilot.metrics' name: label KPIs, open-ended scores, and label-free similarity.
METRICS = {"f1_macro": "f1", "accuracy": "accuracy", "agreement": "agreement",
           **{metric: metric for metric in (*SCORE_METRICS, *VS_BASELINE_METRICS)}}
# The trial attribute holding each metric's drop on the tuning split (agreement: the share of changed answers).
DROP_ATTRS = {name: f"{key}_drop" for name, key in METRICS.items()}
# Budgets that need no reference: the answers are compared with the baseline's.
LABEL_FREE = ("agreement", *VS_BASELINE_METRICS)
DROP_NAMES = {"f1_macro": "F1", "agreement": "answers changed"}
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
    batch_size: int = DEFAULT_BATCH_SIZE
    max_new_tokens: int | None = None  # None: each task's default (pilot.generation.TASK_MAX_NEW_TOKENS)
    device: str = "cpu"
    dtype: str = "float32"
    chunks: int = 4  # reports per trial (early pruning points)
    max_verifications: int = 3
    cache_features: bool = True
    limit: int | None = None
    no_labels: bool = False  # ignore the manifest's labels (then metric "agreement")
    warm_start: bool = True  # first trials: the paper's shape at several final keep ratios (tuner.space)
    # The dataset's task and Hugging Face columns (pilot.runner.RunSettings); None: the dataset's own.
    task: str | None = None
    image_column: str | None = None
    question_column: str | None = None
    answer_column: str | None = None
    dataset_split: str | None = None
    id_column: str | None = None

    def validate(self) -> None:
        if self.metric not in METRICS:
            raise ValueError(f"metric {self.metric!r}: use one of {', '.join(METRICS)}")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective {self.objective!r}: use one of {', '.join(OBJECTIVES)}")
        if not -1 < self.max_drop < 1:
            raise ValueError(f"max_drop {self.max_drop}: a drop in metric units, e.g. 0.01 for one point")
        if self.trials < 1:
            raise ValueError("trials must be >= 1")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"--limit {self.limit}: give a number of samples >= 1, or leave --limit out for all")
        if self.no_labels and self.metric not in LABEL_FREE:
            raise ValueError(f"without labels the budget compares answers with the baseline's: use --metric "
                             f"{' or '.join(LABEL_FREE)}, not {self.metric}")

    def study_name(self) -> str:
        if self.study:
            return self.study
        fixed = {k: v for k, v in asdict(self).items() if k not in ("trials", "timeout_s", "max_verifications")}
        if not fixed.get("no_labels"):  # added later: studies named before it keep their name
            fixed.pop("no_labels", None)
        if fixed.get("warm_start"):  # likewise (the default)
            fixed.pop("warm_start", None)
        for later in ("task", "image_column", "question_column", "answer_column", "dataset_split", "id_column"):
            if fixed.get(later) is None:  # added later still
                fixed.pop(later, None)
        if fixed.get("max_new_tokens") is None:  # the per-task default: studies before it stored 4
            fixed["max_new_tokens"] = 4
        return "tune-" + hashlib.sha256(json.dumps(fixed, sort_keys=True).encode()).hexdigest()[:10]

    def run_settings(self, arms: list[str], split: str) -> RunSettings:
        return RunSettings(model=self.model, dataset=self.dataset, arms=arms, limit=self.limit,
                           batch_size=self.batch_size, device=self.device, dtype=self.dtype,
                           max_new_tokens=self.max_new_tokens, labels=self.labels,
                           prompt_template=self.prompt_template, split=split,
                           split_fraction=self.heldout_fraction, split_seed=self.split_seed,
                           no_labels=self.no_labels, task=self.task, image_column=self.image_column,
                           question_column=self.question_column, answer_column=self.answer_column,
                           dataset_split=self.dataset_split, id_column=self.id_column)

    def run_command(self, arms: list[str]) -> str:
        """The ``pilot run`` line that replays ``arms`` on this study's data as the study read it: the same task,
        split, columns, labels and settings, so that pasted as printed it scores what the study scored."""
        flags: list[tuple[str, object]] = [
            ("--model", self.model), ("--dataset", self.dataset), ("--task", self.task),
            ("--split", self.dataset_split), ("--image-column", self.image_column),
            ("--question-column", self.question_column), ("--answer-column", self.answer_column),
            ("--id-column", self.id_column), ("--labels", ",".join(self.labels) if self.labels else None),
            ("--prompt-template", self.prompt_template), ("--max-new-tokens", self.max_new_tokens),
            ("--batch-size", self.batch_size if self.batch_size != DEFAULT_BATCH_SIZE else None),
            ("--device", self.device if self.device != "cpu" else None),
            ("--dtype", self.dtype if self.dtype != "float32" else None),
        ]
        words = ["pilot", "run"]
        for flag, value in flags:
            if value is not None:
                words += [flag, str(value)]
        if self.no_labels:
            words.append("--no-labels")
        for arm in arms:
            words += ["--arm", arm]
        return shlex.join(words)


class TrialEvaluator:
    """Replays the tuning part for one strategy, reusing cached vision features per batch.

    Latency is measured paired (``run_paired``): on each timed batch the baseline and the trial run back to back on
    the same cached inputs (which goes first alternates from batch to batch), and the trial's prefill ratio is the
    median over those batches of trial / baseline. Load from other processes that comes and goes during a study
    then moves both sides of every ratio alike; a baseline timed once at the start (as before) made trials run
    under later load look 5-6x slower than baseline. ``run_batch`` (default ``pilot.generation.run_arm_batch``) is
    injectable for tests.
    """

    def __init__(self, loaded: LoadedModel, batches: list[PreparedBatch], labels, max_new_tokens: int,
                 device: torch.device, cache_features: bool, run_batch: Callable[..., list[dict]] | None = None):
        self.loaded = loaded
        self.labels = list(labels)
        self.max_new_tokens = max_new_tokens
        self.device = device
        self.run_batch = run_batch
        self._timed = 0  # timed pairs so far: which side goes first alternates
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

    def warm_up(self) -> None:
        """An untimed pass of the baseline and of a pruned schedule on the first batch: without it the first trial
        paid the pruning path's first-use costs (prefill x2.2 where later trials got x0.4-0.8)."""
        first = [b for b in self.batches if b.items][:1]
        for strategy in ("baseline", "transprune"):
            self.run(strategy, first)

    def _batch(self, strategy: str, prepared: PreparedBatch) -> list[dict]:
        run_batch = self.run_batch or run_arm_batch  # looked up per call: tests patch the module's name
        return run_batch(self.loaded, strategy, prepared, self.labels, self.max_new_tokens, self.device)

    def run(self, strategy: str, batches: list[PreparedBatch]) -> list[dict]:
        rows: list[dict] = []
        for prepared in batches:
            if prepared.items:
                rows += self._batch(strategy, prepared)
        return rows

    def run_paired(self, strategy: str, batches: list[PreparedBatch], every: int = 1
                   ) -> tuple[list[dict], list[dict]]:
        """The trial's rows on ``batches``, and per timed batch (every ``every``-th, from the first) the trial's and
        the baseline's per-sample prefill and total ms, measured back to back on the same inputs."""
        rows: list[dict] = []
        pairs: list[dict] = []
        for index, prepared in enumerate(b for b in batches if b.items):
            if index % max(1, every):
                rows += self._batch(strategy, prepared)
                continue
            self._timed += 1
            if self._timed % 2:
                baseline = self._batch("baseline", prepared)
                trial = self._batch(strategy, prepared)
            else:
                trial = self._batch(strategy, prepared)
                baseline = self._batch("baseline", prepared)
            rows += trial
            pairs.append({key: (_batch_ms(trial, key), _batch_ms(baseline, key)) for key in ("prefill_ms", "total_ms")})
        return rows, pairs


def _batch_ms(rows: list[dict], key: str) -> float | None:
    values = [r[key] for r in rows if r.get(key) is not None]
    return sum(values) / len(values) if values else None


def paired_ratio(pairs: list[dict], key: str = "prefill_ms") -> float | None:
    """Median over timed batches of trial / baseline for ``key`` (batches timed back to back)."""
    ratios = sorted(t / b for t, b in (p[key] for p in pairs) if t is not None and b)
    if not ratios:
        return None
    mid = len(ratios) // 2
    return ratios[mid] if len(ratios) % 2 else (ratios[mid - 1] + ratios[mid]) / 2


def _drop(comparison: dict, metric: str) -> tuple[float | None, float | None, float | None]:
    """(drop, low end, high end) of the metric's drop: drop = baseline - pruned (agreement: changed answers)."""
    return metric_drop(comparison, METRICS[metric])


def _neg(value: float | None) -> float | None:
    return None if value is None else -value + 0.0


def _drops(comparison: dict) -> dict:
    """Every metric's drop, as trials store them (None where the samples give none, e.g. without labels)."""
    return {attr: metric_drop(comparison, METRICS[name])[0] for name, attr in DROP_ATTRS.items()}


def tune(settings: TuneSettings, *, db_url: str | None = None, log: Callable[[str], None] | None = None,
         progress: bool = True, verbose: bool = False) -> dict:
    """Run (or resume) the study, then verify candidates on held-out data. Returns the result dict.

    Optuna's own per-trial INFO lines are off unless ``verbose`` (our ``log`` lines say the same, shorter). SIGTERM
    stops it as Ctrl-C does (``pilot.runner.Terminated``): the trial in progress is failed, a rerun resumes."""
    log = log or (lambda message: print(message, file=sys.stderr))
    settings.validate()
    previous = optuna.logging.get_verbosity()
    if not verbose:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        with stop_signals_interrupt():
            return _tune(settings, db_url, log, progress)
    finally:
        optuna.logging.set_verbosity(previous)


def _tune(settings: TuneSettings, db_url: str | None, log: Callable[[str], None], progress: bool) -> dict:
    started = time.time()
    sessions = open_store(db_url)
    url = normalise_url(db_url)
    name = settings.study_name()
    device = resolve_device(settings.device)  # cuda:LOCAL_RANK under a launcher; one line naming --device
    loaded = load(settings.model, device=device, dtype=getattr(torch, settings.dtype))
    dataset = load_dataset(settings.run_settings(["baseline"], "tune"))
    if settings.metric in ("f1_macro", "accuracy") and not dataset.labelled:
        raise ValueError(f"{dataset.manifest} has no labels: the budget can only be on changed answers "
                         "(--metric agreement --max-drop 0.02: at most 2% of answers change; open-ended answers: "
                         "--metric anls_vs_baseline)")
    if settings.metric in SCORE_METRICS and not dataset.referenced:
        raise ValueError(f"{dataset.manifest} has no reference answers for --metric {settings.metric}: budget on "
                         "the answers' similarity to the baseline's instead (--metric anls_vs_baseline)")

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
    evaluator.warm_up()
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
    position_modes = loaded.adapter.position_modes  # M-RoPE families: original positions only
    if settings.warm_start and settings.mode == "ratio":
        # Known-good points first: the paper's shape at several final keep ratios, in each position mode. Skipped
        # when a trial with the same parameters exists (a rerun, or another worker that enqueued them already).
        for params in warm_start_points(loaded.depth, position_modes):
            study.enqueue_trial(params, skip_if_exists=True)

    def objective(trial: optuna.Trial):
        strategy = str(suggest(trial, loaded.depth, settings.mode, position_modes=position_modes))
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
        pairs: list[dict] = []
        for step, chunk in enumerate(chunks):
            # Latency objective: every batch timed against the baseline; else the first batch of each chunk.
            chunk_rows, chunk_pairs = evaluator.run_paired(strategy, chunk,
                                                           every=1 if settings.objective == "latency" else len(chunk))
            rows += chunk_rows
            pairs += chunk_pairs
            trial.set_user_attr("evaluated_samples", len(rows))
            if step < len(chunks) - 1:
                done = {r["sample_id"] for r in rows}
                partial = compare([baseline[i] for i in done], outcomes_from_rows(rows), dataset.labels,
                                  resamples=300, seed=settings.seed)
                _, low, _ = _drop(partial, settings.metric)
                if low is None:  # no labelled sample yet: nothing to judge by
                    continue
                trial.report(low, step)
                if trial.should_prune():
                    trial.set_user_attr("feasible", False)
                    for key, value in _drops(partial).items():  # on the samples seen so far
                        trial.set_user_attr(key, value)
                    trial.set_user_attr("paper_tflops_ratio", partial["paper_tflops_ratio"])
                    raise optuna.TrialPruned(f"drop's lower bound {low:.3f} > budget {settings.max_drop}")
        comparison = compare(list(baseline.values()), outcomes_from_rows(rows), dataset.labels, resamples=1000,
                             seed=settings.seed)
        drop, _, high = _drop(comparison, settings.metric)
        prefill_ratio = paired_ratio(pairs, "prefill_ms")
        compute = comparison["paper_tflops_ratio"] if settings.objective == "tflops" else prefill_ratio
        if drop is None:
            raise ValueError(f"no {settings.metric} on the tuning split (no sample has what it needs: a label, a "
                             "reference, an open-ended answer): use --metric agreement")
        attrs = {**_drops(comparison), "drop_ci_high": high, "paper_tflops_ratio": comparison["paper_tflops_ratio"],
                 "prefill_ratio": prefill_ratio, "total_ratio": paired_ratio(pairs, "total_ms"),
                 "timed_batches": len(pairs), "feasible": drop <= settings.max_drop + 1e-9,
                 "mean_visual_tokens_kept": sum(r["visual_tokens_kept"] for r in rows) / len(rows)}
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
        trial.set_constraint("drop_over_budget", drop - settings.max_drop)
        return (compute, drop) if settings.multi_objective else compute

    drop_attr = DROP_ATTRS[settings.metric]
    drop_name = DROP_NAMES.get(settings.metric, settings.metric.replace("_", " "))

    ran = [0]  # trials this invocation ran: the progress part of each trial's line (ETA from their pace)

    def progress_text() -> str:
        ran[0] += 1
        elapsed = time.time() - searching
        left = max(0, remaining - ran[0])
        eta = f", ETA {duration_text(elapsed / ran[0] * left)}" if left else ""
        return f"[{ran[0]}/{remaining}{eta}] "

    def report(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        attrs = trial.user_attrs
        where = progress_text() if progress else ""
        if trial.state == optuna.trial.TrialState.COMPLETE:
            prefill = attrs.get("prefill_ratio")
            log(f"{where}trial {trial.number}: {attrs['strategy']}  drop {attrs[drop_attr]:+.3f} ({drop_name}), "
                f"TFLOPs x{attrs['paper_tflops_ratio']:.3f}, prefill "
                f"{'-' if prefill is None else f'x{prefill:.3f}'} (paired with baseline), "
                f"{'feasible' if attrs['feasible'] else 'over budget'}")
        else:
            log(f"{where}trial {trial.number}: {attrs.get('strategy')}  {trial.state.name.lower()} "
                f"after {attrs.get('evaluated_samples', 0)} samples")

    finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    remaining = settings.trials - len(study.get_trials(deepcopy=False, states=finished))
    log(f"study {name}: {len(items)} tuning samples in {len(chunks)} chunks, {max(0, remaining)} trials to run")
    searching = time.time()
    if remaining > 0:
        study.optimize(objective, n_trials=remaining, timeout=settings.timeout_s, callbacks=[
            optuna.study.MaxTrialsCallback(settings.trials, states=finished), report])
    timing = {"setup_s": round(searching - started, 1), "search_s": round(time.time() - searching, 1)}
    result = _select_and_verify(study, settings, sessions, name, db_url, loaded, log, progress, started)
    return {**result, **timing}


def _candidates(study: optuna.Study, settings: TuneSettings) -> list[Candidate]:
    """The trials feasible on the tuning split (on the Pareto front too, with ``multi_objective``)."""
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    feasible = [t for t in complete if all(v <= 0 for v in t.constraints.values())]
    pool = study.best_trials if settings.multi_objective else feasible
    numbers = {t.number for t in feasible}
    return [Candidate(number=t.number, strategy=t.user_attrs["strategy"], compute=t.values[0],
                      drop=t.user_attrs[DROP_ATTRS[settings.metric]],
                      drop_ci_high=t.user_attrs.get("drop_ci_high"))
            for t in pool if t.number in numbers]


def _select_and_verify(study, settings, sessions, name, db_url, loaded, log, progress, started) -> dict:
    """Verify candidates on the held-out split in a fixed order, recommending the last that holds
    (``tuner.select``: the order is set on the tuning split; familywise error <= 2.5%)."""
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    pruned = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.PRUNED,))
    candidates = _candidates(study, settings)
    order = _fixed_order(study, settings, sessions, name, candidates, len(complete) + len(pruned))
    result: dict = {"study": name, "trials": len(complete) + len(pruned), "complete": len(complete),
                    "pruned": len(pruned), "feasible": len(candidates), "recommended": None, "heldout": None,
                    "verified": [], "metric": settings.metric, "max_drop": settings.max_drop,
                    "objective": settings.objective, "error_control": RULE,
                    "verification_order": [c.number for c in order]}
    if not candidates:
        drop_attr = DROP_ATTRS[settings.metric]
        measured = [t for t in complete + pruned if t.user_attrs.get(drop_attr) is not None]
        best = min(measured, key=lambda t: t.user_attrs[drop_attr], default=None)
        result["best_found"] = None if best is None else {
            "strategy": best.user_attrs["strategy"], "drop": best.user_attrs[drop_attr],
            "f1_drop": best.user_attrs.get("f1_drop"),
            "paper_tflops_ratio": best.user_attrs["paper_tflops_ratio"],
            "evaluated_samples": best.user_attrs.get("evaluated_samples"), "state": best.state.name.lower()}
        result["message"] = "no schedule meets the budget on the tuning split"
        log(result["message"] + (f"; the best found: {result['best_found']}" if best else ""))
    elif order:
        log(f"verifying up to {len(order)} candidate(s) on the held-out split, safest first (trials "
            f"{', '.join(str(c.number) for c in order)}), stopping at the first that fails")
    key = METRICS[settings.metric]

    def verify(cand: Candidate) -> dict:
        log(f"verifying trial {cand.number} on the held-out split: {cand.strategy} (tuning drop {cand.drop:+.3f}, "
            f"upper end {cand.upper:+.3f})")
        report = execute(settings.run_settings(["baseline", cand.strategy], "heldout"), db_url=db_url,
                         name=f"{name}-verify-{cand.number}", progress=progress, log=log, loaded=loaded)
        base, arm = report["arms"][0], report["arms"][1]
        vs = arm["vs_baseline"]
        verdict = budget_verdict(vs, key, settings.max_drop)
        plan = plan_comparison(vs, settings.max_drop, key)
        result["verified"].append({
            "run_id": report["run_id"], "strategy": cand.strategy, "trial": cand.number,
            "baseline_f1_macro": base["f1_macro"], "f1_macro": arm["f1_macro"], **_drops(vs),
            "f1_drop_ci_high": metric_drop(vs, "f1")[2], "agreement": vs["agreement"],
            "agreement_ci": vs["agreement_ci"], "n_paired": vs["n_paired"], "n_labelled": vs["n_labelled"],
            "paper_tflops_ratio": vs["paper_tflops_ratio"], "prefill_ratio": vs["prefill_ratio"],
            "verdict": verdict, "plan": plan, "plan_text": plan_sentence(plan)})
        if not verdict["met_with_confidence"]:
            log(f"trial {cand.number} does not hold on held-out data (drop {verdict['drop']:+.3f}, upper end "
                f"{verdict['drop_ci_high']:+.3f} > {settings.max_drop}): the sequence stops here")
        return verdict

    recommended, _ = fixed_sequence(order, verify)
    if recommended is not None:
        result["recommended"] = recommended.strategy
        result["heldout"] = next(v for v in result["verified"] if v["trial"] == recommended.number)
    elif candidates:
        result["message"] = (f"the safest of the {len(order)} candidates in the fixed order (trial {order[0].number}) "
                             "did not hold the budget with confidence on held-out data" if order else
                             "no candidate was verified (max_verifications is 0)")
        result["heldout"] = result["verified"][0] if result["verified"] else None
        plans = [v for v in result["verified"] if v["plan"]["more_needed"]]
        if plans:
            best = min(plans, key=lambda v: v["plan"]["more_needed"])
            verb = "run about" if key == "agreement" else "label about"
            result["next_step"] = (f"{verb} {best['plan']['more_needed']:,} more images for the held-out check "
                                   f"of {best['strategy']}: {best['plan_text']}")
        elif result["verified"]:
            result["next_step"] = (f"{result['verified'][0]['plan_text']} Loosen the budget or search longer "
                                   "(`pilot tune --trials N` resumes the study).")
    with sessions() as session:
        row = session.scalar(select(db.TuningStudy).where(db.TuningStudy.name == name))
        row.recommended_strategy = result["recommended"]
        row.verification_run_id = result["heldout"]["run_id"] if result["heldout"] else None
        session.commit()
    result["wall_s"] = round(time.time() - started, 1)
    if result["recommended"]:
        result["how_to_run"] = settings.run_command(["baseline", result["recommended"]])
    return result


def _fixed_order(study, settings: TuneSettings, sessions, name: str, candidates: list[Candidate],
                 finished: int) -> list[Candidate]:
    """The held-out verification order, fixed once per study and trial target.

    Workers of one study finish their trials at different moments and could each pick another sequence; the first
    to get here writes its order (under the study row's lock), the others verify that same sequence, so each
    verification run is computed once, its batches shared among the workers like any run's. A worker stopped
    before the target (``--timeout``) verifies its own selection and fixes nothing.
    """
    order = verification_order(candidates, settings.max_drop, settings.max_verifications)
    if finished < settings.trials:
        return order

    def unit() -> list[int] | None:
        with sessions() as session:
            # Writing first locks the row on PostgreSQL and the database on SQLite: one worker at a time.
            session.execute(update(db.TuningStudy).where(db.TuningStudy.name == name)
                            .values(name=db.TuningStudy.name))
            row = session.scalars(select(db.TuningStudy).where(db.TuningStudy.name == name)).one()
            fixed = row.verification_order
            if fixed and fixed.get("trials") == settings.trials:
                session.rollback()
                return list(fixed["order"])
            row.verification_order = {"trials": settings.trials, "order": [c.number for c in order]}
            session.commit()
            return None

    numbers = with_retries(unit)
    if numbers is None:
        return order
    # Every feasible trial (a multi-objective front may have moved since): the fixed numbers are among them.
    feasible = {c.number: c for c in _candidates(study, replace(settings, multi_objective=False))}
    return [feasible[number] for number in numbers if number in feasible]


def _link_study(sessions, name: str, settings: TuneSettings, baseline_run_id: int) -> None:
    with sessions() as session:
        row, _ = get_or_create(session, db.TuningStudy, name=name,
                               defaults={"optuna_study_name": name, "settings": asdict(settings),
                                         "baseline_run_id": baseline_run_id})
        session.commit()
