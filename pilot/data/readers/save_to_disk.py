"""``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk`` folders, read with ``datasets.load_from_disk``
(memory-mapped arrow)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from pilot.data.images import EmbeddedImage
from pilot.data.manifest import Dataset, ManifestError, RowFields, assemble_dataset
from pilot.data.readers.common import (
    BATCH_ROWS,
    Options,
    cell_bytes,
    fingerprint,
    image_kind,
    path_image,
    pick_columns,
    record_fields,
)

_FINGERPRINT_EDGE = 64 * 1024


@dataclass(frozen=True)
class ArrowImage(EmbeddedImage):
    """One cell of a ``save_to_disk`` dataset's image column, read from the memory-mapped arrow files."""

    folder: str
    """The folder holding the split's ``state.json``."""
    row: int
    column: str

    def read_bytes(self) -> bytes:
        table = _saved_rows(self.folder, _state_stamp(self.folder))[self.row]
        return cell_bytes(self.name, table.column(self.column)[0].as_py(), Path(self.folder))


def _state_stamp(folder: str) -> int:
    return os.stat(Path(folder) / "state.json").st_mtime_ns


@lru_cache(maxsize=4)
def _saved_rows(folder: str, stamp: int) -> Any:
    """The split at ``folder`` as rows of arrow tables (memory-mapped: a row reads only its own cells)."""
    import datasets

    del stamp  # part of the cache key only: a dataset saved again is opened again
    return datasets.load_from_disk(folder).with_format("arrow")


def open_saved(folder: Path, options: Options) -> Dataset:
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
    if options.split is not None and not dict_file.is_file() and saved_split != options.split:
        held = "one dataset saved without a split name" if saved_split is None else f"the {saved_split!r} split"
        raise ManifestError(f"{folder}: no split {options.split!r}: the folder holds {held}; drop --split")
    try:
        dataset = datasets.load_from_disk(str(split_folder))
    except Exception as exc:  # datasets raises FileNotFoundError, ValueError, pyarrow errors
        raise ManifestError(f"{split_folder}: cannot open the saved dataset ({type(exc).__name__}: {exc})") from exc

    shown = str(split_folder)
    picked = pick_columns(shown, dataset.column_names, options)
    kind = image_kind(shown, picked.image, dataset.data.schema.field(picked.image).type)
    class_names = None
    if picked.label is not None and isinstance(dataset.features[picked.label], datasets.ClassLabel):
        class_names = list(dataset.features[picked.label].names)
    read = picked.values + ([picked.image] if kind == "path" else [])

    def records() -> Iterator[dict[str, Any]]:
        if not read:
            yield from ({} for _ in range(dataset.num_rows))
            return
        # Arrow format: no column is decoded (images, ClassLabels) and a saved torch/numpy format is ignored.
        for batch in dataset.select_columns(read).with_format("arrow").iter(batch_size=BATCH_ROWS):
            yield from batch.to_pylist()

    def rows() -> Iterator[RowFields]:
        for index, record in enumerate(records()):
            where = f"{shown} row {index}"
            image: Path | EmbeddedImage
            if kind == "path":
                image = path_image(where, picked.image, record.get(picked.image), split_folder)
            else:
                image = ArrowImage(name=f"{where} column {picked.image}", folder=str(split_folder.absolute()),
                                   row=index, column=picked.image)
            yield record_fields(where, f"row {index}", index, record, picked, image, options, class_names)

    for meta in ("state.json", "dataset_info.json"):
        if (split_folder / meta).is_file():
            parts.append((split_folder / meta).read_bytes())
    for entry in state.get("_data_files", []):
        parts.append(_file_edges(split_folder / str(entry.get("filename", ""))))
    return assemble_dataset(
        folder.absolute(),
        rows(),
        sha256=fingerprint(parts, options, picked, split),
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
