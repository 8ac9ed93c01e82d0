"""Parquet files: one file, or a folder of them with Hugging Face's split naming; only the non-image columns are
read to build the items, the image cell when its image is loaded."""

from __future__ import annotations

import json
import os
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from pilot.data.images import EmbeddedImage
from pilot.data.manifest import Dataset, ManifestError, RowFields, assemble_dataset
from pilot.data.readers.common import (
    Options,
    cell_bytes,
    columns_text,
    feature_class_names,
    fingerprint,
    image_kind,
    path_image,
    pick_columns,
    record_fields,
)

if TYPE_CHECKING:
    import pyarrow as pa
    import pyarrow.parquet as pq

_SHARD = re.compile(r"^(?P<split>.+?)-\d+-of-\d+\.parquet$")
_SPLIT_WORDS = {"train", "training", "validation", "valid", "val", "dev", "test", "testing", "eval", "evaluation"}


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
        return cell_bytes(self.name, cell, Path(self.file).parent)


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


def parquet_files(folder: Path) -> list[Path]:
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


def in_split(relative: PurePosixPath, split: str) -> bool:
    name = relative.name
    return (
        _split_of(relative) == split
        or name.startswith((f"{split}-", f"{split}."))
        or split in relative.parts[:-1]
    )


def select_split(folder: Path, files: list[Path], split: str | None) -> list[Path]:
    relatives = [PurePosixPath(f.relative_to(folder).as_posix()) for f in files]
    found = sorted({s for s in map(_split_of, relatives) if s is not None})
    if split is None:
        if len(found) > 1:
            raise ManifestError(
                f"{folder}: the parquet files hold several splits ({', '.join(found)}); choose one with --split"
            )
        return files
    chosen = [f for f, relative in zip(files, relatives, strict=True) if in_split(relative, split)]
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


def open_parquet_files(source: Path, root: Path, files: list[Path], options: Options) -> Dataset:
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
    picked = pick_columns(first_shown, first_schema.names, options)
    class_names = feature_class_names(hf_features(first_schema), picked.label)

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
                                f"columns: {columns_text(schema.names)}")
        kind = image_kind(shown, picked.image, schema.field(picked.image).type)
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
                    image = path_image(where, picked.image, record.get(picked.image), file.parent)
                else:
                    image = ParquetImage(name=f"{where} column {picked.image}", file=str(file.absolute()),
                                         row_group=group, index=offset, column=picked.image)
                yield record_fields(where, f"row {file_row} of {shown}", index + file_row, record, picked, image,
                                     options, class_names)
                file_row += 1

    footers = [file.relative_to(root).as_posix().encode() + b"\0" + _parquet_footer(file) for file in files]
    return assemble_dataset(
        source.absolute(),
        rows(),
        sha256=fingerprint(footers, options, picked, options.split),
        kind="parquet",
        prompt_template=options.prompt_template,
        declared=options.declared,
        no_labels=options.no_labels,
        name=options.name or (source.name if source.is_dir() else source.stem),
        label_names=class_names,
    )


def hf_features(schema: pa.Schema) -> object:
    """The features datasets stores in a parquet file's metadata (``None`` if absent or unreadable)."""
    raw = (schema.metadata or {}).get(b"huggingface")
    if raw is None:
        return None
    try:
        return json.loads(raw).get("info", {}).get("features")
    except (ValueError, AttributeError):
        return None
