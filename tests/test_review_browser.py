"""The review page in headless Chromium (the DevTools pattern of tests/test_dashboard_browser.py): a reviewer with
a personal link judges ten tasks, by keys and by clicks, one with a comment; the judgements are stored in the
sides the page showed, and ``pilot report --json`` shows the shares with intervals. A mistyped or revoked
link writes nothing. Skipped when /usr/bin/chromium is missing, unless PILOT_REQUIRE_BROWSER=1."""

from __future__ import annotations

import json
import time

from sqlalchemy import select

from pilot.cli import main
from pilot.review.tasks import create_tasks, invite, revoke
from pilot.store import Run, open_store
from pilot.store import models as db
from tests.test_dashboard_browser import _page_has, _require_chromium, dashboard_page
from tests.test_review import PRUNED, build_review_store

KEYS = {"1": "A", "2": "B", "3": "tie", "4": "both_wrong"}
ANSWER = ("(() => {{ const boxes = [...document.querySelectorAll('[data-testid=\"stMarkdownContainer\"]')];"
          " const i = boxes.findIndex(b => b.innerText.trim() === 'Answer {side}');"
          " return i >= 0 && boxes[i + 1] ? boxes[i + 1].innerText.trim() : null; }})()")


# The script has finished its rerun: no element left over from the previous task (Streamlit marks them stale
# until replaced) and no running indicator.
SETTLED = ("!document.querySelector('[data-stale=\"true\"]')"
           " && !document.querySelector('[data-testid=\"stStatusWidgetRunningIcon\"]')")


def _press(browser, key: str) -> None:
    code = 48 + int(key)
    for kind in ("keyDown", "keyUp"):
        browser.call("Input.dispatchKeyEvent", type=kind, key=key, code=f"Digit{key}", text=key if kind == "keyDown"
                     else "", windowsVirtualKeyCode=code, nativeVirtualKeyCode=code)


def _button(label: str) -> str:
    return f"[...document.querySelectorAll('button')].find(b => b.innerText.trim().startsWith({json.dumps(label)}))"


def test_a_reviewer_judges_ten_tasks_in_chromium(tmp_path_factory, tmp_path, capsys):
    _require_chromium()
    store = build_review_store(tmp_path_factory.mktemp("review-browser"))
    sessions = open_store(store["url"])
    with sessions() as session:
        create_tasks(session, session.get(Run, store["run_id"]), overlap=1, checks=0, seed=2)
        token = invite(session, "ana")
        session.commit()
    sessions.kw["bind"].dispose()

    with dashboard_page(store["url"], tmp_path) as browser:
        assert browser.wait_for("location.origin.startsWith('http')", timeout=30)
        origin = browser.evaluate("location.origin")
        browser.call("Page.navigate", url=f"{origin}/?review=not-a-token")
        assert browser.wait_for(_page_has(["this review link is not valid", "Nothing can be recorded"]), timeout=60)
        assert not browser.evaluate(f"!!({_button('A is better')})")

        browser.call("Page.navigate", url=f"{origin}/?review={token}&run={store['run_id']}")
        assert browser.wait_for(_page_has(["Blind review", "Answer A", "Answer B", "0 of 12"]), timeout=60), \
            (browser.evaluate("document.body.innerText") or "")[-2000:]
        shown = []
        for i in range(10):
            assert browser.wait_for(_page_has([f"{i} of 12", "Answer A"]), timeout=30)
            assert browser.wait_for(f"!!({_button('A is better')})", timeout=30)
            assert browser.wait_for(SETTLED, timeout=30)
            time.sleep(0.3)
            assert browser.wait_for(SETTLED, timeout=30)
            text = browser.evaluate("document.body.innerText")
            # blind: no arm's name, no kept-token overlay or cost on the page
            assert "baseline" not in text.lower() and "positions=original" not in text and "TFLOPs" not in text
            question = next(line for line in text.splitlines() if line.startswith("What is written on part"))
            answers = browser.evaluate(ANSWER.format(side="A")), browser.evaluate(ANSWER.format(side="B"))
            key = "1234"[i % 4]
            if i == 3:  # a comment, then the button by mouse
                field = "document.querySelector('input[type=\"text\"]')"
                assert browser.click(field)
                browser.call("Input.insertText", text="B drops the part number")
                browser.call("Input.dispatchKeyEvent", type="keyDown", key="Enter", code="Enter",
                             windowsVirtualKeyCode=13)
                browser.call("Input.dispatchKeyEvent", type="keyUp", key="Enter", code="Enter",
                             windowsVirtualKeyCode=13)
                time.sleep(1.0)
                assert browser.click(_button("Both wrong"))
                key = "4"
            elif i % 2:
                assert browser.click(_button({"1": "A is better", "2": "B is better", "3": "Equally good",
                                              "4": "Both wrong"}[key]))
            else:
                browser.evaluate("document.activeElement && document.activeElement.blur()")
                _press(browser, key)
            shown.append((question, answers, KEYS[key]))
            assert browser.wait_for(_page_has([f"{i + 1} of 12"]), timeout=30), \
                (browser.evaluate("document.body.innerText") or "")[-1500:]

        revoked = open_store(store["url"])  # a revoked link: the page says so and offers nothing to press
        with revoked() as session:
            revoke(session, "ana")
            session.commit()
        revoked.kw["bind"].dispose()
        browser.call("Page.navigate", url=f"{origin}/?review={token}&run={store['run_id']}")
        assert browser.wait_for(_page_has(["this review link was revoked", "Nothing can be recorded"]), timeout=60)
        assert not browser.evaluate(f"!!({_button('A is better')})")

    sessions = open_store(store["url"])
    with sessions() as session:
        judgements = session.scalars(select(db.ReviewJudgement).order_by(db.ReviewJudgement.id)).all()
        stored = []
        for judgement in judgements:
            task = session.get(db.ReviewTask, judgement.task_id)
            i = int(task.sample_id[1:])
            base, pruned = f"part {i}", f"Part number {i + 100}"
            sides = (pruned, base) if task.pruned_side == "A" else (base, pruned)
            stored.append((f"What is written on part {i}?", sides, judgement.choice))
            assert judgement.source == "dashboard"
        comments = [j.comment for j in judgements if j.comment]
    sessions.kw["bind"].dispose()
    assert stored == shown  # each judgement on the task shown, in the sides shown
    assert comments == ["B drops the part number"]

    assert main(["report", str(store["run_id"]), "--db", store["url"], "--json"]) == 0
    review = json.loads(capsys.readouterr().out)["review"]
    arm = review["arms"][0]
    assert arm["arm"] == PRUNED and arm["n_judgements"] == 10 and arm["reviewed"] == 10
    for key in ("pruned_worse", "equal", "pruned_better", "both_wrong"):
        assert arm[key] is not None and arm[f"{key}_ci"][0] <= arm[key] <= arm[f"{key}_ci"][1]
    chosen = [choice for _, _, choice in shown]
    assert arm["equal"] == chosen.count("tie") / 10 and arm["both_wrong"] == chosen.count("both_wrong") / 10
