"""Load a company's image dataset, labelled or not, from a manifest file (CSV or JSON lines) next to its images.

A manifest lists one sample per row: ``image`` (a path relative to the manifest's folder) is required,
``label``, ``question`` and ``id`` are optional::

    image,label,question
    parts/0001.png,scratch,
    parts/0002.png,no defect,Is there a defect on the left edge?

or, as JSON lines (``.jsonl``, ``.ndjson``, or ``.json`` holding one object per line)::

    {"image": "parts/0001.png", "label": "scratch"}

Decisions a caller should know:

* Column (key) names are matched after stripping whitespace and lower-casing (``Image`` is ``image``);
  unknown columns are ignored. Values are stripped of surrounding whitespace.
* Labels are compared exactly (case-sensitive) after stripping: ``Scratch`` and ``scratch`` are two
  different labels. Declared labels keep their order; inferred labels are ``sorted()`` (string order,
  so ``"10"`` sorts before ``"2"``).
* ``id`` defaults to the image path relative to the manifest's folder, normalised, in posix form
  (``./a/../b.png`` is ``b.png``); ids must be unique. ``id_column`` (``--id-column``) reads the ids from another
  column (e.g. ``questionId``).
* :attr:`Dataset.sha256` is the SHA-256 of the manifest's bytes and of each image's path, size and modification
  time (``os.stat``: a fraction of a second for 100k images, where reading their bytes would take minutes). A
  changed, added or removed image changes it; copies keep it when they keep the files' times (``cp -p``,
  ``rsync -a``).
* :attr:`Item.image` is the *resolved* absolute path (symlinks inside the folder followed). Paths that
  leave the dataset folder (``..``, absolute paths elsewhere, symlinks pointing out) are refused.
* Images are not opened or checked for existence here: a missing image is a per-sample error at run time.
* Blank lines (and CSV rows whose cells are all empty) are skipped; line numbers stay physical, 1-based
  (the CSV header is line 1).
* Labels are optional. A manifest without a ``label`` column, rows with an empty label, or ``no_labels=True``
  (which ignores the column's values) give items whose ``label`` is :data:`UNLABELLED` (``""``): a pilot then
  compares each pruned arm with the baseline's answers (agreement) instead of with labels; where some rows are
  labelled, both views are shown. The label set (:attr:`Dataset.labels`, the answers a model's text is mapped
  to) is the declared one, else the labels found in the column (also with ``no_labels``), else empty: answers
  are then the model's normalised text (:func:`pilot.data.answers.free_answer`). Without a label set the default
  prompt template cannot list the answers: give a ``question`` per row or a template without ``{labels}``.

Tasks and references (open-ended answers):

* Each row has a task, one of :data:`TASKS`: its ``task`` column if not empty, else the ``task=`` argument, else
  ``label`` (the behaviour above). Task names are matched after stripping and lower-casing.
* ``text`` rows: the model's answer is compared with reference answers, :attr:`Item.references`. One reference
  in ``answer`` (a string; in JSON lines also a number, turned to its text) or several in ``answers`` (in CSV a
  JSON array of strings in the cell, e.g. ``["red", "dark red"]``; in JSON lines a list). References are stripped.
* ``json`` rows: the model's answer will be parsed as JSON; the one reference is the object in ``answer`` (CSV:
  its JSON text; JSON lines: the object itself or a string holding it), kept as canonical JSON text
  (``json.dumps(obj, sort_keys=True, ensure_ascii=False)``).
* ``text`` and ``json`` rows may have no reference: a missing, null or empty ``answer``, or an empty ``answers``
  list (``[]``) all mean "no reference", and a pilot then compares the arms with the baseline's answers. An empty
  string inside ``answers`` is an error ("empty reference"), as is a reference of the wrong type for its task.
  ``no_labels`` drops the references too: every arm is then compared with the baseline's answers only, as the
  label-free tuner does.
* ``label`` rows ignore ``answer`` / ``answers``; but a manifest whose rows are label rows only by default (no
  ``task=`` given, no ``task`` column) and whose ``answer`` / ``answers`` column holds values is refused: that is
  a forgotten ``--task text``. Pass ``task="label"`` (``--task label``) to ignore the answers on purpose. A
  ``label`` on a ``text`` / ``json`` row is kept on the item but not checked against the declared labels nor
  added to the inferred label set.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # images.py pulls in Pillow and numpy; a manifest never decodes an image
    from pilot.data.images import EmbeddedImage

__all__ = [
    "DEFAULT_PROMPT_TEMPLATE",
    "TASKS",
    "UNLABELLED",
    "Dataset",
    "Item",
    "ManifestError",
    "load_manifest",
]

DEFAULT_PROMPT_TEMPLATE = "What is shown in the image? Answer with one of: {labels}."

TASKS = ("label", "text", "json")
"""Task kinds: ``label`` (answers mapped to a label), ``text`` (answers compared with reference texts) and
``json`` (answers parsed as JSON and compared with a reference object)."""

REQUIRED_COLUMNS = ("image",)
OPTIONAL_COLUMNS = ("label", "question", "id", "task")
REFERENCE_COLUMNS = ("answer", "answers")
UNLABELLED = ""
"""The label of a row without one (no ``label`` column, an empty value, or ``no_labels``)."""

_CSV_SUFFIXES = {".csv"}
_JSONL_SUFFIXES = {".jsonl", ".ndjson", ".json"}


class ManifestError(ValueError):
    """A manifest that cannot be used; the message names the file (and the line, where there is one)."""


@dataclass(frozen=True)
class Item:
    id: str
    image: Path | EmbeddedImage
    """A manifest's image: the absolute, resolved path inside the dataset folder (the file may not exist).
    A dataset that keeps its images inside its files (parquet, arrow): an :class:`~pilot.data.images.EmbeddedImage`
    whose bytes are read only when :func:`~pilot.data.images.load_image` loads it."""
    label: str
    """The row's label, or :data:`UNLABELLED` (``""``)."""
    question: str
    line: int
    """1-based line of the row in the manifest (the CSV header is line 1); for a dataset read with
    :func:`pilot.data.hf.open_dataset`, the 1-based row number in the split (an imagefolder: its metadata line)."""
    task: str = "label"
    """One of :data:`TASKS`."""
    references: tuple[str, ...] = ()
    """``text``: the reference answers; ``json``: one canonical JSON text of an object; ``label`` or no
    reference given: empty."""

    @property
    def labelled(self) -> bool:
        return self.label != UNLABELLED


