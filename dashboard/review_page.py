"""The blind review page (a reviewer's personal link, ``?review=TOKEN[&run=ID]``) and the review results panel.

The page shows one task at a time: the image, the question, the reference answers where the dataset has them,
answers A and B (sides drawn at random per task, stored with it) and four choices, with keys 1-4 and an optional
comment. Nothing on it names an arm or shows kept tokens, TFLOPs or a diff. It writes a judgement only for a valid,
unrevoked token, through its own engine; every other view of the dashboard stays read-only. Store queries are in
``pilot.review``.
"""

from __future__ import annotations

import html

import pandas as pd
import streamlit as st
import streamlit.components.v1 as components

from dashboard import formatting as fmt
from dashboard import store
from pilot.review import DEFAULT_MAX_WORSE, ReviewError, review_summary
from pilot.review import tasks as review
from pilot.store import models as db

TOKEN_PARAM = "review"
CHOICES = [("A", "A is better", "1"), ("B", "B is better", "2"), ("tie", "Equally good", "3"),
           ("both_wrong", "Both wrong", "4")]
BOX = ("<div style='white-space:pre-wrap;overflow-wrap:anywhere;border:1px solid rgba(128,128,128,0.45);"
       "border-radius:6px;padding:10px 12px;min-height:3em;font-size:1.05rem'>{}</div>")
# Keys 1-4 press the choice buttons. Put into the page itself once (a component's iframe is replaced on every
# rerun; a listener defined inside it would die with it). Typing in the comment box is left alone.
SHORTCUTS = """
<script>
const page = window.parent;
if (!page.__pilotReviewKeys) {
  page.__pilotReviewKeys = true;
  const script = page.document.createElement("script");
  script.textContent = `
    document.addEventListener("keydown", (event) => {
      const target = event.target;
      if (event.ctrlKey || event.metaKey || event.altKey) return;
      if (target && (target.tagName === "INPUT" || target.tagName === "TEXTAREA" || target.isContentEditable)) return;
      const keys = {"1": "A is better", "2": "B is better", "3": "Equally good", "4": "Both wrong"};
      const label = keys[event.key];
      if (!label) return;
      const button = [...document.querySelectorAll("button")].find(b => b.innerText.trim().startsWith(label));
      if (button) { event.preventDefault(); button.click(); }
    });`;
  page.document.head.appendChild(script);
}
</script>
"""


def requested() -> bool:
    """Whether the page was opened with a review link."""
    return TOKEN_PARAM in st.query_params


@st.cache_resource(show_spinner=False)
def _writer(url: str):
    """The one engine that writes (judgements), opened only for a review link. No migration: a store without the
    review tables has no valid links either."""
    from sqlalchemy.orm import sessionmaker

    from pilot.store import make_engine

    return sessionmaker(bind=make_engine(url), expire_on_commit=False)


@st.cache_resource(show_spinner=False, max_entries=4)
def _items(url: str, run_id: int) -> dict:
    with _writer(url)() as session:
        return review.dataset_items(session.get(db.Run, run_id))


def _judge(url: str, token: str, task_id: int, choice: str) -> None:
    """A choice button's callback: store the judgement (the token checked again: it may have been revoked)."""
    comment = st.session_state.get(f"review_comment_{task_id}")
    try:
        with _writer(url)() as session:
            reviewer = review.reviewer_for_token(session, token)
            outcome = review.record(session, task_id, reviewer, choice, comment=comment)
            session.commit()
        st.session_state["review_note"] = ("Judgement stored." if outcome == "added" else
                                           "Judgement changed: the later one stands.")
    except ReviewError as error:
        st.session_state["review_error"] = str(error)


