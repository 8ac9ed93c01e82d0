"""One name -> comparison key mapping of budget metrics (``pilot.metrics.metric_key``) for the CLI, the plan, the
report, the tuner and the dashboard."""

import pytest

from pilot.metrics import METRICS, metric_key


def test_every_metric_is_its_own_key_and_the_aliases_name_theirs():
    for metric in METRICS:
        assert metric_key(metric) == metric
    assert metric_key("f1_macro") == "f1" and metric_key("acc") == "accuracy"
    assert metric_key(None) == "f1" and metric_key("") == "f1"  # the default budget: macro-F1
    assert metric_key(" F1_Macro ") == "f1" and metric_key("ANLS") == "anls"


@pytest.mark.parametrize("name", ["anl", "f2", "agree", "accuracy_top1", "agreement_rate", "macro", "bleu"])
def test_an_unknown_metric_is_refused_by_name(name):
    """The dashboard's copy read any name it did not know as macro-F1 ("anl", a typo of ANLS, got macro-F1
    verdicts) and any name starting "acc" or "agree" as accuracy or agreement; plan's raised. Now all raise."""
    with pytest.raises(ValueError, match=f"metric '{name}': use one of f1, accuracy, agreement"):
        metric_key(name)


def test_every_name_a_user_or_the_tuner_gives_has_a_key():
    from dashboard.verdicts import METRIC_CHOICES, OPEN_CHOICES
    from pilot.cli import METRIC_CHOICES as CLI_CHOICES
    from tuner.study import METRICS as TUNER_METRICS

    assert {metric_key(name) for name in CLI_CHOICES} == set(METRICS)  # `pilot report/plan/tune --metric`
    for name, key in TUNER_METRICS.items():  # the tuner's own map (it also says which names it takes) agrees
        assert metric_key(name) == key
    for name in [*METRIC_CHOICES, *OPEN_CHOICES]:  # the dashboard's sidebar: "auto" resolves before metric_key
        if name != "auto":
            assert metric_key(name) == name