@dataclass(frozen=True)
class Dataset:
    name: str
    manifest: Path
    """The manifest file; for other sources (:func:`pilot.data.hf.open_dataset`) the file or folder read."""
    sha256: str
    """Hex SHA-256 of the manifest's bytes; for other sources a fingerprint of the data read (see there)."""
    items: tuple[Item, ...]
    labels: tuple[str, ...]
    """The answer set: declared, else the labels found in the manifest; empty for free-text answers."""
    kind: str = "manifest"
    """What was read: ``csv``, ``jsonl``, or (:func:`pilot.data.hf.open_dataset`) ``arrow``, ``parquet``,
    ``imagefolder``, ``hub``."""

    def __len__(self) -> int:
        return len(self.items)

    @property
    def labelled(self) -> int:
        """How many items carry a label (0: a pilot without labels)."""
        return sum(item.labelled for item in self.items)

    @property
    def tasks(self) -> tuple[str, ...]:
        """The items' tasks, sorted, each once (``("label",)`` for a classic labelled manifest)."""
        return tuple(sorted({item.task for item in self.items}))

    @property
    def referenced(self) -> int:
        """How many items carry at least one reference answer."""
        return sum(bool(item.references) for item in self.items)


@dataclass(frozen=True)
class Row:
    """One row of a CSV or JSON-lines file, before validation."""

    line: int
    """Physical 1-based line (the CSV header is line 1)."""
    values: dict[str, object]
    """By normalised key (stripped, lower-case): CSV cells are strings, JSON lines keep their JSON values."""


@dataclass(frozen=True)
class RowFields:
    """One validated row of any source, ready to become an :class:`Item` (see :func:`assemble_dataset`)."""

    where: str
    """Prefix of error messages: ``manifest.csv:3`` or ``data/train-0.parquet row 17``."""
    position: str
    """How a later error points back at this row: ``line 3`` or ``row 17 of data/train-0.parquet``."""
    line: int
    id: str
    image: Path | EmbeddedImage
    label: str
    question: str
    """Empty: the dataset's default question."""
    task: str
    references: tuple[str, ...]


