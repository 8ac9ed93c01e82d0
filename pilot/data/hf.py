"""Open a dataset as teams keep it: a manifest, a Hugging Face ``save_to_disk`` folder, parquet files, an
imagefolder, or a Hub dataset id. :func:`open_dataset` returns the same :class:`~pilot.data.manifest.Dataset` as
:func:`~pilot.data.manifest.load_manifest`.

Sources, by what ``source`` is:

* a ``.csv`` / ``.jsonl`` / ``.ndjson`` / ``.json`` file: a manifest (:func:`~pilot.data.manifest.load_manifest`;
  its columns are fixed, so the column options must stay at their defaults);
* a folder with ``state.json`` (``Dataset.save_to_disk``) or ``dataset_dict.json`` (``DatasetDict.save_to_disk``):
  read with ``datasets.load_from_disk`` (memory-mapped arrow); a ``DatasetDict`` needs ``split`` when it has
  several splits;
* a ``.parquet`` file, or a folder of them (``data/train-00000-of-00002.parquet``, ``train/0000.parquet``, ...):
  ``split`` keeps the files whose name starts with ``<split>-`` / ``<split>.`` or that lie in a folder named
  ``split``; without ``split``, files of several recognisable splits are an error. Only the non-image columns
  are read to build the items, one row group at a time;
* a folder with ``metadata.jsonl`` or ``metadata.csv`` (Hugging Face's imagefolder; or ``<split>/metadata.*``):
  the ``file_name`` column names each image, relative to the metadata file (``image_column`` other than
  ``image`` picks another column); the rows are read as manifest rows are (keys lower-cased, ``answer`` /
  ``answers`` and ``task`` as in manifests, ids default to the image path);
* anything else that is not a local path: a Hub dataset id, streamed with
  ``datasets.load_dataset(id, split=split, streaming=True)``. A stream cannot be read at random, so its images
  are kept in memory as they arrive: fine for a pilot of a few thousand images; save bigger sets to disk first.

Columns (``save_to_disk``, parquet, Hub; names are case-sensitive there):

* ``image_column`` (default ``image``): the ``datasets.Image`` feature (``{bytes, path}``), raw bytes, or a
  path (relative to the data file's folder). Embedded images are :class:`~pilot.data.images.EmbeddedImage`\\ s
  whose bytes are read when :func:`~pilot.data.images.load_image` loads them; a ``{bytes: null, path}`` cell
  reads the file at ``path``.
* ``question_column`` (default ``question``): a missing column is an error that lists the columns there are,
  unless ``prompt_template`` is given (every image gets that question) or the rows are ``label`` rows with a
  label column (the default question lists the labels, as in manifests). Empty questions use the template.
* ``answer_column`` (default ``answer``; ``answers`` if there is no ``answer`` column): a string (one
  reference), a list of strings (several), or for ``json`` rows an object or a string holding one.
* ``label_column`` (default ``label``): strings or integers; a ``ClassLabel`` feature gives its names (and, when
  no labels are declared, its label set in its order); ``-1`` is unlabelled.
* ``id`` and ``task`` columns are used when present; ids default to the row index in the split (0, 1, ...).
* A column option given explicitly (not its default) that names no column is an error listing the columns.

``Dataset.sha256`` fingerprints the data without reading the images: the parquet files' sizes and footers, the
arrow files' sizes, first and last 64 KiB and the ``state.json`` files, or the imagefolder's metadata bytes;
together with the split and the columns read. A Hub stream is hashed as it is read.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from pilot.data.images import BytesImage, EmbeddedImage, ImageError
from pilot.data.manifest import (
    Dataset,
    ManifestError,
    RowFields,
    assemble_dataset,
    cell_text,
    dataset_task,
    declared_labels,
    default_id,
    load_manifest,
    manifest_references,
    parse_references,
    read_rows,
    resolve_image,
    row_task,
)

if TYPE_CHECKING:  # pyarrow and datasets are imported when a dataset of theirs is opened, not with this module
    import pyarrow as pa

__all__ = ["ArrowImage", "ParquetImage", "open_dataset"]

MANIFEST_SUFFIXES = {".csv", ".jsonl", ".ndjson", ".json"}
IMAGEFOLDER_METADATA = ("metadata.jsonl", "metadata.csv")
DEFAULT_COLUMNS = {"image": "image", "question": "question", "answer": "answer", "label": "label"}
_OPTION = {"image": "--image-column", "question": "--question-column", "answer": "--answer-column",
           "label": "--label-column"}
_SHARD = re.compile(r"^(?P<split>.+?)-\d+-of-\d+\.parquet$")
_SPLIT_WORDS = {"train", "training", "validation", "valid", "val", "dev", "test", "testing", "eval", "evaluation"}
_BATCH_ROWS = 1024
_FINGERPRINT_EDGE = 64 * 1024


def open_dataset(
    source: str | os.PathLike[str],
    *,
    task: str | None = None,
    image_column: str = "image",
    question_column: str = "question",
    answer_column: str = "answer",
    label_column: str = "label",
    split: str | None = None,
    prompt_template: str | None = None,
    labels: Sequence[str] | None = None,
    no_labels: bool = False,
    name: str | None = None,
) -> Dataset:
    """Open ``source`` (see the module docstring for the kinds) as a :class:`Dataset`; every problem is a
    :class:`ManifestError` naming the file (and row or line) or the id.

    ``task``, ``prompt_template``, ``labels`` and ``no_labels`` mean what they mean for
    :func:`~pilot.data.manifest.load_manifest`; ``name`` defaults to the folder's name (a file's stem, a Hub id).
    """
    text = os.fspath(source)
    path = Path(text)
    columns = {"image": image_column, "question": question_column, "answer": answer_column, "label": label_column}
    if path.is_file() and path.suffix.lower() in MANIFEST_SUFFIXES:
        return _open_manifest(path, columns, task=task, split=split, prompt_template=prompt_template,
                              labels=labels, no_labels=no_labels, name=name)
    options = _Options(
        columns=columns,
        default_task=dataset_task(path, task),
        split=split,
        prompt_template=prompt_template,
        declared=declared_labels(path, labels),
        no_labels=no_labels,
        name=name,
    )
    if path.is_file():
        if path.suffix.lower() != ".parquet":
            raise ManifestError(
                f"{path}: unknown dataset file {path.suffix!r}; pass a manifest (.csv, .jsonl), a .parquet file, or "
                "a dataset folder (save_to_disk, parquet files, imagefolder with metadata.jsonl)"
            )
        if split is not None and not _in_split(PurePosixPath(path.name), split):
            raise ManifestError(
                f"{path}: --split {split!r} does not match this file's name; pass the folder holding the split's "
                "files, or drop --split"
            )
        return _open_parquet(path, path.parent, [path], options)
    if path.is_dir():
        return _open_folder(path, options)
    if _looks_like_path(text):
        raise ManifestError(f"{text}: dataset file or folder not found; check the path")
    return _open_hub(text, options)


# -- dispatch ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Options:
    columns: dict[str, str]
    """Option (image, question, answer, label) -> the column name asked for."""
    default_task: str
    split: str | None
    prompt_template: str | None
    declared: tuple[str, ...] | None
    no_labels: bool
    name: str | None

    def explicit(self, option: str) -> bool:
        return self.columns[option] != DEFAULT_COLUMNS[option]


def _open_manifest(path: Path, columns: dict[str, str], *, task: str | None, split: str | None,
                   prompt_template: str | None, labels: Sequence[str] | None, no_labels: bool,
                   name: str | None) -> Dataset:
    changed = [f"{_OPTION[option]} {value!r}" for option, value in columns.items() if value != DEFAULT_COLUMNS[option]]
    if changed:
        raise ManifestError(
            f"{path}: {', '.join(changed)}: a manifest's columns are fixed (image, label, question, answer or answers, "
            "id, task); rename the manifest's columns instead"
        )
    if split is not None:
        raise ManifestError(f"{path}: --split {split!r}: a manifest has no splits; drop --split")
    return load_manifest(path, prompt_template=prompt_template, labels=labels, name=name, no_labels=no_labels,
                         task=task)


def _looks_like_path(text: str) -> bool:
    """A Hub id is ``name`` or ``owner/name``; anything else that does not exist is a mistyped local path."""
    suffix = PurePosixPath(text).suffix.lower()
    return (
        text.startswith(("/", ".", "~"))
        or "\\" in text
        or text.count("/") > 1
        or suffix in MANIFEST_SUFFIXES
        or suffix in {".parquet", ".arrow"}
    )


def _open_folder(folder: Path, options: _Options) -> Dataset:
    if (folder / "state.json").is_file() or (folder / "dataset_dict.json").is_file():
        return _open_saved(folder, options)
    metadata = _imagefolder_metadata(folder, options.split)
    if metadata is not None:
        return _open_imagefolder(folder, metadata, options)
    files = _parquet_files(folder)
    if files:
        return _open_parquet(folder, folder, _select_split(folder, files, options.split), options)
    raise ManifestError(
        f"{folder}: not a dataset folder: no state.json or dataset_dict.json (datasets' save_to_disk), no "
        "metadata.jsonl / metadata.csv (imagefolder), no .parquet files; for a manifest pass its .csv / .jsonl file"
    )


def _columns_text(columns: Iterable[str]) -> str:
    return ", ".join(columns) or "none"


@dataclass(frozen=True)
class _Picked:
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


def _pick_columns(where: str, names: Sequence[str], options: _Options, *, image_default: str | None = None,
                  normalise: bool = False) -> _Picked:
    """Match the column options against the columns ``names`` there are (``where``: the file in errors)."""

    def wanted(option: str) -> str:
        value = options.columns[option]
        if option == "image" and image_default is not None and not options.explicit("image"):
            value = image_default
        return value.strip().lower() if normalise else value

    def missing(option: str, extra: str = "") -> ManifestError:
        return ManifestError(
            f"{where}: no column {wanted(option)!r} ({_OPTION[option]}); columns: {_columns_text(names)}{extra}"
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
    return _Picked(
        image=image,
        question=question,
        answer=answer,
        label=label,
        id="id" if "id" in names else None,
        task="task" if "task" in names else None,
    )


def _record_fields(where: str, position: str, index: int, record: dict[str, Any], picked: _Picked,
                   image: Path | EmbeddedImage, options: _Options,
                   class_names: Sequence[str] | None) -> RowFields:
    """One arrow/parquet/Hub row (``record``: its non-image values) as validated fields."""
    question = cell_text(where, picked.question, record.get(picked.question)) if picked.question else ""
    label = _label(where, picked.label, record.get(picked.label), class_names) if picked.label else ""
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


def _label(where: str, column: str, value: object, class_names: Sequence[str] | None) -> str:
    if class_names is not None and isinstance(value, int) and not isinstance(value, bool):
        if value == -1:  # datasets' ClassLabel for "no label"
            return ""
        if not 0 <= value < len(class_names):
            raise ManifestError(
                f"{where}: column {column!r} holds class {value}, but its ClassLabel has {len(class_names)} names"
            )
        return class_names[value]
    return cell_text(where, column, value)


def _class_names(features: object, column: str | None) -> list[str] | None:
    """The names of a ``ClassLabel`` column from a features dict as datasets serialises it, else ``None``."""
    if column is None or not isinstance(features, dict):
        return None
    feature = features.get(column)
    if isinstance(feature, dict) and feature.get("_type") == "ClassLabel" and isinstance(feature.get("names"), list):
        return [str(label) for label in feature["names"]]
    return None


def _image_kind(where: str, column: str, arrow_type: pa.DataType) -> str:
    """``struct`` (the datasets Image feature), ``bytes`` or ``path``; other column types are refused."""
    import pyarrow as pa

    if pa.types.is_struct(arrow_type) and arrow_type.get_field_index("bytes") >= 0:
        return "struct"
    if pa.types.is_binary(arrow_type) or pa.types.is_large_binary(arrow_type) or pa.types.is_binary_view(arrow_type):
        return "bytes"
    if pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type) or pa.types.is_string_view(arrow_type):
        return "path"
    raise ManifestError(
        f"{where}: column {column!r} ({_OPTION['image']}) holds {arrow_type}, not images; expected the datasets "
        "Image feature (bytes and path), image bytes, or image paths"
    )


def _path_image(where: str, column: str, value: object, base: Path) -> Path:
    text = cell_text(where, column, value).strip()
    if not text:
        raise ManifestError(f"{where}: empty {column!r} value; give the image path for this row")
    return (base / text).absolute()  # an absolute path replaces base


def _cell_bytes(name: str, cell: object, base: Path) -> bytes:
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


def _fingerprint(parts: Iterable[bytes], options: _Options, picked: _Picked, split: str | None) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(len(part).to_bytes(8, "little"))  # length-prefixed: no two part lists hash alike
        digest.update(part)
    settings = {"split": split, "columns": [picked.image, *picked.values], "task": options.default_task}
    digest.update(json.dumps(settings, sort_keys=True).encode())
    return digest.hexdigest()


# -- parquet ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ParquetImage(EmbeddedImage):
    """One cell of a parquet file's image column: read (with its row group's column) when the image is loaded."""

    file: str
    """Absolute path of the parquet file."""
    row_group: int
    index: int
    """Row within the row group."""
    column: str

    def read_bytes(self) -> bytes:
        cell = _ROW_GROUPS.column(self.file, self.row_group, self.column)[self.index].as_py()
        return _cell_bytes(self.name, cell, Path(self.file).parent)


class _RowGroupCache:
    """The image column of the last row group read, so that loading a batch of neighbouring items decodes each
    row group once; one slot keeps memory at one row group's images."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._key: tuple[object, ...] | None = None
        self._column: pa.ChunkedArray | None = None

    def column(self, file: str, row_group: int, column: str) -> pa.ChunkedArray:
        import pyarrow.parquet as pq

        stat = os.stat(file)
        key = (file, stat.st_mtime_ns, stat.st_size, row_group, column)  # a rewritten file is read again
        with self._lock:
            if self._key == key and self._column is not None:
                return self._column
        with pq.ParquetFile(file) as parquet:
            read = parquet.read_row_group(row_group, columns=[column]).column(0)
        with self._lock:
            self._key, self._column = key, read
        return read


