"""Review where teams already review: Label Studio tasks out, Label Studio's JSON export and JSON Lines in.

Export: one Label Studio task per review task, ``data.task`` its id, the answers already on their random sides
(Label Studio's pairwise template does not shuffle), and a labelling config with the four choices. Import: Label
Studio's JSON export (a list of tasks with ``annotations``) or JSON Lines, one judgement a line
(``{"task": 12, "reviewer": "ana", "choice": "A"}``; choice one of A, B, tie, both_wrong; ``comment`` optional).
Every record is keyed by a digest of its content, so importing a file twice adds nothing twice.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from pilot.review.tasks import ReviewError, record, record_key, reviewer_named, task_view
from pilot.store import models as db

LABEL_STUDIO_CONFIG = """<View>
  <Image name="image" value="$image" maxWidth="480px"/>
  <Header value="$question"/>
  <Text name="references" value="$references"/>
  <Header value="Answer A"/>
  <Text name="answer_a" value="$answer_a"/>
  <Header value="Answer B"/>
  <Text name="answer_b" value="$answer_b"/>
  <Choices name="choice" toName="answer_a" choice="single" required="true" showInline="true">
    <Choice value="A is better" alias="A" hotkey="1"/>
    <Choice value="B is better" alias="B" hotkey="2"/>
    <Choice value="Equally good" alias="tie" hotkey="3"/>
    <Choice value="Both wrong" alias="both_wrong" hotkey="4"/>
  </Choices>
  <TextArea name="comment" toName="answer_a" placeholder="Comment (optional)" maxSubmissions="1"/>
</View>
"""
# The choices as Label Studio exports them: the alias, or the shown value when a config without aliases was used.
CHOICE_NAMES = {"A": "A", "B": "B", "tie": "tie", "both_wrong": "both_wrong", "A is better": "A",
                "B is better": "B", "Equally good": "tie", "Both wrong": "both_wrong"}


def export_label_studio(session: Session, run: db.Run, path: Path, images: dict[str, Any] | None = None) -> dict:
    """Write the run's review tasks as a Label Studio task list (``path``) and its config (``path`` with suffix
    ``.xml``). ``images``: sample id -> image path (strings; left out when unknown). Returns the two paths."""
    tasks = session.scalars(select(db.ReviewTask).where(db.ReviewTask.run_id == run.id)
                            .order_by(db.ReviewTask.id)).all()
    if not tasks:
        raise ReviewError(f"run {run.name!r} has no review tasks; `pilot review create {run.id}` makes them")
    rows = []
    for task in tasks:
        view = task_view(session, task)
        image = (images or {}).get(task.sample_id)
        rows.append({"data": {"task": task.id, "image": str(image) if isinstance(image, str | Path) else "",
                              "question": view["question"] or "", "references": "\n".join(view["references"]),
                              "answer_a": view["answer_a"], "answer_b": view["answer_b"]}})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rows, indent=1, ensure_ascii=False))
    config = path.with_suffix(".xml")
    config.write_text(LABEL_STUDIO_CONFIG)
    return {"tasks": str(path), "config": str(config), "count": len(rows)}


@dataclass
class ImportResult:
    added: int = 0
    replaced: int = 0  # a reviewer judged a task again: the later one stands, both kept
    duplicates: int = 0  # stored by an earlier import
    errors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _records(path: Path) -> tuple[str, list[tuple[str, dict | None, str | None]]]:
    """The file's judgements as (where, record or None, error or None), and its format."""
    try:
        text = path.read_text()
    except OSError as error:
        raise ReviewError(f"{path}: cannot read it ({error.strerror or error})") from None
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            tasks = json.loads(text)
        except json.JSONDecodeError as error:
            raise ReviewError(f"{path}: not valid JSON (line {error.lineno}: {error.msg})") from None
        return "label-studio", list(_label_studio_records(path, tasks))
    out = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            item = json.loads(line)
        except json.JSONDecodeError as error:
            out.append((where, None, f"not valid JSON ({error.msg})"))
            continue
        if not isinstance(item, dict) or not {"task", "reviewer", "choice"} <= set(item):
            out.append((where, None, "expected an object with task, reviewer and choice"))
            continue
        out.append((where, item, None))
    return "jsonl", out


def _label_studio_records(path: Path, tasks: Any):
    if not isinstance(tasks, list):
        raise ReviewError(f"{path}: expected Label Studio's JSON export (a list of tasks)")
    for index, task in enumerate(tasks):
        where = f"{path}: task #{index + 1}"
        data = task.get("data") if isinstance(task, dict) else None
        if not isinstance(data, dict) or "task" not in data:
            yield where, None, "no data.task (export the tasks `pilot review export` wrote)"
            continue
        for annotation in task.get("annotations") or []:
            if annotation.get("was_cancelled"):
                continue
            who = annotation.get("completed_by")
            if isinstance(who, dict):
                who = who.get("email") or who.get("username") or who.get("id")
            choice, comment = None, None
            for result in annotation.get("result") or []:
                value = result.get("value") or {}
                if result.get("type") == "choices" and value.get("choices"):
                    choice = value["choices"][0]
                elif result.get("type") == "textarea" and value.get("text"):
                    comment = "\n".join(value["text"])
            at = f"{where}, annotation {annotation.get('id')}"
            if choice is None:
                yield at, None, "no choice in the annotation"
                continue
            yield at, {"task": data["task"], "reviewer": f"label-studio:{who}", "choice": choice,
                       "comment": comment, "annotation": annotation.get("id"),
                       "updated_at": annotation.get("updated_at") or annotation.get("created_at")}, None


def import_judgements(session: Session, run: db.Run, path: Path) -> ImportResult:
    """Read ``path`` (Label Studio JSON export or JSON Lines) into the run's judgements; the caller commits.

    Each bad record (a task that does not exist in this run, a choice not among the four, a revoked reviewer) is
    one error naming its line or task; the other records are stored. A record stored before is skipped."""
    source, records = _records(path)
    result = ImportResult()
    for where, item, error in records:
        if error is not None:
            result.errors.append(f"{where}: {error}")
            continue
        raw_choice = str(item["choice"])
        choice = CHOICE_NAMES.get(raw_choice) if source == "label-studio" else raw_choice
        if choice not in db.REVIEW_CHOICES:
            result.errors.append(f"{where}: choice {raw_choice!r} is not one of A, B, tie, both_wrong")
            continue
        try:
            task_id = int(item["task"])
        except (TypeError, ValueError):
            result.errors.append(f"{where}: task {item['task']!r} is not a task id")
            continue
        name = str(item["reviewer"]).strip()
        if not name:
            result.errors.append(f"{where}: no reviewer name")
            continue
        reviewer = reviewer_named(session, name)
        if reviewer.revoked_at is not None:
            result.errors.append(f"{where}: reviewer {name!r} was revoked; their judgements are not taken")
            continue
        try:
            outcome = record(session, task_id, reviewer, choice, comment=item.get("comment"), source=source,
                             source_key=record_key(source, item), run_id=run.id)
        except ReviewError as failure:
            result.errors.append(f"{where}: {failure}")
            continue
        if outcome == "duplicate":
            result.duplicates += 1
        elif outcome == "replaced":
            result.replaced += 1
            result.notes.append(f"{where}: {name} judged task {task_id} again; the later judgement stands (both "
                                "kept in the history)")
        else:
            result.added += 1
    return result
