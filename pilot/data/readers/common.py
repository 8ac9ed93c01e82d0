"""What every reader of :mod:`pilot.data.readers` shares: the options, the column matching, one row's fields, the
image cells and the fingerprint."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pilot.data.images import EmbeddedImage, ImageError
from pilot.data.manifest import ManifestError, RowFields, cell_text, forgotten_task_message, parse_references, row_task

if TYPE_CHECKING:  # pyarrow is imported when a dataset of its kind is opened, not with this module
    import pyarrow as pa

DEFAULT_COLUMNS = {"image": "image", "question": "question", "answer": "answer", "label": "label"}
OPTION_FLAGS = {"image": "--image-column", "question": "--question-column", "answer": "--answer-column",
                "label": "--label-column"}
BATCH_ROWS = 1024
"""Rows read per arrow batch while building the items."""


@dataclass(frozen=True)
class Options:
    columns: dict[str, str]
    """Option (image, question, answer, label) -> the column name asked for."""
    default_task: str
    split: str | None
    prompt_template: str | None
    declared: tuple[str, ...] | None
    no_labels: bool
    name: str | None
    task_given: bool = False
    """``--task`` was given: label rows with an answer column are then meant (see ``pick_columns``)."""
    id_column: str | None = None
    """``--id-column``; ``None``: ``id`` if there is one, else the row index."""

    def explicit(self, option: str) -> bool:
        return self.columns[option] != DEFAULT_COLUMNS[option]



def columns_text(columns: Iterable[str]) -> str:
    return ", ".join(columns) or "none"


@dataclass(frozen=True)
class Picked:
    """The columns a dataset's items are read from (``None``: the dataset has no such column)."""

    image: str
    question: str | None
    answer: str | None
    label: str | None
    id: str | None
    task: str | None

    @property
    def values(self) -> list[str]:
        """Every column but the image column: what building the items reads."""
        columns = (self.question, self.answer, self.label, self.id, self.task)
        return list(dict.fromkeys(c for c in columns if c is not None))  # one option may name another's column


def pick_columns(where: str, names: Sequence[str], options: Options, *, image_default: str | None = None,
                  normalise: bool = False) -> Picked:
    """Match the column options against the columns ``names`` there are (``where``: the file in errors)."""

    def wanted(option: str) -> str:
        value = options.columns[option]
        if option == "image" and image_default is not None and not options.explicit("image"):
            value = image_default
        return value.strip().lower() if normalise else value

    def missing(option: str, extra: str = "") -> ManifestError:
        return ManifestError(
            f"{where}: no column {wanted(option)!r} ({OPTION_FLAGS[option]}); columns: {columns_text(names)}{extra}"
        )

    image = wanted("image")
    if image not in names:
        raise missing("image", "; name the column holding the images")
    label = wanted("label")
    if label not in names:
        if options.explicit("label"):
            raise missing("label")
        label = None
    question = wanted("question")
    if question not in names:
        # A forgotten --question-column would silently ask every image the default question: only accept that
        # when it is meant (a template given) or makes sense (label rows, whose default question lists labels).
        label_rows = options.default_task == "label" and label is not None
        if options.explicit("question") or (options.prompt_template is None and not label_rows):
            raise missing("question", "; name the column holding the questions, or give --prompt-template to ask "
                                      "every image the same question")
        question = None
    answer = wanted("answer")
    if answer not in names:
        if options.explicit("answer"):
            raise missing("answer")
        answer = "answers" if "answers" in names else None  # manifests read both names too
    task = "task" if "task" in names else None
    if answer is not None and task is None and options.default_task == "label" and not options.task_given:
        raise ManifestError(forgotten_task_message(where, answer))  # DocVQA's layout without --task text
    item_id = "id" if "id" in names else None
    if options.id_column is not None:
        item_id = options.id_column.strip().lower() if normalise else options.id_column
        if item_id not in names:
            raise ManifestError(f"{where}: no column {item_id!r} (--id-column); columns: {columns_text(names)}")
    return Picked(
        image=image,
        question=question,
        answer=answer,
        label=label,
        id=item_id,
        task=task,
    )