_ROW_GROUPS = _RowGroupCache()


def _parquet_files(folder: Path) -> list[Path]:
    files = []
    for path in folder.rglob("*.parquet"):
        relative = path.relative_to(folder)
        if path.is_file() and not any(part.startswith(".") for part in relative.parts):  # .git, .cache, ...
            files.append(path)
    return sorted(files, key=lambda p: p.relative_to(folder).as_posix())


def _split_of(relative: PurePosixPath) -> str | None:
    """The split a file belongs to by Hugging Face's naming (``train-00000-of-00002.parquet``, ``test.parquet``,
    ``validation/0000.parquet``); ``None`` when its name says nothing."""
    match = _SHARD.match(relative.name)
    if match:
        return match["split"]
    word = re.split(r"[-_.]", relative.name, maxsplit=1)[0]
    if word.lower() in _SPLIT_WORDS:
        return word
    for part in reversed(relative.parts[:-1]):
        if part.lower() in _SPLIT_WORDS:
            return part
    return None


def _in_split(relative: PurePosixPath, split: str) -> bool:
    name = relative.name
    return (
        _split_of(relative) == split
        or name.startswith((f"{split}-", f"{split}."))
        or split in relative.parts[:-1]
    )


def _select_split(folder: Path, files: list[Path], split: str | None) -> list[Path]:
    relatives = [PurePosixPath(f.relative_to(folder).as_posix()) for f in files]
    found = sorted({s for s in map(_split_of, relatives) if s is not None})
    if split is None:
        if len(found) > 1:
            raise ManifestError(
                f"{folder}: the parquet files hold several splits ({', '.join(found)}); choose one with --split"
            )
        return files
    chosen = [f for f, relative in zip(files, relatives, strict=True) if _in_split(relative, split)]
    if not chosen:
        known = f"splits found: {', '.join(found)}" if found else "no split names found in the file names"
        raise ManifestError(f"{folder}: no parquet file of split {split!r} ({known}); check --split")
    return chosen


