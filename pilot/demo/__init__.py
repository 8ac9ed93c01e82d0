"""``make demo`` / ``pilot demo``: the whole loop on the embedded default, offline.

The demo model (a small LLaVA trained here, shipped in the package) answers questions about the
synthetic inspection images; the pilot runs the baseline and the pruned arms on the demo
dataset, the tuner looks for the cheapest schedule within one point of macro-F1, and the
results land in the store that ``pilot dashboard`` shows.
"""

from __future__ import annotations

import sys

DEMO_ARMS = ["baseline", "transprune", "transprune:positions=original", "fastv:after=2,keep=0.5", "random",
             "pool:factor=2"]


def run_demo(db_url: str | None = None, limit: int | None = None, trials: int = 12) -> int:
    from pilot.report import format_report
    from pilot.runner import RunSettings, execute
    from pilot.store import normalise_url
    from tuner.study import TuneSettings, tune

    def say(message: str) -> None:
        print(f"\n== {message}", file=sys.stderr, flush=True)

    say("pilot run: baseline and pruned arms on the demo dataset (300 synthetic inspection images)")
    report = execute(RunSettings(arms=list(DEMO_ARMS), batch_size=8, limit=limit), db_url=db_url)
    print(format_report(report))
    say(f"pilot tune: the cheapest TransPrune schedule within 1 point of macro-F1 ({trials} trials)")
    result = tune(TuneSettings(max_drop=0.01, trials=trials, limit=limit, batch_size=8), db_url=db_url)
    if result["recommended"]:
        held = result["heldout"]
        print(f"recommended: {result['recommended']}\n  held-out: macro-F1 {held['baseline_f1_macro']:.3f} -> "
              f"{held['f1_macro']:.3f} (drop {held['f1_drop']:+.3f}, 95% upper end {held['f1_drop_ci_high']:+.3f}), "
              f"paper TFLOPs x{held['paper_tflops_ratio']:.3f}, prefill x{held['prefill_ratio']:.3f}")
    else:
        print(result.get("message", "no recommendation"))
    say(f"see it: pilot dashboard --db {normalise_url(db_url)}")
    return 0