def load_manifest(
    path: str | os.PathLike[str],
    *,
    prompt_template: str | None = None,
    labels: Sequence[str] | None = None,
    name: str | None = None,
    no_labels: bool = False,
    task: str | None = None,
    id_column: str | None = None,
) -> Dataset:
    """Read and validate a manifest; raise :class:`ManifestError` naming the file and line on any problem.

    ``prompt_template`` (default :data:`DEFAULT_PROMPT_TEMPLATE`) is the question for rows without one; it
    is formatted with ``labels=", ".join(labels)`` and may omit ``{labels}``. ``labels`` declares the label
    set (and its order); without it the labels are the manifest's unique labels, sorted. ``name`` defaults
    to the name of the manifest's folder. ``no_labels`` ignores the rows' labels (every item is unlabelled); the
    label set is still the declared one, else the column's values. ``task`` is the task of rows without a
    ``task`` value (``None``: ``label``; see the module docstring for an ``answer`` column then). ``id_column``
    names the column holding the ids (default ``id``, else the image path).
    """
    path = Path(path)
    declared = declared_labels(path, labels)
    default_task = dataset_task(path, task)
    data, rows = read_rows(path)
    folder = path.absolute().parent
    id_key = _id_key(path, rows, id_column)
    if task is None:
        refuse_forgotten_task([(f"{path}:{row.line}", row.values) for row in rows])
    dataset = assemble_dataset(
        path.absolute(),
        _manifest_rows(path, folder, rows, default_task, csv_cells=_kind(path) == "csv", id_key=id_key),
        sha256="",
        kind=_kind(path),
        prompt_template=prompt_template,
        declared=declared,
        no_labels=no_labels,
        name=name if name is not None else (folder.name or path.stem),
    )
    return replace(dataset, sha256=content_digest(data, dataset.items))


def content_digest(data: bytes, items: Iterable[Item]) -> str:
    """SHA-256 of a listing file's bytes and of each image file's path, size and modification time (see the module
    docstring); a missing image counts as missing, so its appearing later changes the digest too."""
    digest = hashlib.sha256(data)
    for item in items:
        if not isinstance(item.image, Path):  # pragma: no cover - manifests and imagefolders list files
            continue
        try:
            stat = os.stat(item.image)
            state = f"{stat.st_size} {stat.st_mtime_ns}"
        except OSError:
            state = "missing"
        digest.update(f"\0{item.image}\0{state}".encode())
    return digest.hexdigest()


def refuse_forgotten_task(rows: Iterable[tuple[str, dict[str, object]]]) -> None:
    """Label rows by default (no ``--task``) with values in ``answer`` / ``answers`` and no ``task`` column: refused,
    since the answers would be ignored (``--task label`` ignores them on purpose). ``rows``: (where, values)."""
    for row_where, values in rows:
        if "task" in values:
            return
        for column in REFERENCE_COLUMNS:
            value = values.get(column)
            if _given(value) and value != [] and value != "[]":
                raise ManifestError(forgotten_task_message(row_where, column))


def forgotten_task_message(where: str, column: str) -> str:
    return (f"{where}: column {column!r} holds reference answers, but the rows are label rows (the default task), "
            f"which ignore them; pass --task text to score open-ended answers against {column!r} (--task json for "
            "JSON objects), or --task label to ignore the column")


def _id_key(path: Path, rows: Sequence[Row], id_column: str | None) -> str:
    if id_column is None:
        return "id"
    key = id_column.strip().lower()
    if not any(key in row.values for row in rows):
        found = sorted({k for row in rows for k in row.values})
        raise ManifestError(f"{path}: no column {key!r} (--id-column); columns: {', '.join(found) or 'none'}")
    return key