def _parquet_footer(path: Path) -> bytes:
    """The file's size and metadata footer: it changes with the data but is read without the data."""
    size = path.stat().st_size
    with path.open("rb") as fp:
        if size < 12:
            return size.to_bytes(8, "little")
        fp.seek(size - 8)
        tail = fp.read(8)
        length = int.from_bytes(tail[:4], "little")
        if tail[4:] != b"PAR1" or length > size - 8:  # not parquet: opening it reports that
            return size.to_bytes(8, "little") + tail
        fp.seek(size - 8 - length)
        return size.to_bytes(8, "little") + fp.read(length)


def _open_parquet(source: Path, root: Path, files: list[Path], options: _Options) -> Dataset:
    import pyarrow as pa
    import pyarrow.parquet as pq

    def shown_name(file: Path) -> str:
        return str(source / file.relative_to(root)) if source != file else str(file)

    def open_parquet(file: Path) -> pq.ParquetFile:
        try:
            return pq.ParquetFile(file)
        except (pa.ArrowException, OSError) as exc:
            raise ManifestError(f"{shown_name(file)}: not a readable parquet file ({exc})") from exc

    first_shown = shown_name(files[0])
    with open_parquet(files[0]) as first:
        first_schema = first.schema_arrow
    picked = _pick_columns(first_shown, first_schema.names, options)
    class_names = _class_names(_hf_features(first_schema), picked.label)

    def rows() -> Iterator[RowFields]:
        index = 0
        for file in files:
            with open_parquet(file) as parquet:
                yield from file_rows(file, shown_name(file), parquet, index)
                index += parquet.metadata.num_rows

    def file_rows(file: Path, shown: str, parquet: pq.ParquetFile, index: int) -> Iterator[RowFields]:
        schema = parquet.schema_arrow
        absent = [c for c in (picked.image, *picked.values) if c not in schema.names]
        if absent:
            raise ManifestError(f"{shown}: no column {absent[0]!r} (the first file, {first_shown}, has it); "
                                f"columns: {_columns_text(schema.names)}")
        kind = _image_kind(shown, picked.image, schema.field(picked.image).type)
        # Only the small columns are read here; the image column stays on disk until an image is loaded.
        read = picked.values + ([picked.image] if kind == "path" else [])
        file_row = 0
        for group in range(parquet.num_row_groups):
            count = parquet.metadata.row_group(group).num_rows
            records = parquet.read_row_group(group, columns=read).to_pylist() if read else [{}] * count
            for offset, record in enumerate(records):
                where = f"{shown} row {file_row}"
                image: Path | EmbeddedImage
                if kind == "path":
                    image = _path_image(where, picked.image, record.get(picked.image), file.parent)
                else:
                    image = ParquetImage(name=f"{where} column {picked.image}", file=str(file.absolute()),
                                         row_group=group, index=offset, column=picked.image)
                yield _record_fields(where, f"row {file_row} of {shown}", index + file_row, record, picked, image,
                                     options, class_names)
                file_row += 1

    footers = [file.relative_to(root).as_posix().encode() + b"\0" + _parquet_footer(file) for file in files]
    return assemble_dataset(
        source.absolute(),
        rows(),
        sha256=_fingerprint(footers, options, picked, options.split),
        kind="parquet",
        prompt_template=options.prompt_template,
        declared=options.declared,
        no_labels=options.no_labels,
        name=options.name or (source.name if source.is_dir() else source.stem),
        label_names=class_names,
    )