def record_fields(where: str, position: str, index: int, record: dict[str, Any], picked: Picked,
                   image: Path | EmbeddedImage, options: Options,
                   class_names: Sequence[str] | None) -> RowFields:
    """One arrow/parquet/Hub row (``record``: its non-image values) as validated fields."""
    question = cell_text(where, picked.question, record.get(picked.question)) if picked.question else ""
    label = cell_label(where, picked.label, record.get(picked.label), class_names) if picked.label else ""
    task = options.default_task
    if picked.task:
        task = row_task(where, cell_text(where, picked.task, record.get(picked.task)), options.default_task)
    references: tuple[str, ...] = ()
    if picked.answer:
        references = parse_references(where, f"column {picked.answer!r}", task, record.get(picked.answer))
    item_id = cell_text(where, picked.id, record.get(picked.id)).strip() if picked.id else ""
    return RowFields(
        where=where,
        position=position,
        line=index + 1,
        id=item_id or str(index),
        image=image,
        label=label.strip(),
        question=question.strip(),
        task=task,
        references=references,
    )


def cell_label(where: str, column: str, value: object, class_names: Sequence[str] | None) -> str:
    if class_names is not None and isinstance(value, int) and not isinstance(value, bool):
        if value == -1:  # datasets' ClassLabel for "no label"
            return ""
        if not 0 <= value < len(class_names):
            raise ManifestError(
                f"{where}: column {column!r} holds class {value}, but its ClassLabel has {len(class_names)} names"
            )
        return class_names[value]
    return cell_text(where, column, value)


def feature_class_names(features: object, column: str | None) -> list[str] | None:
    """The names of a ``ClassLabel`` column from a features dict as datasets serialises it, else ``None``."""
    if column is None or not isinstance(features, dict):
        return None
    feature = features.get(column)
    if isinstance(feature, dict) and feature.get("_type") == "ClassLabel" and isinstance(feature.get("names"), list):
        return [str(label) for label in feature["names"]]
    return None


def image_kind(where: str, column: str, arrow_type: pa.DataType) -> str:
    """``struct`` (the datasets Image feature), ``bytes`` or ``path``; other column types are refused."""
    import pyarrow as pa

    if pa.types.is_struct(arrow_type) and arrow_type.get_field_index("bytes") >= 0:
        return "struct"
    if pa.types.is_binary(arrow_type) or pa.types.is_large_binary(arrow_type) or pa.types.is_binary_view(arrow_type):
        return "bytes"
    if pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type) or pa.types.is_string_view(arrow_type):
        return "path"
    raise ManifestError(
        f"{where}: column {column!r} ({OPTION_FLAGS['image']}) holds {arrow_type}, not images; expected the datasets "
        "Image feature (bytes and path), image bytes, or image paths"
    )


def path_image(where: str, column: str, value: object, base: Path) -> Path:
    text = cell_text(where, column, value).strip()
    if not text:
        raise ManifestError(f"{where}: empty {column!r} value; give the image path for this row")
    return (base / text).absolute()  # an absolute path replaces base


def cell_bytes(name: str, cell: object, base: Path) -> bytes:
    """The encoded image in an arrow cell: raw bytes, or the Image feature's ``bytes``, else its ``path``."""
    if isinstance(cell, bytes):
        return cell
    if isinstance(cell, dict):
        if cell.get("bytes"):
            return cell["bytes"]
        if cell.get("path"):
            path = base / str(cell["path"])  # datasets writes absolute paths; a relative one is the dataset's
            try:
                return path.read_bytes()
            except OSError as exc:
                raise ImageError(f"{name}: the cell has no bytes and its path {path} cannot be read "
                                 f"({exc.strerror or exc})") from exc
        raise ImageError(f"{name}: the cell holds no image (neither bytes nor a path)")
    if cell is None:
        raise ImageError(f"{name}: the cell holds no image (null)")
    raise ImageError(f"{name}: the cell holds {type(cell).__name__}, not an image")


def fingerprint(parts: Iterable[bytes], options: Options, picked: Picked, split: str | None) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(len(part).to_bytes(8, "little"))  # length-prefixed: no two part lists hash alike
        digest.update(part)
    settings = {"split": split, "columns": [picked.image, *picked.values], "task": options.default_task}
    digest.update(json.dumps(settings, sort_keys=True).encode())
    return digest.hexdigest()