def assemble_dataset(
    manifest: Path,
    rows: Iterable[RowFields],
    *,
    sha256: str,
    kind: str,
    prompt_template: str | None,
    declared: tuple[str, ...] | None,
    no_labels: bool,
    name: str,
    label_names: Sequence[str] | None = None,
) -> Dataset:
    """Check the rows across the dataset (declared labels, default question, unique ids) and build it.

    Shared by every reader (manifests here, Hugging Face datasets in :mod:`pilot.data.hf`); ``label_names`` is a
    label set the source itself declares (a ``ClassLabel`` feature), used when ``declared`` is ``None``.
    """
    template = DEFAULT_PROMPT_TEMPLATE if prompt_template is None else prompt_template
    collected: list[RowFields] = []
    for row in rows:
        # Only label rows are scored against the label set; a label on a text/json row is kept as it is.
        if row.task == "label" and row.label and declared is not None and row.label not in declared:
            raise ManifestError(
                f"{row.where}: label {row.label!r} is not one of the declared labels "
                f"{list(declared)}; fix the label or declare it (labels are case-sensitive)"
            )
        collected.append(row)
    if not collected:
        raise ManifestError(f"{manifest}: has no rows; add one row per image")

    if declared is not None:
        dataset_labels = declared
    elif label_names is not None:
        dataset_labels = tuple(label_names)
    else:
        dataset_labels = tuple(sorted({row.label for row in collected if row.label and row.task == "label"}))
    needs_default = any(not row.question for row in collected)
    if not dataset_labels and needs_default and "{labels}" in template:
        raise ManifestError(
            f"{manifest}: the manifest has no labels, so the default question cannot list the answers; declare the "
            "answers (--labels a,b,c), give a 'question' on every row, or a --prompt-template without {labels}"
        )
    default_question = _format_template(manifest, template, dataset_labels)

    first: dict[str, str] = {}
    built: list[Item] = []
    for row in collected:
        if row.id in first:
            raise ManifestError(
                f"{row.where}: duplicate id {row.id!r} (first on {first[row.id]}); ids must be unique: "
                "remove the repeated row or give each row its own 'id'"
            )
        first[row.id] = row.position
        built.append(
            Item(
                id=row.id,
                image=row.image,
                label=UNLABELLED if no_labels else row.label,
                question=row.question or default_question,
                line=row.line,
                task=row.task,
                references=() if no_labels else row.references,  # label-free: compared with the baseline only
            )
        )
    return Dataset(name=name, manifest=manifest, sha256=sha256, items=tuple(built), labels=dataset_labels, kind=kind)


# -- tasks and references ---------------------------------------------------------------------------


def dataset_task(source: object, task: str | None) -> str:
    """The dataset-wide task (``task=`` / ``--task``): ``None`` is ``label``; an unknown name is an error."""
    if task is None:
        return "label"
    name = task.strip().lower()
    if name not in TASKS:
        raise ManifestError(f"{source}: unknown task {task!r} (--task); known tasks: {', '.join(TASKS)}")
    return name


def row_task(where: str, value: str, default: str, *, field: str = "'task'") -> str:
    """A row's task: its own ``value`` if not blank, else ``default``."""
    name = value.strip().lower()
    if not name:
        return default
    if name not in TASKS:
        raise ManifestError(f"{where}: unknown task {value.strip()!r} in {field}; known tasks: {', '.join(TASKS)}")
    return name


