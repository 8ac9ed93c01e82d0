"""Open a dataset as teams keep it: a manifest, a Hugging Face ``save_to_disk`` folder, parquet files, an
imagefolder, or a Hub dataset id. :func:`open_dataset` returns the same :class:`~pilot.data.manifest.Dataset` as
:func:`~pilot.data.manifest.load_manifest`. Each kind has its reader in :mod:`pilot.data.readers`.

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

import os
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

from pilot.data.manifest import Dataset, ManifestError, dataset_task, declared_labels, load_manifest
from pilot.data.readers.common import DEFAULT_COLUMNS, OPTION_FLAGS, Options
from pilot.data.readers.hub import open_hub
from pilot.data.readers.imagefolder import imagefolder_metadata, open_imagefolder
from pilot.data.readers.parquet import ParquetImage, in_split, open_parquet_files, parquet_files, select_split
from pilot.data.readers.save_to_disk import ArrowImage, open_saved

__all__ = ["ArrowImage", "ParquetImage", "open_dataset"]

MANIFEST_SUFFIXES = {".csv", ".jsonl", ".ndjson", ".json"}


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
    id_column: str | None = None,
) -> Dataset:
    """Open ``source`` (see the module docstring for the kinds) as a :class:`Dataset`; every problem is a
    :class:`ManifestError` naming the file (and row or line) or the id.

    ``task``, ``prompt_template``, ``labels`` and ``no_labels`` mean what they mean for
    :func:`~pilot.data.manifest.load_manifest`; ``id_column`` names the column of the ids (default ``id`` if there
    is one, else the row index; a manifest's and an imagefolder's: the image path); ``name`` defaults to the
    folder's name (a file's stem, a Hub id).
    """
    text = os.fspath(source)
    path = Path(text)
    columns = {"image": image_column, "question": question_column, "answer": answer_column, "label": label_column}
    if path.is_file() and path.suffix.lower() in MANIFEST_SUFFIXES:
        return _open_manifest(path, columns, task=task, split=split, prompt_template=prompt_template,
                              labels=labels, no_labels=no_labels, name=name, id_column=id_column)
    options = Options(
        columns=columns,
        default_task=dataset_task(path, task),
        split=split,
        prompt_template=prompt_template,
        declared=declared_labels(path, labels),
        no_labels=no_labels,
        name=name,
        task_given=task is not None,
        id_column=id_column,
    )
    if path.is_file():
        if path.suffix.lower() != ".parquet":
            raise ManifestError(
                f"{path}: unknown dataset file {path.suffix!r}; pass a manifest (.csv, .jsonl), a .parquet file, or "
                "a dataset folder (save_to_disk, parquet files, imagefolder with metadata.jsonl)"
            )
        if split is not None and not in_split(PurePosixPath(path.name), split):
            raise ManifestError(
                f"{path}: --split {split!r} does not match this file's name; pass the folder holding the split's "
                "files, or drop --split"
            )
        return open_parquet_files(path, path.parent, [path], options)
    if path.is_dir():
        return _open_folder(path, options)
    if _looks_like_path(text):
        raise ManifestError(f"{text}: dataset file or folder not found; check the path")
    return open_hub(text, options)


def _open_manifest(path: Path, columns: dict[str, str], *, task: str | None, split: str | None,
                   prompt_template: str | None, labels: Sequence[str] | None, no_labels: bool,
                   name: str | None, id_column: str | None) -> Dataset:
    changed = [f"{OPTION_FLAGS[option]} {value!r}" for option, value in columns.items()
               if value != DEFAULT_COLUMNS[option]]
    if changed:
        raise ManifestError(
            f"{path}: {', '.join(changed)}: a manifest's columns are fixed (image, label, question, answer or answers, "
            "id, task); rename the manifest's columns instead"
        )
    if split is not None:
        raise ManifestError(f"{path}: --split {split!r}: a manifest has no splits; drop --split")
    return load_manifest(path, prompt_template=prompt_template, labels=labels, name=name, no_labels=no_labels,
                         task=task, id_column=id_column)


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


def _open_folder(folder: Path, options: Options) -> Dataset:
    if (folder / "state.json").is_file() or (folder / "dataset_dict.json").is_file():
        return open_saved(folder, options)
    metadata = imagefolder_metadata(folder, options.split)
    if metadata is not None:
        return open_imagefolder(folder, metadata, options)
    files = parquet_files(folder)
    if files:
        return open_parquet_files(folder, folder, select_split(folder, files, options.split), options)
    raise ManifestError(
        f"{folder}: not a dataset folder: no state.json or dataset_dict.json (datasets' save_to_disk), no "
        "metadata.jsonl / metadata.csv (imagefolder), no .parquet files; for a manifest pass its .csv / .jsonl file"
    )
