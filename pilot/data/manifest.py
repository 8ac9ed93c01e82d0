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
  (``./a/../b.png`` is ``b.png``); ids must be unique.
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
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

__all__ = ["DEFAULT_PROMPT_TEMPLATE", "UNLABELLED", "Dataset", "Item", "ManifestError", "load_manifest"]

DEFAULT_PROMPT_TEMPLATE = "What is shown in the image? Answer with one of: {labels}."

REQUIRED_COLUMNS = ("image",)
OPTIONAL_COLUMNS = ("label", "question", "id")
UNLABELLED = ""
"""The label of a row without one (no ``label`` column, an empty value, or ``no_labels``)."""

_CSV_SUFFIXES = {".csv"}
_JSONL_SUFFIXES = {".jsonl", ".ndjson", ".json"}


class ManifestError(ValueError):
    """A manifest that cannot be used; the message names the file (and the line, where there is one)."""


@dataclass(frozen=True)
class Item:
    id: str
    image: Path
    """Absolute, resolved path inside the dataset folder; the file may not exist."""
    label: str
    """The row's label, or :data:`UNLABELLED` (``""``)."""
    question: str
    line: int
    """1-based line of the row in the manifest (the CSV header is line 1)."""

    @property
    def labelled(self) -> bool:
        return self.label != UNLABELLED


@dataclass(frozen=True)
class Dataset:
    name: str
    manifest: Path
    sha256: str
    """Hex SHA-256 of the manifest's bytes."""
    items: tuple[Item, ...]
    labels: tuple[str, ...]
    """The answer set: declared, else the labels found in the manifest; empty for free-text answers."""

    def __len__(self) -> int:
        return len(self.items)

    @property
    def labelled(self) -> int:
        """How many items carry a label (0: a pilot without labels)."""
        return sum(item.labelled for item in self.items)


@dataclass(frozen=True)
class _Row:
    line: int
    fields: dict[str, str]


def load_manifest(
    path: str | os.PathLike[str],
    *,
    prompt_template: str | None = None,
    labels: Sequence[str] | None = None,
    name: str | None = None,
    no_labels: bool = False,
) -> Dataset:
    """Read and validate a manifest; raise :class:`ManifestError` naming the file and line on any problem.

    ``prompt_template`` (default :data:`DEFAULT_PROMPT_TEMPLATE`) is the question for rows without one; it
    is formatted with ``labels=", ".join(labels)`` and may omit ``{labels}``. ``labels`` declares the label
    set (and its order); without it the labels are the manifest's unique labels, sorted. ``name`` defaults
    to the name of the manifest's folder. ``no_labels`` ignores the rows' labels (every item is unlabelled); the
    label set is still the declared one, else the column's values.
    """
    path = Path(path)
    declared = _declared_labels(path, labels)
    template = DEFAULT_PROMPT_TEMPLATE if prompt_template is None else prompt_template

    data = _read_bytes(path)
    kind = _kind(path)
    text = _decode(path, data)
    if not text.strip():
        raise ManifestError(f"{path}: the manifest is empty; add a header and one row per image")

    rows = _csv_rows(path, text) if kind == "csv" else _jsonl_rows(path, text)

    folder = path.absolute().parent
    items = _build_items(path, folder, rows, declared)
    dataset_labels = declared if declared is not None else tuple(sorted({lab for _, lab, _, _ in items if lab}))
    needs_default = any(not question for _, _, _, (_, question) in items)
    if not dataset_labels and needs_default and "{labels}" in template:
        raise ManifestError(
            f"{path}: the manifest has no labels, so the default question cannot list the answers; declare the "
            "answers (--labels a,b,c), give a 'question' on every row, or a --prompt-template without {labels}"
        )
    default_question = _format_template(path, template, dataset_labels)
    if no_labels:
        items = [(item_id, UNLABELLED, image, rest) for item_id, _, image, rest in items]

    seen: dict[str, int] = {}
    built: list[Item] = []
    for item_id, label, image, (line, question) in items:
        if item_id in seen:
            raise ManifestError(
                f"{path}:{line}: duplicate id {item_id!r} (first on line {seen[item_id]}); ids must be unique: "
                "remove the repeated row or give each row its own 'id'"
            )
        seen[item_id] = line
        built.append(Item(id=item_id, image=image, label=label, question=question or default_question, line=line))

    dataset_name = name if name is not None else (folder.name or path.stem)
    return Dataset(
        name=dataset_name,
        manifest=path.absolute(),
        sha256=hashlib.sha256(data).hexdigest(),
        items=tuple(built),
        labels=dataset_labels,
    )