def parse_references(where: str, field: str, task: str, value: object, *, mode: str = "one") -> tuple[str, ...]:
    """The references of one row from the value of its answer field ``field`` (named in errors).

    ``mode``: ``one`` (a single reference; a list is also read as several), ``list`` (must be a list, as JSON lines'
    ``answers``), ``json-text-list`` (a CSV cell holding a JSON array, as CSV's ``answers``). ``None`` and blank
    strings outside a list and an empty list mean "no reference"; a blank string inside a list is an error.
    """
    if task == "label" or value is None:
        return ()
    if mode == "json-text-list":
        if not isinstance(value, str):  # pragma: no cover - CSV cells are strings
            raise TypeError(f"json-text-list expects a string, got {type(value).__name__}")
        if not value.strip():
            return ()
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise ManifestError(
                f"{where}: {field} must hold a JSON array of strings, e.g. [\"red\", \"dark red\"] "
                f"({exc.msg}); for a single reference use the 'answer' column"
            ) from exc
        mode = "list"
    if mode == "list" and not isinstance(value, list | tuple):
        raise ManifestError(
            f"{where}: {field} must be a list of strings, got {_describe(value)}; "
            "for a single reference use 'answer'"
        )
    if isinstance(value, list | tuple):
        if not value:
            return ()  # an empty list, like null and an empty cell: this row has no reference
        if task == "json":
            if len(value) != 1:
                raise ManifestError(
                    f"{where}: {field}: a json row takes exactly one reference object, got {len(value)}"
                )
            return (_json_reference(where, field, value[0], inside_list=True),)
        return tuple(_text_reference(where, field, element, index) for index, element in enumerate(value, 1))
    if isinstance(value, str) and not value.strip():
        return ()  # an empty cell: no reference
    if task == "json":
        return (_json_reference(where, field, value, inside_list=False),)
    if isinstance(value, str) or _is_number(value):
        return (_text_reference(where, field, value, None),)
    raise ManifestError(f"{where}: {field} must be a string or a list of strings, got {_describe(value)}")


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _describe(value: object) -> str:
    kinds = {dict: "an object", list: "a list", tuple: "a list", str: "a string", bool: "a boolean"}
    if value is None:
        return "null"
    if _is_number(value):
        return f"a number ({value!r})"
    text = repr(value)
    return f"{kinds.get(type(value), type(value).__name__)} ({text if len(text) <= 60 else text[:57] + '...'})"


def _text_reference(where: str, field: str, value: object, index: int | None) -> str:
    which = f"{field} item {index}" if index is not None else field
    if _is_number(value):
        return str(value)
    if not isinstance(value, str):
        raise ManifestError(f"{where}: {which} must be a string (a text reference), got {_describe(value)}")
    text = value.strip()
    if not text:
        raise ManifestError(f"{where}: {which} is an empty reference; remove it or write the answer")
    return text


def _json_reference(where: str, field: str, value: object, *, inside_list: bool) -> str:
    obj = value
    if isinstance(value, str):
        if not value.strip():
            raise ManifestError(f"{where}: {field} is an empty reference; remove it or write the JSON object")
        try:
            obj = json.loads(value)
        except json.JSONDecodeError as exc:
            raise ManifestError(
                f"{where}: {field} is not valid JSON ({exc.msg} at character {exc.pos}); a json row's reference is "
                "a JSON object, e.g. {\"colour\": \"red\"}"
            ) from exc
    if not isinstance(obj, dict):
        got = "an array" if isinstance(obj, list) else _describe(obj)
        where_list = " inside the list" if inside_list else ""
        raise ManifestError(f"{where}: {field}{where_list} must be a JSON object for a json row, got {got}")
    return json.dumps(obj, sort_keys=True, ensure_ascii=False)


# -- reading ----------------------------------------------------------------------------------------


def declared_labels(path: object, labels: Sequence[str] | None) -> tuple[str, ...] | None:
    """Validate a declared label set (``--labels``); ``None`` when none is declared."""
    if labels is None:
        return None
    if isinstance(labels, str):
        raise TypeError(f"labels must be a sequence of strings, not the string {labels!r}")
    out: list[str] = []
    for raw in labels:
        if not isinstance(raw, str):
            raise TypeError(f"declared labels must be strings, got {raw!r}")
        label = raw.strip()
        if not label:
            raise ManifestError(f"{path}: declared labels contain an empty label; remove it")
        if label in out:
            raise ManifestError(f"{path}: declared label {label!r} is listed twice; list each label once")
        out.append(label)
    if not out:
        raise ManifestError(f"{path}: the declared label list is empty; declare at least one label or pass None")
    return tuple(out)


def read_rows(path: Path, *, required: Sequence[str] = REQUIRED_COLUMNS) -> tuple[bytes, list[Row]]:
    """The file's bytes and its non-blank rows; the ``required`` columns (keys) must be there."""
    data = _read_bytes(path)
    kind = _kind(path)
    text = _decode(path, data)
    if not text.strip():
        raise ManifestError(f"{path}: the manifest is empty; add a header and one row per image")
    rows = _csv_rows(path, text, required) if kind == "csv" else _jsonl_rows(path, text, required)
    return data, rows