def _hf_features(schema: pa.Schema) -> object:
    """The features datasets stores in a parquet file's metadata (``None`` if absent or unreadable)."""
    raw = (schema.metadata or {}).get(b"huggingface")
    if raw is None:
        return None
    try:
        return json.loads(raw).get("info", {}).get("features")
    except (ValueError, AttributeError):
        return None


# -- save_to_disk (arrow) ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ArrowImage(EmbeddedImage):
    """One cell of a ``save_to_disk`` dataset's image column, read from the memory-mapped arrow files."""

    folder: str
    """The folder holding the split's ``state.json``."""
    row: int
    column: str

    def read_bytes(self) -> bytes:
        table = _saved_rows(self.folder, _state_stamp(self.folder))[self.row]
        return _cell_bytes(self.name, table.column(self.column)[0].as_py(), Path(self.folder))


def _state_stamp(folder: str) -> int:
    return os.stat(Path(folder) / "state.json").st_mtime_ns


@lru_cache(maxsize=4)
def _saved_rows(folder: str, stamp: int) -> Any:
    """The split at ``folder`` as rows of arrow tables (memory-mapped: a row reads only its own cells)."""
    import datasets

    del stamp  # part of the cache key only: a dataset saved again is opened again
    return datasets.load_from_disk(folder).with_format("arrow")