# -- reading ----------------------------------------------------------------------------------------


def _declared_labels(path: Path, labels: Sequence[str] | None) -> tuple[str, ...] | None:
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


def _csv_rows(path: Path, text: str) -> list[_Row]:
    reader = csv.reader(io.StringIO(text, newline=""))
    header: list[str] | None = None
    header_line = 0
    rows: list[_Row] = []
    previous_end = 0
    try:
        for record in reader:
            start, previous_end = previous_end + 1, reader.line_num
            if not any(cell.strip() for cell in record):
                continue
            if header is None:
                header, header_line = _normalise_keys(path, start, record), start
                _check_columns(path, start, header, kind="column")
                continue
            if len(record) > len(header):
                raise ManifestError(
                    f"{path}:{start}: {len(record)} values but the header has {len(header)} columns; "
                    "quote values that contain commas"
                )
            fields = {key: value for key, value in zip(header, record, strict=False) if key}
            rows.append(_Row(start, fields))
    except csv.Error as exc:
        raise ManifestError(f"{path}:{reader.line_num}: malformed CSV: {exc}") from exc
    if header is None:  # pragma: no cover - text.strip() was non-empty, so some cell is non-empty
        raise ManifestError(f"{path}: the manifest is empty; add a header and one row per image")
    if not rows:
        raise ManifestError(f"{path}: has a header (line {header_line}) but no rows; add one row per image")
    return rows


def _check_columns(path: Path, line: int, columns: Sequence[str], *, kind: str) -> None:
    for required in REQUIRED_COLUMNS:
        if required not in columns:
            found = ", ".join(repr(c) for c in columns if c) or "none"
            hint = ""
            if kind == "column" and len(columns) == 1 and any(sep in columns[0] for sep in ";\t|"):
                hint = " (the file seems to use another separator: separate columns with commas)"
            raise ManifestError(
                f"{path}:{line}: missing required {kind} {required!r} ({kind}s found: {found}); "
                f"add a {required!r} {kind}{hint}"
            )


def _json_value(path: Path, line: int, key: str, value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise ManifestError(f"{path}:{line}: {key!r} must be a string, got {type(value).__name__} {value!r}")


def _jsonl_rows(path: Path, text: str) -> list[_Row]:
    rows: list[_Row] = []
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
        _check_columns(path, number, keys, kind="key")
        fields = {
            key: _json_value(path, number, key, value)
            for key, value in zip(keys, obj.values(), strict=True)
            if key in REQUIRED_COLUMNS or key in OPTIONAL_COLUMNS
        }
        rows.append(_Row(number, fields))
    if not rows:  # pragma: no cover - text.strip() was non-empty, so some line is non-blank
        raise ManifestError(f"{path}: the manifest is empty; add one JSON object per image")
    return rows


# -- validating -------------------------------------------------------------------------------------


def _build_items(
    path: Path, folder: Path, rows: list[_Row], declared: tuple[str, ...] | None
) -> list[tuple[str, str, Path, tuple[int, str]]]:
    resolved_folder = folder.resolve()
    out: list[tuple[str, str, Path, tuple[int, str]]] = []
    for row in rows:
        image_value = row.fields.get("image", "").strip()
        label = row.fields.get("label", "").strip()
        if not image_value:
            raise ManifestError(f"{path}:{row.line}: empty 'image' value; give the image path for this row")
        if label and declared is not None and label not in declared:
            raise ManifestError(
                f"{path}:{row.line}: label {label!r} is not one of the declared labels "
                f"{list(declared)}; fix the label or declare it (labels are case-sensitive)"
            )
        image = _resolve_image(path, row.line, folder, resolved_folder, image_value)
        item_id = row.fields.get("id", "").strip() or _default_id(folder, resolved_folder, image_value, image)
        question = row.fields.get("question", "").strip()
        out.append((item_id, label, image, (row.line, question)))
    return out


def _resolve_image(path: Path, line: int, folder: Path, resolved_folder: Path, value: str) -> Path:
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


def _default_id(folder: Path, resolved_folder: Path, value: str, resolved: Path) -> str:
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