def render(url: str) -> None:
    """The review page for the token in the link."""
    st.subheader("Blind review")
    token = st.query_params.get(TOKEN_PARAM)
    sessions = _writer(url)
    try:
        with sessions() as session:
            reviewer = review.reviewer_for_token(session, token)
            name = reviewer.name
    except ReviewError as error:
        st.error(f"{error}. Nothing can be recorded from this page.")
        return
    except Exception as error:  # noqa: BLE001 - a store without the review tables, or unreachable
        detail = str(getattr(error, "orig", None) or error).strip().splitlines()
        st.error(f"The review store cannot be read: {detail[0] if detail else error}")
        return
    if "review_error" in st.session_state:
        st.error(st.session_state.pop("review_error"))
        return
    with sessions() as session:
        reviewer = review.reviewer_for_token(session, token)
        runs = review.runs_with_tasks(session)
        wanted = st.query_params.get("run")
        run_id = int(wanted) if wanted and wanted.isdigit() else (runs[-1] if runs else None)
        if run_id is None or run_id not in runs:
            st.info("There are no review tasks here yet (`pilot review create RUN` makes them).")
            return
        done = review.progress(session, run_id, reviewer)
        task = review.next_task(session, run_id, reviewer)
        view = review.task_view(session, task) if task is not None else None
    st.caption(f"Reviewer: **{html.escape(name)}** · you judged {done['judged']}; {done['open']} open to you")
    total = done["judged"] + done["open"]
    st.progress(done["judged"] / total if total else 1.0, text=f"{done['judged']} of {total}")
    if "review_note" in st.session_state:
        st.success(st.session_state.pop("review_note"))
    if view is None:
        st.success("All done: no task is waiting for you. Thank you!")
        return
    left, right = st.columns([2, 3])
    with left:
        image = _items(url, run_id).get(view["sample_id"])
        image = getattr(image, "image", None)
        if image is None:
            st.caption("Image not found (the run's dataset is not readable from here).")
        else:
            from pilot.data.images import ImageError, load_image

            try:
                st.image(load_image(image, max_side=640), width="stretch")
            except (ImageError, OSError) as error:
                st.caption(f"Image could not be read: {error}")
    with right:
        st.markdown("**Question**")
        st.markdown(BOX.format(html.escape(view["question"] or "(no question stored)")), unsafe_allow_html=True)
        if view["references"]:
            with st.expander(f"Reference answer{'s' if len(view['references']) > 1 else ''} "
                             f"({len(view['references'])})", expanded=len(view["references"]) <= 3):
                st.markdown(BOX.format("<br>".join(html.escape(r) for r in view["references"])),
                            unsafe_allow_html=True)
        a, b = st.columns(2)
        a.markdown("**Answer A**")
        a.markdown(BOX.format(html.escape(view["answer_a"]) or "<em>(empty answer)</em>"), unsafe_allow_html=True)
        b.markdown("**Answer B**")
        b.markdown(BOX.format(html.escape(view["answer_b"]) or "<em>(empty answer)</em>"), unsafe_allow_html=True)
        st.text_input("Comment (optional)", key=f"review_comment_{view['task_id']}")
        buttons = st.columns(4)
        for column, (choice, label, key) in zip(buttons, CHOICES, strict=True):
            column.button(f"{label} [{key}]", key=f"review_{choice}_{view['task_id']}", width="stretch",
                          on_click=_judge, args=(url, token, view["task_id"], choice))
        st.caption("Keys: 1 A is better · 2 B is better · 3 equally good · 4 both wrong. Judge the content: "
                   "the sides are drawn at random for every task.")
    components.html(SHORTCUTS, height=0)


@st.cache_data(show_spinner=False, ttl=10, max_entries=8)
def _summary(url: str, run_id: int, max_worse: float) -> dict | None:
    engine = store.connect(url)
    try:
        with store.reader(engine)() as session:
            return review_summary(session, session.get(db.Run, run_id), max_worse)
    finally:
        engine.dispose()


def results_section(url: str, run_id: int, max_worse: float = DEFAULT_MAX_WORSE) -> None:
    """The run's blind review results (nothing when it has no review tasks)."""
    summary = _summary(url, run_id, max_worse)
    if not summary or not summary.get("arms"):
        return
    st.markdown("### Blind human review")
    st.caption(f"{summary['judgements']} judgements on {summary['tasks']} tasks. Shares among the reviewed changed "
               "answers, 95% intervals clustered by item; worse of all = share of answers changed × share worse "
               f"among them. Budget: at most {fmt.pct(max_worse)} of answers worse "
               "(`pilot review results RUN --max-worse X` for another).")

    def share(arm: dict, key: str) -> str:
        ci = arm.get(f"{key}_ci")
        return fmt.MISSING if arm.get(key) is None else (
            f"{fmt.pct(arm[key])} [{fmt.pct(ci[0])}, {fmt.pct(ci[1])}]" if ci else fmt.pct(arm[key]))

    verdicts = {"met": "met", "not_met": "not met", "open": "open", "will_not_help": "not met (estimate over)",
                "needs_more_requests": "open: run more requests", "no_reviews": "no judgements yet"}
    rows = [{"arm": a["arm"], "reviewed": f"{a['reviewed']}/{a['tasks']}", "judgements": a["n_judgements"],
             "pruned worse": share(a, "pruned_worse"), "equal": share(a, "equal"),
             "pruned better": share(a, "pruned_better"), "both wrong": share(a, "both_wrong"),
             "worse of all": share(a, "worse_of_all"), "alpha": fmt.fixed(a["alpha"]),
             "A chosen": share(a, "position_bias"), "budget": verdicts.get(a["budget"]["verdict"], "–"),
             "more reviews": a["budget"]["more_tasks"] if a["budget"]["verdict"] == "open" else None}
            for a in summary["arms"]]
    st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")
    for reviewer in summary.get("reviewers") or []:
        if reviewer["flags"]:
            st.warning(f"Reviewer **{reviewer['reviewer']}** looks random: {'; '.join(reviewer['flags'])}.")