def _open_saved(folder: Path, options: _Options) -> Dataset:
    import datasets

    parts: list[bytes] = []
    split = options.split
    split_folder = folder
    dict_file = folder / "dataset_dict.json"
    if dict_file.is_file():
        parts.append(dict_file.read_bytes())
        try:
            splits = [str(s) for s in json.loads(dict_file.read_text(encoding="utf-8"))["splits"]]
        except (ValueError, KeyError, TypeError) as exc:
            raise ManifestError(f"{dict_file}: not a datasets dataset_dict.json ({exc!r})") from exc
        if split is None:
            if len(splits) != 1:
                raise ManifestError(f"{folder}: the dataset has several splits ({', '.join(splits)}); "
                                    "choose one with --split")
            split = splits[0]
        elif split not in splits:
            raise ManifestError(f"{folder}: no split {split!r}; splits: {', '.join(splits)}")
        split_folder = folder / split
    try:
        state = json.loads((split_folder / "state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ManifestError(f"{split_folder / 'state.json'}: cannot read the saved dataset's state ({exc})") from exc
    saved_split = state.get("_split")
    if options.split is not None and not dict_file.is_file() and saved_split not in (None, options.split):
        raise ManifestError(f"{folder}: holds the {saved_split!r} split, not {options.split!r}; drop --split")
    try:
        dataset = datasets.load_from_disk(str(split_folder))
    except Exception as exc:  # datasets raises FileNotFoundError, ValueError, pyarrow errors
        raise ManifestError(f"{split_folder}: cannot open the saved dataset ({type(exc).__name__}: {exc})") from exc

    shown = str(split_folder)
    picked = _pick_columns(shown, dataset.column_names, options)
    kind = _image_kind(shown, picked.image, dataset.data.schema.field(picked.image).type)
    class_names = None
    if picked.label is not None and isinstance(dataset.features[picked.label], datasets.ClassLabel):
        class_names = list(dataset.features[picked.label].names)
    read = picked.values + ([picked.image] if kind == "path" else [])

    def records() -> Iterator[dict[str, Any]]:
        if not read:
            yield from ({} for _ in range(dataset.num_rows))
            return
        # Arrow format: no column is decoded (images, ClassLabels) and a saved torch/numpy format is ignored.
        for batch in dataset.select_columns(read).with_format("arrow").iter(batch_size=_BATCH_ROWS):
            yield from batch.to_pylist()

    def rows() -> Iterator[RowFields]:
        for index, record in enumerate(records()):
            where = f"{shown} row {index}"
            image: Path | EmbeddedImage
            if kind == "path":
                image = _path_image(where, picked.image, record.get(picked.image), split_folder)
            else:
                image = ArrowImage(name=f"{where} column {picked.image}", folder=str(split_folder.absolute()),
                                   row=index, column=picked.image)
            yield _record_fields(where, f"row {index}", index, record, picked, image, options, class_names)

    for meta in ("state.json", "dataset_info.json"):
        if (split_folder / meta).is_file():
            parts.append((split_folder / meta).read_bytes())
    for entry in state.get("_data_files", []):
        parts.append(_file_edges(split_folder / str(entry.get("filename", ""))))
    return assemble_dataset(
        folder.absolute(),
        rows(),
        sha256=_fingerprint(parts, options, picked, split),
        kind="arrow",
        prompt_template=options.prompt_template,
        declared=options.declared,
        no_labels=options.no_labels,
        name=options.name or folder.absolute().name,
        label_names=class_names,
    )


def _file_edges(path: Path) -> bytes:
    """Name, size, first and last 64 KiB of a data file: a cheap stand-in for hashing all of it."""
    try:
        size = path.stat().st_size
        with path.open("rb") as fp:
            head = fp.read(_FINGERPRINT_EDGE)
            fp.seek(max(0, size - _FINGERPRINT_EDGE))
            tail = fp.read(_FINGERPRINT_EDGE)
    except OSError as exc:
        raise ManifestError(f"{path}: cannot read the saved dataset's data file ({exc.strerror or exc})") from exc
    return path.name.encode() + b"\0" + size.to_bytes(8, "little") + head + tail


# -- imagefolder ------------------------------------------------------------------------------------


def _imagefolder_metadata(folder: Path, split: str | None) -> Path | None:
    """The metadata file to read: ``folder/metadata.*``, or ``folder/<split>/metadata.*``; ``None`` if neither."""

    def metadata_in(where: Path) -> Path | None:
        return next((where / n for n in IMAGEFOLDER_METADATA if (where / n).is_file()), None)

    split_folders = sorted(
        child.name for child in folder.iterdir() if child.is_dir() and metadata_in(child) is not None
    )
    if split is not None:
        if split in split_folders:
            return metadata_in(folder / split)
        if metadata_in(folder) is not None or split_folders:
            known = f"split folders with metadata: {', '.join(split_folders)}" if split_folders else "no split folders"
            raise ManifestError(f"{folder}: no split {split!r} ({known}); check --split")
        return None
    top = metadata_in(folder)
    if top is not None:
        return top
    if len(split_folders) > 1:
        raise ManifestError(f"{folder}: the imagefolder has several splits ({', '.join(split_folders)}); "
                            "choose one with --split")
    return metadata_in(folder / split_folders[0]) if split_folders else None


def _open_imagefolder(source: Path, metadata: Path, options: _Options) -> Dataset:
    data, raw_rows = read_rows(metadata, required=())
    names: list[str] = []
    for row in raw_rows:
        names.extend(key for key in row.values if key not in names)
    picked = _pick_columns(str(metadata), names, options, image_default="file_name", normalise=True)
    folder = metadata.absolute().parent
    resolved_folder = folder.resolve()
    csv_cells = metadata.suffix.lower() == ".csv"

    def rows() -> Iterator[RowFields]:
        for row in raw_rows:
            where = f"{metadata}:{row.line}"
            value = cell_text(where, picked.image, row.values.get(picked.image)).strip()
            if not value:
                raise ManifestError(f"{where}: empty {picked.image!r} value; give the image file for this row")
            image = resolve_image(metadata, row.line, folder, resolved_folder, value)
            # Questions, labels, task and id as for parquet rows; the answers below as in manifests.
            record = {key: row.values.get(key) for key in picked.values if key != picked.answer}
            fields = _record_fields(where, f"line {row.line}", row.line - 1, record, picked, image, options, None)
            if picked.answer in ("answer", "answers"):
                references = manifest_references(where, fields.task, row.values, csv_cells=csv_cells)
            elif picked.answer is not None:
                references = parse_references(where, f"column {picked.answer!r}", fields.task,
                                              row.values.get(picked.answer))
            else:
                references = ()
            own_id = cell_text(where, "id", row.values.get("id")).strip() if picked.id else ""
            yield RowFields(
                where=where,
                position=fields.position,
                line=row.line,
                id=own_id or default_id(folder, resolved_folder, value, image),  # as a manifest: the image path
                image=image,
                label=fields.label,
                question=fields.question,
                task=fields.task,
                references=references,
            )

    return assemble_dataset(
        source.absolute(),
        rows(),
        sha256=_fingerprint([metadata.name.encode(), data], options, picked, options.split),
        kind="imagefolder",
        prompt_template=options.prompt_template,
        declared=options.declared,
        no_labels=options.no_labels,
        name=options.name or source.absolute().name,
    )


# -- Hub --------------------------------------------------------------------------------------------


def _open_hub(dataset_id: str, options: _Options) -> Dataset:
    import datasets

    try:
        stream = datasets.load_dataset(dataset_id, split=options.split, streaming=True)
    except Exception as exc:  # offline, unknown id, gated, no such split: all end here, named
        reason = f"{type(exc).__name__}: {exc}"
        if isinstance(exc, ConnectionError) or "offline" in str(exc).lower():
            raise ManifestError(
                f"{dataset_id}: no local file or folder of that name, and the machine could not reach the Hugging "
                f"Face Hub to stream it as a dataset id ({reason}); pass a local folder (save_to_disk, parquet "
                "files, imagefolder) or a .parquet file instead"
            ) from exc
        raise ManifestError(
            f"{dataset_id}: no local file or folder of that name, and it cannot be streamed from the Hugging Face "
            f"Hub as a dataset id ({reason}); check the id and --split, or pass a local folder or .parquet file"
        ) from exc
    split = options.split
    if isinstance(stream, datasets.IterableDatasetDict):
        splits = list(stream)
        if len(splits) != 1:
            raise ManifestError(f"{dataset_id}: the dataset has several splits ({', '.join(splits)}); "
                                "choose one with --split")
        split = splits[0]
        stream = stream[split]
    names = list(stream.column_names or (stream.features or {}).keys())
    picked = _pick_columns(dataset_id, names, options)
    class_names = None
    features = stream.features
    if features is not None and picked.label is not None and isinstance(features.get(picked.label),
                                                                         datasets.ClassLabel):
        class_names = list(features[picked.label].names)
    if features is not None and isinstance(features.get(picked.image), datasets.Image):
        stream = stream.cast_column(picked.image, datasets.Image(decode=False))  # bytes, not decoded pictures
    digest_parts: list[bytes] = []

    def rows() -> Iterator[RowFields]:
        for index, record in enumerate(stream):
            where = f"{dataset_id} row {index}"
            cell = record.get(picked.image)
            image: Path | EmbeddedImage
            if isinstance(cell, str):
                raise ManifestError(f"{where}: column {picked.image!r} holds a path ({cell!r}), which a Hub stream "
                                    "cannot read; download the dataset and pass its folder")
            try:
                data = _cell_bytes(f"{where} column {picked.image}", cell, Path("."))
            except ImageError as exc:
                raise ManifestError(str(exc)) from exc
            image = BytesImage(name=f"{where} column {picked.image}", data=data)
            fields = _record_fields(where, f"row {index}", index, record, picked, image, options, class_names)
            digest_parts.append(hashlib.sha256(data).digest())
            digest_parts.append(json.dumps([fields.id, fields.question, fields.label, fields.task,
                                            list(fields.references)]).encode())
            yield fields

    built = assemble_dataset(
        Path(dataset_id),
        rows(),
        sha256="",
        kind="hub",
        prompt_template=options.prompt_template,
        declared=options.declared,
        no_labels=options.no_labels,
        name=options.name or dataset_id,
        label_names=class_names,
    )
    # The stream has been read whole by now: its fingerprint is the hash of what was read.
    return replace(built, sha256=_fingerprint(digest_parts, options, picked, split))