def _read_bytes(path: Path) -> bytes:
    if not path.exists():
        raise ManifestError(f"{path}: manifest file not found; check the path")
    if path.is_dir():
        raise ManifestError(f"{path}: is a folder, not a manifest file; pass the .csv or .jsonl file inside it")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ManifestError(f"{path}: cannot read the manifest: {exc.strerror or exc}") from exc


def _decode(path: Path, data: bytes) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ManifestError(
            f"{path}:{line}: not valid UTF-8 (byte 0x{data[exc.start]:02x} at offset {exc.start}); "
            "save the manifest as UTF-8"
        ) from exc


def _kind(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in _CSV_SUFFIXES:
        return "csv"
    if suffix in _JSONL_SUFFIXES:
        return "jsonl"
    raise ManifestError(
        f"{path}: unknown manifest extension {path.suffix!r}; use .csv, or .jsonl / .ndjson (one JSON object per line)"
    )


def _normalise_keys(path: Path, line: int, keys: Sequence[str]) -> list[str]:
    out: list[str] = []
    for key in keys:
        norm = key.strip().lower()
        if norm and norm in out:
            raise ManifestError(f"{path}:{line}: column {norm!r} appears twice; keep one")
        out.append(norm)
    return out


def _csv_rows(path: Path, text: str, required: Sequence[str]) -> list[Row]:
    reader = csv.reader(io.StringIO(text, newline=""))
    header: list[str] | None = None
    header_line = 0
    rows: list[Row] = []
    previous_end = 0
    try:
        for record in reader:
            start, previous_end = previous_end + 1, reader.line_num
            if not any(cell.strip() for cell in record):
                continue
            if header is None:
                header, header_line = _normalise_keys(path, start, record), start
                _check_columns(path, start, header, required, kind="column")
                continue
            if len(record) > len(header):
                raise ManifestError(
                    f"{path}:{start}: {len(record)} values but the header has {len(header)} columns; "
                    "quote values that contain commas"
                )
            values: dict[str, object] = {key: value for key, value in zip(header, record, strict=False) if key}
            rows.append(Row(start, values))
    except csv.Error as exc:
        raise ManifestError(f"{path}:{reader.line_num}: malformed CSV: {exc}") from exc
    if header is None:  # pragma: no cover - text.strip() was non-empty, so some cell is non-empty
        raise ManifestError(f"{path}: the manifest is empty; add a header and one row per image")
    if not rows:
        raise ManifestError(f"{path}: has a header (line {header_line}) but no rows; add one row per image")
    return rows


def _check_columns(path: Path, line: int, columns: Sequence[str], required: Sequence[str], *, kind: str) -> None:
    for name in required:
        if name not in columns:
            found = ", ".join(repr(c) for c in columns if c) or "none"
            hint = ""
            if kind == "column" and len(columns) == 1 and any(sep in columns[0] for sep in ";\t|"):
                hint = " (the file seems to use another separator: separate columns with commas)"
            raise ManifestError(
                f"{path}:{line}: missing required {kind} {name!r} ({kind}s found: {found}); "
                f"add a {name!r} {kind}{hint}"
            )


def cell_text(where: str, key: str, value: object) -> str:
    """A string field's value: strings as they are, integers as their text, null as ``""``; else an error."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise ManifestError(f"{where}: {key!r} must be a string, got {type(value).__name__} {value!r}")


def _jsonl_rows(path: Path, text: str, required: Sequence[str]) -> list[Row]:
    rows: list[Row] = []
    for number, raw in enumerate(text.split("\n"), start=1):
        line = raw.strip()
        if not line:
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ManifestError(
                f"{path}:{number}: not valid JSON ({exc.msg}); write one JSON object per line (JSON lines), "
                "not a single JSON document"
            ) from exc
        if not isinstance(obj, dict):
            what = "an array" if isinstance(obj, list) else type(obj).__name__
            raise ManifestError(
                f"{path}:{number}: expected a JSON object on this line, got {what}; "
                "write one object per line (JSON lines), not a single JSON document"
            )
        keys = _normalise_keys(path, number, list(obj))
        _check_columns(path, number, keys, required, kind="key")
        rows.append(Row(number, {key: value for key, value in zip(keys, obj.values(), strict=True) if key}))
    if not rows:  # pragma: no cover - text.strip() was non-empty, so some line is non-blank
        raise ManifestError(f"{path}: the manifest is empty; add one JSON object per image")
    return rows


# -- validating -------------------------------------------------------------------------------------


def _manifest_rows(
    path: Path, folder: Path, rows: list[Row], default_task: str, *, csv_cells: bool, id_key: str = "id"
) -> Iterator[RowFields]:
    resolved_folder = folder.resolve()
    for row in rows:
        where = f"{path}:{row.line}"
        fields = {key: cell_text(where, key, row.values.get(key)) for key in (*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS)}
        fields["id"] = cell_text(where, id_key, row.values.get(id_key))
        image_value = fields["image"].strip()
        if not image_value:
            raise ManifestError(f"{where}: empty 'image' value; give the image path for this row")
        image = resolve_image(path, row.line, folder, resolved_folder, image_value)
        task = row_task(where, fields["task"], default_task)
        yield RowFields(
            where=where,
            position=f"line {row.line}",
            line=row.line,
            id=fields["id"].strip() or default_id(folder, resolved_folder, image_value, image),
            image=image,
            label=fields["label"].strip(),
            question=fields["question"].strip(),
            task=task,
            references=manifest_references(where, task, row.values, csv_cells=csv_cells),
        )


def manifest_references(where: str, task: str, values: dict[str, object], *, csv_cells: bool) -> tuple[str, ...]:
    """A manifest row's references from its ``answer`` (one) or ``answers`` (a list; in CSV a JSON array) value."""
    if task == "label":
        return ()  # label rows are scored by their label; an 'answer' column is ignored as it always was
    answer, answers = values.get("answer"), values.get("answers")
    if _given(answer) and _given(answers):
        raise ManifestError(
            f"{where}: both 'answer' and 'answers' are given; put one reference in 'answer' or all of them in 'answers'"
        )
    if _given(answers):
        return parse_references(where, "'answers'", task, answers, mode="json-text-list" if csv_cells else "list")
    return parse_references(where, "'answer'", task, answer, mode="one")


def _given(value: object) -> bool:
    return value is not None and not (isinstance(value, str) and not value.strip())


def resolve_image(path: Path, line: int, folder: Path, resolved_folder: Path, value: str) -> Path:
    """The absolute path of image ``value`` (relative to ``folder``), refusing paths that leave the folder."""
    joined = folder / value  # an absolute value replaces the folder
    try:
        resolved = joined.resolve()
    except (OSError, RuntimeError, ValueError) as exc:  # symlink loop, NUL byte, ...
        raise ManifestError(f"{path}:{line}: cannot resolve image path {value!r}: {exc}") from exc
    if not resolved.is_relative_to(resolved_folder):
        raise ManifestError(
            f"{path}:{line}: image path {value!r} leads outside the dataset folder {resolved_folder} "
            f"(to {resolved}); keep images inside the manifest's folder and use paths relative to it"
        )
    if resolved == resolved_folder:
        raise ManifestError(f"{path}:{line}: image path {value!r} is the dataset folder itself; name an image file")
    return resolved


def default_id(folder: Path, resolved_folder: Path, value: str, resolved: Path) -> str:
    """An image's id by default: its path relative to the folder, normalised, in posix form."""
    lexical = Path(os.path.normpath(value))
    if not lexical.is_absolute():
        return PurePosixPath(*lexical.parts).as_posix()
    for base in (folder, resolved_folder):
        if lexical.is_relative_to(base):
            return lexical.relative_to(base).as_posix()
    return resolved.relative_to(resolved_folder).as_posix()


def _format_template(path: Path, template: str, labels: Sequence[str]) -> str:
    try:
        question = template.format(labels=", ".join(labels))
    except (KeyError, IndexError, ValueError) as exc:
        raise ManifestError(
            f"{path}: prompt template {template!r} cannot be formatted ({exc!r}); "
            "use only the {labels} placeholder and double other braces ({{ }})"
        ) from exc
    if not question.strip():
        raise ManifestError(f"{path}: the prompt template is empty; give a question")
    return question
