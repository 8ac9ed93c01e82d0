"""The ``pilot`` command. Each subcommand parses its flags here and calls the module that does the work.

Light on purpose: this module imports no torch, transformers or datasets, and each command imports what it needs
when it runs, so that ``pilot report``, ``plan``, ``runs``, ``db``, ``--help`` and a mistyped command answer in a
fraction of a second (``tests/test_console.py`` holds them to it).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

# Budget metrics: label KPIs, open-ended scores against references, and label-free similarity to the baseline.
METRIC_CHOICES = ["f1", "f1_macro", "accuracy", "agreement", "exact_match", "anls", "token_f1", "relaxed_accuracy",
                  "relaxed_accuracy_lenient", "field_f1", "field_precision", "field_recall", "anls_vs_baseline",
                  "token_f1_vs_baseline"]
DEFAULT_BATCH_SIZE = 8  # pilot.runner.DEFAULT_BATCH_SIZE, here without importing the runner (it imports torch)
FAMILIES = ("LLaVA-1.5, LLaVA-NeXT, LLaVA-OneVision, Qwen2.5-VL, Qwen3-VL (and MoE), Gemma 3, InternVL, "
            "Mistral 3 / Pixtral, SmolVLM, Idefics3")
DESCRIPTION = ("Pilot TransPrune (training-free visual-token pruning inside the language model) on your own images "
               "and vision-language model: A/B replay of the baseline and pruned arms with confidence intervals, "
               "a tuner for the cheapest schedule within an accuracy budget, a dashboard and an OpenAI-compatible "
               f"server. Model families: {FAMILIES}.")
METRIC_HELP = ("the budget's metric: f1/accuracy (labels), anls, exact_match, token_f1, relaxed_accuracy, "
               "relaxed_accuracy_lenient, field_f1 "
               "(open-ended answers against references), agreement or anls_vs_baseline / token_f1_vs_baseline "
               "(label-free: answers compared with the baseline's)")


def _dataset_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--task", choices=["label", "text", "json"],
                        help="every row's task (default: the manifest's task column, else label; a label task "
                             "refuses an answer/answers column unless --task label is given)")
    parser.add_argument("--image-column", help="Hugging Face dataset: the image column (default image)")
    parser.add_argument("--question-column", help="Hugging Face dataset: the question column (default question)")
    parser.add_argument("--answer-column", help="Hugging Face dataset: the reference answers (default answer)")
    parser.add_argument("--split", help="Hugging Face dataset: the split to read (e.g. test)")
    parser.add_argument("--id-column", help="the column of the sample ids, e.g. questionId (default: id if there is "
                                            "one, else the row index; a manifest's: the image path)")
    parser.add_argument("--batch-size", type=int,  # None: a study file's, else DEFAULT_BATCH_SIZE
                        help=f"samples per batch (default {DEFAULT_BATCH_SIZE}, in run and tune alike)")


def _flops(args: argparse.Namespace) -> int:
    from pilot.pruning.flops import default_visual_tokens, estimate, load_dims

    dims = load_dims(args.model_config)
    # Without --visual-tokens: one typical image of the family (LLaVA 576, LLaVA-NeXT 2880, Qwen 1024).
    visual_tokens = args.visual_tokens if args.visual_tokens is not None else default_visual_tokens(dims)
    result = estimate(dims, visual_tokens, args.strategy, args.text_tokens, args.instruction_tokens)
    if args.json:
        print(json.dumps(result))
        return 0
    tower = "vision tower, patch merger" if dims.dynamic_resolution else "vision tower, projector"
    print(f"strategy              {result['strategy']}")
    print(f"visual tokens         {visual_tokens} (per layer: {result['visual_tokens_per_layer']})")
    print(f"paper TFLOPs          {result['baseline_tflops']:.2f} -> {result['pruned_tflops']:.2f} "
          f"({result['pruned_tflops'] / result['baseline_tflops']:.1%}; Eq. 7, visual tokens only)")
    print(f"full prefill TFLOPs   {result['full_baseline_tflops']:.2f} -> {result['full_pruned_tflops']:.2f} "
          f"({result['full_pruned_tflops'] / result['full_baseline_tflops']:.1%}; "
          f"{args.text_tokens} text tokens, {tower}, LM head)")
    return 0


def _run(args: argparse.Namespace) -> int:
    from pilot.report import format_report
    from pilot.runner import RunSettings, execute

    data: dict = {}
    if args.study:
        import yaml

        try:
            data = yaml.safe_load(Path(args.study).read_text()) or {}
        except (OSError, yaml.YAMLError) as error:
            raise ValueError(f"study file {args.study}: {error}") from None
        if not isinstance(data, dict):
            raise ValueError(f"study file {args.study}: expected a mapping of settings")
    name = args.name or data.pop("name", None)
    overrides = {"model": args.model, "dataset": args.dataset, "arms": args.arm, "limit": args.limit,
                 "batch_size": args.batch_size, "device": args.device, "dtype": args.dtype,
                 "max_new_tokens": args.max_new_tokens,
                 "labels": args.labels.split(",") if args.labels else None, "prompt_template": args.prompt_template,
                 "no_labels": args.no_labels or None, "controls": args.controls, "task": args.task,
                 "image_column": args.image_column, "question_column": args.question_column,
                 "answer_column": args.answer_column, "dataset_split": args.split, "id_column": args.id_column}
    data.update({key: value for key, value in overrides.items() if value is not None})
    settings = RunSettings.from_dict(data, args.study or "flags")
    try:
        # Progress on stderr: a bar on a terminal, else a line every 30 s (nohup, Slurm, CI logs).
        report = execute(settings, db_url=args.db, name=name, resume=args.resume, progress=True)
    except KeyboardInterrupt as interrupt:  # Ctrl-C, or SIGTERM (pilot.runner.Terminated): the shell's codes
        return 128 + getattr(interrupt, "signum", 2)
    print(json.dumps(report) if args.json else format_report(report))
    return 0


def _report(args: argparse.Namespace) -> int:
    from pilot.report import format_report
    from pilot.store import open_store
    from pilot.summaries import build_report, find_run

    sessions = open_store(args.db)
    with sessions() as session:
        report = build_report(session, find_run(session, args.run).id)
    if args.json:  # the verdict and plan for --metric / --max-drop, as the text report's closing table has them
        from pilot.report import budget_verdicts

        print(json.dumps({**report, "verdicts": budget_verdicts(report, args.max_drop, args.metric)}))
        return 0
    print(format_report(report, args.max_drop, args.metric))
    return 0


def _plan(args: argparse.Namespace) -> int:
    from pilot.plan import plan_report, plan_rows, plan_sentence
    from pilot.report import format_plan
    from pilot.store import open_store
    from pilot.summaries import build_report, find_run

    sessions = open_store(args.db)
    with sessions() as session:
        report = build_report(session, find_run(session, args.run).id)
    from pilot.report import budget_metric

    metric = budget_metric(report["arms"], args.metric)
    if metric != args.metric:  # a run without labels: the drop it has instead
        print(f"run {report['run_id']} has no labels: budget on --metric {metric}", file=sys.stderr)
    plans = plan_report(report, args.max_drop, metric)
    if args.json:
        print(json.dumps(plan_rows(plans)))
        return 0
    print(f"Run {report['run_id']}: {report['name']}")
    print("\n".join(format_plan(plans, args.max_drop, metric)) if plans else "(no pruned arm)")
    for plan in plans:
        print(f"\n{plan['strategy']}: {plan_sentence(plan)}")
    return 0


def _runs(args: argparse.Namespace) -> int:
    from pilot.store import open_store
    from pilot.summaries import list_runs

    sessions = open_store(args.db)
    with sessions() as session:
        runs = list_runs(session)
    if args.json:
        print(json.dumps(runs))
        return 0
    print(f"{'run':>4}  {'status':<11} {'created':<20} {'name':<40} arms")
    for run in runs:
        print(f"{run['run_id']:>4}  {run['status']:<11} {run['created_at'][:19]:<20} {run['name']:<40} "
              f"{', '.join(run['arms'])}")
    return 0


def _db_upgrade(args: argparse.Namespace) -> int:
    from pilot.store import current_revision, normalise_url, upgrade

    upgrade(args.db)
    print(f"{normalise_url(args.db)}: at revision {current_revision(args.db)}")
    return 0


def _demo_data(args: argparse.Namespace) -> int:
    from pilot.data.synthetic import write_dataset

    print(write_dataset(args.out, args.n, args.seed, progress=True))
    return 0


def _tune(args: argparse.Namespace) -> int:
    from tuner.study import TuneSettings, tune

    settings = TuneSettings(
        model=args.model or "demo", dataset=args.dataset, labels=args.labels.split(",") if args.labels else None,
        metric=args.metric, max_drop=args.max_drop, objective=args.objective, mode=args.mode,
        multi_objective=args.multi_objective, trials=args.trials, timeout_s=args.timeout, study=args.study,
        seed=args.seed, heldout_fraction=args.heldout_fraction, device=args.device,
        batch_size=DEFAULT_BATCH_SIZE if args.batch_size is None else args.batch_size,
        dtype=args.dtype, limit=args.limit, max_new_tokens=args.max_new_tokens, no_labels=args.no_labels,
        task=args.task, image_column=args.image_column, question_column=args.question_column,
        answer_column=args.answer_column, dataset_split=args.split, id_column=args.id_column,
        prompt_template=args.prompt_template,
    )
    try:
        result = tune(settings, db_url=args.db, progress=True, verbose=args.verbose)
    except KeyboardInterrupt as interrupt:  # Ctrl-C or SIGTERM: a rerun resumes the study
        print(f"pilot tune: stopped ({interrupt or 'Ctrl-C'}); rerun the same command to resume the study",
              file=sys.stderr)
        return 128 + getattr(interrupt, "signum", 2)
    if args.json:
        print(json.dumps(result))
        return 0
    from tuner.select import format_summary

    print(format_summary(result))
    return 0


def _dashboard(args: argparse.Namespace) -> int:
    from dashboard.launch import launch

    return launch(args.db, port=args.port, host=args.host)


def _demo(args: argparse.Namespace) -> int:
    from pilot.demo import run_demo

    return run_demo(args.db, limit=args.limit, trials=args.trials)


def serve_settings(args: argparse.Namespace):
    """`pilot serve`'s settings from its flags, by field name: every setting has a flag of its own name
    (tests/test_serve_flags.py checks it), so there is no copy by hand that can forget one."""
    from dataclasses import fields

    from pilot.serve.settings import ServeSettings

    settings = ServeSettings(**{f.name: getattr(args, f.name) for f in fields(ServeSettings)})
    settings.allow_dirs = settings.allow_dirs or []  # --allow-dir given no time: none
    return settings


def _serve(args: argparse.Namespace) -> int:
    from pilot.serve.server import serve

    return serve(serve_settings(args))


def _review_store(args: argparse.Namespace):
    from pilot.store import open_store

    return open_store(args.db)


def _review_create(args: argparse.Namespace) -> int:
    from pilot.review.tasks import create_tasks
    from pilot.summaries import find_run

    sessions = _review_store(args)
    with sessions() as session:
        run = find_run(session, args.run)
        created = create_tasks(session, run, overlap=args.overlap, precision=args.precision, checks=args.checks,
                               arms=args.arm, seed=args.seed)
        session.commit()
    if args.json:
        print(json.dumps(created))
        return 0
    for arm, counts in created.items():
        print(f"{arm}: {counts['changed']} of {counts['pairs']} answers changed "
              f"({counts['strata']} slice{'s' if counts['strata'] != 1 else ''} by task and label); "
              f"{counts['tasks']} review tasks and {counts['checks']} check pairs added, each for {args.overlap} "
              "reviewer(s)")
    return 0


def _review_invite(args: argparse.Namespace) -> int:
    from urllib.parse import urlencode

    from pilot.review.tasks import invite
    from pilot.summaries import find_run

    sessions = _review_store(args)
    with sessions() as session:
        query = {"review": invite(session, args.name)}
        if args.run:
            query["run"] = str(find_run(session, args.run).id)
        session.commit()
    print(f"{args.base_url.rstrip('/')}/?{urlencode(query)}")
    print(f"personal link of {args.name.strip()} (shown once; `pilot review revoke {args.name.strip()}` ends it)",
          file=sys.stderr)
    return 0


def _review_revoke(args: argparse.Namespace) -> int:
    from pilot.review.tasks import revoke

    sessions = _review_store(args)
    with sessions() as session:
        revoke(session, args.name)
        session.commit()
    print(f"{args.name}: link revoked (their judgements so far are kept)")
    return 0


def _review_export(args: argparse.Namespace) -> int:
    from pilot.review.exchange import export_label_studio
    from pilot.review.tasks import dataset_items
    from pilot.summaries import find_run

    sessions = _review_store(args)
    with sessions() as session:
        run = find_run(session, args.run)
        images = {sample_id: item.image for sample_id, item in dataset_items(run).items()}
        written = export_label_studio(session, run, Path(args.output), images)
    print(f"{written['count']} Label Studio tasks in {written['tasks']}; labelling config in {written['config']}")
    return 0


def _review_import(args: argparse.Namespace) -> int:
    from pilot.review.exchange import import_judgements
    from pilot.summaries import find_run

    sessions = _review_store(args)
    with sessions() as session:
        run = find_run(session, args.run)
        result = import_judgements(session, run, Path(args.file))
        session.commit()
    for note in result.notes:
        print(note, file=sys.stderr)
    for error in result.errors:
        print(f"pilot review import: error: {error}", file=sys.stderr)
    print(f"{args.file}: {result.added + result.replaced} judgements added ({result.replaced} replace an earlier "
          f"one of the same reviewer), {result.duplicates} already stored, {len(result.errors)} rejected")
    return 2 if result.errors else 0


def _review_results(args: argparse.Namespace) -> int:
    from pilot.report import format_review
    from pilot.review import review_summary
    from pilot.summaries import find_run

    sessions = _review_store(args)
    with sessions() as session:
        summary = review_summary(session, find_run(session, args.run), args.max_worse)
    if args.json:
        print(json.dumps(summary))
        return 0
    print("\n".join(format_review(summary)) if summary else f"run {args.run}: no review tasks")
    return 0


def _review_parser(commands) -> None:
    review = commands.add_parser("review", help="blind side-by-side human review of changed answers")
    sub = review.add_subparsers(dest="review_command", required=True)
    create = sub.add_parser("create", help="blind review tasks from the run's changed (baseline, pruned) pairs")
    create.add_argument("run", help="run id or name")
    create.add_argument("--overlap", type=int, default=2, help="reviewers per task (default 2)")
    create.add_argument("--precision", type=float,
                        help="sample per pruned arm, stratified by task and label, for a 95%% interval of this "
                             "half-width on a share (0.05: 385 pairs, fewer for a small run); default: all")
    create.add_argument("--checks", type=float, default=0.1,
                        help="pairs with equal answers mixed in, as a share of the changed ones (default 0.1)")
    create.add_argument("--arm", action="append", help="only this pruned arm (repeat; default: all)")
    create.add_argument("--seed", type=int, default=0, help="seed of the sample and of the sides")
    create.add_argument("--db")
    create.add_argument("--json", action="store_true")
    create.set_defaults(func=_review_create)
    invite_parser = sub.add_parser("invite", help="a personal review link for a named reviewer")
    invite_parser.add_argument("name")
    invite_parser.add_argument("--run", help="the run the link opens (default: the latest run with review tasks)")
    invite_parser.add_argument("--base-url", default="http://127.0.0.1:8501", help="the dashboard's address")
    invite_parser.add_argument("--db")
    invite_parser.set_defaults(func=_review_invite)
    revoke_parser = sub.add_parser("revoke", help="end a reviewer's link")
    revoke_parser.add_argument("name")
    revoke_parser.add_argument("--db")
    revoke_parser.set_defaults(func=_review_revoke)
    export = sub.add_parser("export", help="the review tasks for another tool (Label Studio)")
    export.add_argument("run", help="run id or name")
    export.add_argument("--format", choices=["label-studio"], default="label-studio")
    export.add_argument("-o", "--output", required=True, help="tasks JSON file (the config goes beside it, .xml)")
    export.add_argument("--db")
    export.set_defaults(func=_review_export)
    import_parser = sub.add_parser("import", help="judgements from Label Studio's JSON export or JSON Lines")
    import_parser.add_argument("run", help="run id or name")
    import_parser.add_argument("file", help="Label Studio JSON export, or JSON Lines: task, reviewer, choice")
    import_parser.add_argument("--db")
    import_parser.set_defaults(func=_review_import)
    results = sub.add_parser("results", help="the review's results and a budget's verdict")
    results.add_argument("run", help="run id or name")
    results.add_argument("--max-worse", type=float, default=0.01,
                         help="budget: largest share of all answers that may get worse (default 0.01)")
    results.add_argument("--db")
    results.add_argument("--json", action="store_true")
    results.set_defaults(func=_review_results)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pilot", description=DESCRIPTION)
    commands = parser.add_subparsers(dest="command", required=True)

    flops = commands.add_parser("flops", help="TFLOPs of a strategy for a model config (paper and full prefill)")
    flops.add_argument("--model-config", required=True,
                       help="config.json, a checkpoint folder, or a preset: llava-1.5-7b, llava-next-7b, "
                            "qwen2.5-vl-7b, qwen3-vl-8b")
    flops.add_argument("--visual-tokens", type=int,
                       help="visual tokens of one image as the LLM gets them (Qwen: after the 2x2 merge); "
                            "default 576 for LLaVA, 2880 for LLaVA-NeXT, 1024 for Qwen")
    flops.add_argument("--strategy", default="transprune", help="strategy string, e.g. fastv:after=2,keep=0.5")
    flops.add_argument("--text-tokens", type=int, default=64, help="text tokens of the prompt (full figure)")
    flops.add_argument("--instruction-tokens", type=int, default=24, help="prompt tokens after the image")
    flops.add_argument("--json", action="store_true", help="print one JSON object")
    flops.set_defaults(func=_flops)

    run = commands.add_parser("run", help="replay a dataset through the baseline and pruned arms")
    run.add_argument("study", nargs="?", help="YAML study file with the same settings (flags override it)")
    run.add_argument("--model", help=f"local checkpoint folder of a supported family ({FAMILIES}) (default: the "
                                     "embedded demo)")
    run.add_argument("--dataset", help="manifest.csv / .jsonl, a Hugging Face dataset (save_to_disk folder, "
                                       "parquet file or folder, imagefolder with metadata.jsonl, hub id) "
                                       "(default: the demo dataset)")
    _dataset_flags(run)
    run.add_argument("--arm", action="append", help="strategy string; repeat (default: baseline, transprune)")
    run.add_argument("--name", help="run name (rerunning a name resumes it)")
    run.add_argument("--resume", metavar="RUN", help="finish an interrupted run (id or name)")
    run.add_argument("--limit", type=int, help="first N samples only")
    run.add_argument("--device", help="cpu or cuda")
    run.add_argument("--dtype", help="float32, bfloat16 or float16")
    run.add_argument("--max-new-tokens", type=int,
                     help="new tokens per answer (default per task: label 4, text 32, json 256; all stop at the "
                          "end of sequence)")
    run.add_argument("--labels", help="declared label set, comma separated (default: inferred)")
    run.add_argument("--prompt-template", help="question for rows without one; {labels} is replaced")
    run.add_argument("--no-labels", action="store_true",
                     help="ignore the dataset's labels and reference answers: compare arms with the baseline's "
                          "answers (agreement; open-ended tasks: anls_vs_baseline), as the label-free tuner does")
    run.add_argument("--controls", choices=["matched"],
                     help="matched: add FastV, PDrop, DivPrune, random and pooling arms at each TransPrune arm's "
                          "paper TFLOPs (within 1%%; pooling at its nearest factor, marked)")
    run.add_argument("--db", help="SQLAlchemy URL or SQLite file (default ./pilot.db)")
    run.add_argument("--json", action="store_true", help="print one JSON object")
    run.set_defaults(func=_run)

    report = commands.add_parser("report", help="KPIs of a run, with confidence intervals")
    report.add_argument("run", help="run id or name")
    report.add_argument("--db")
    report.add_argument("--json", action="store_true")
    report.add_argument("--max-drop", type=float, default=0.01, help="budget for the samples-needed table")
    report.add_argument("--metric", default="f1", choices=METRIC_CHOICES, help=METRIC_HELP)
    report.set_defaults(func=_report)

    plan = commands.add_parser("plan", help="paired samples each pruned arm's verdict needs, for a budget")
    plan.add_argument("run", help="run id or name")
    plan.add_argument("--max-drop", type=float, required=True, help="budget: largest allowed drop (0.01 = 1 pt)")
    plan.add_argument("--metric", default="f1", choices=METRIC_CHOICES, help=METRIC_HELP)
    plan.add_argument("--db")
    plan.add_argument("--json", action="store_true", help="print one JSON list, one object per pruned arm")
    plan.set_defaults(func=_plan)

    runs = commands.add_parser("runs", help="list runs")
    runs.add_argument("--db")
    runs.add_argument("--json", action="store_true")
    runs.set_defaults(func=_runs)

    database = commands.add_parser("db", help="database maintenance")
    db_commands = database.add_subparsers(dest="db_command", required=True)
    upgrade = db_commands.add_parser("upgrade", help="migrate the database to the latest schema")
    upgrade.add_argument("--db")
    upgrade.set_defaults(func=_db_upgrade)

    demo_data = commands.add_parser("demo-data", help="write the synthetic inspection dataset")
    demo_data.add_argument("--out", required=True)
    demo_data.add_argument("--n", type=int, default=300)
    demo_data.add_argument("--seed", type=int, default=0)
    demo_data.set_defaults(func=_demo_data)

    tune_parser = commands.add_parser("tune", help="find the cheapest schedule within an accuracy budget")
    tune_parser.add_argument("--model", help="checkpoint folder (default: the embedded demo)")
    tune_parser.add_argument("--dataset", help="manifest or Hugging Face dataset (default: the demo dataset)")
    _dataset_flags(tune_parser)
    tune_parser.add_argument("--labels", help="declared label set, comma separated")
    tune_parser.add_argument("--prompt-template", help="question for rows without one; {labels} is replaced")
    tune_parser.add_argument("--metric", default="f1_macro", choices=[m for m in METRIC_CHOICES if m != "f1"],
                             help=METRIC_HELP)
    tune_parser.add_argument("--no-labels", action="store_true",
                             help="ignore the dataset's labels and reference answers (the budget is then --metric "
                                  "agreement, or anls_vs_baseline / token_f1_vs_baseline for open-ended answers)")
    tune_parser.add_argument("--max-drop", type=float, default=0.01, help="budget: largest allowed drop (0.01 = 1 pt)")
    tune_parser.add_argument("--objective", default="tflops", choices=["tflops", "latency"])
    tune_parser.add_argument("--mode", default="ratio", choices=["ratio", "mass"],
                             help="keep ratios per stage, or score-mass thresholds per stage")
    tune_parser.add_argument("--multi-objective", action="store_true", help="keep the Pareto front (compute, drop)")
    tune_parser.add_argument("--trials", type=int, default=30, help="total trials (a rerun resumes the study)")
    tune_parser.add_argument("--timeout", type=float, help="seconds for this invocation")
    tune_parser.add_argument("--study", help="study name (workers pointing at one DB share it)")
    tune_parser.add_argument("--seed", type=int, default=0)
    tune_parser.add_argument("--heldout-fraction", type=float, default=0.5)
    tune_parser.add_argument("--max-new-tokens", type=int, help="default per task: label 4, text 32, json 256")
    tune_parser.add_argument("--limit", type=int, help="first N samples of each split part")
    tune_parser.add_argument("--device", default="cpu")
    tune_parser.add_argument("--dtype", default="float32")
    tune_parser.add_argument("--db")
    tune_parser.add_argument("--json", action="store_true")
    tune_parser.add_argument("--verbose", action="store_true", help="Optuna's own per-trial log lines too")
    tune_parser.set_defaults(func=_tune)

    dashboard = commands.add_parser("dashboard", help="the decision makers' dashboard (Streamlit)")
    dashboard.add_argument("--db")
    dashboard.add_argument("--port", type=int, default=8501)
    dashboard.add_argument("--host", default="127.0.0.1", help="bind address (default: this machine only)")
    dashboard.set_defaults(func=_dashboard)

    serve = commands.add_parser("serve", help="an OpenAI-compatible endpoint serving one arm (optional shadow A/B)")
    serve.add_argument("--model", help="checkpoint folder or demo (default: the study's model with --from-study, "
                                       "else the embedded demo)")
    serve.add_argument("--arm", help="the strategy to serve, e.g. baseline or transprune:prune_after=4/6/9,...")
    serve.add_argument("--from-study", metavar="NAME", help="serve the verified recommendation of `pilot tune --study "
                                                            "NAME` (read from --db)")
    serve.add_argument("--shadow", metavar="SPEC", help="shadow A/B: also run a sampled share of requests through "
                                                        "this arm after answering (e.g. baseline), stored as a run")
    serve.add_argument("--shadow-rate", type=float, default=0.1, help="share of requests shadowed (default 0.1)")
    serve.add_argument("--run-name", help="the shadow run's name (default live-MODEL-TIME-ID; an existing run with "
                                          "the same arms and model is continued)")
    serve.add_argument("--db", help="store of the shadow run and of --from-study (default ./pilot.db)")
    serve.add_argument("--host", default="127.0.0.1", help="bind address (default: this machine only)")
    serve.add_argument("--port", type=int, default=8000, help="port (default 8000; 0: any free port, logged)")
    serve.add_argument("--api-key", help="the key every route but /health requires (default: $PILOT_API_KEY)")
    serve.add_argument("--allow-dir", action="append", metavar="DIR", dest="allow_dirs",
                       help="local image paths are read only under this directory; repeat (default: none, data "
                            "URLs only)")
    serve.add_argument("--max-batch-size", type=int, default=8, help="requests per batch (default 8)")
    serve.add_argument("--max-wait-ms", type=float, default=50.0,
                       help="how long a batch waits for requests still being read (default 50; none: no wait)")
    serve.add_argument("--max-queue", type=int, default=256, help="waiting requests beyond this get a 503")
    serve.add_argument("--max-new-tokens", type=int, default=256,
                       help="a request's max_tokens: default and upper limit (default 256)")
    serve.add_argument("--max-images", type=int, help="images per request (default: 1 for LLaVA-1.5/NeXT, else 8)")
    serve.add_argument("--max-body-mb", type=float, default=20.0, help="request body limit (default 20 MiB)")
    serve.add_argument("--max-image-mb", type=float, default=10.0, help="one encoded image (default 10 MiB)")
    serve.add_argument("--max-image-megapixels", type=float, default=40.0, help="one decoded image (default 40)")
    serve.add_argument("--served-model-name", help="the model name clients send (default: demo or the folder name)")
    serve.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    serve.add_argument("--dtype", default="float32", help="float32, bfloat16 or float16")
    serve.add_argument("--threads", type=int, help="torch threads for the model (default: torch's, the cores; on a "
                                                   "shared CPU fewer threads than cores avoid stalls)")
    serve.add_argument("--shadow-batch-size", type=int, default=4, help="requests per shadow batch (default 4)")
    serve.add_argument("--shadow-queue-max", type=int, default=1000,
                       help="sampled requests waiting for an idle moment; beyond it they are dropped (counted)")
    serve.add_argument("--shadow-summary-every", type=int, default=100,
                       help="stored pairs between summary writes (default 100; and at shutdown)")
    serve.add_argument("--shadow-flush-s", type=float, default=1.0,
                       help="computed shadow pairs wait at most this long before they are stored (default 1 s)")
    serve.add_argument("--shadow-seed", type=int, default=0, help="seed of the shadow sampling (default 0)")
    serve.add_argument("--shadow-drain-s", type=float, default=5.0,
                       help="at shutdown, pending shadow work for up to this long (default 5 s)")
    serve.add_argument("--shutdown-timeout-s", type=float, default=30.0,
                       help="after SIGTERM, in-flight requests get this long to finish (default 30 s)")
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    serve.set_defaults(func=_serve)

    demo = commands.add_parser("demo", help="the whole loop on the embedded default")
    demo.add_argument("--db")
    demo.add_argument("--limit", type=int, help="first N demo images only")
    demo.add_argument("--trials", type=int, help="tuner trials (default: the demo's 16)")
    demo.set_defaults(func=_demo)
    _review_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # No weight-loading or download progress bars (read when transformers / huggingface_hub are imported, which
    # the commands do lazily, after this); the runner's own bar shows on a terminal only.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if "transformers" in sys.modules:
        sys.modules["transformers"].utils.logging.disable_progress_bar()
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, RuntimeError) as error:
        print(f"pilot {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
