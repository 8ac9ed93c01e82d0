"""Hugging Face's imagefolder: ``metadata.jsonl`` / ``metadata.csv`` (or ``<split>/metadata.*``) naming each image
in its ``file_name`` column; the rows are read as manifest rows are."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

from pilot.data.manifest import (
    Dataset,
    ManifestError,
    RowFields,
    assemble_dataset,
    cell_text,
    content_digest,
    default_id,
    manifest_references,
    parse_references,
    read_rows,
    resolve_image,
)
from pilot.data.readers.common import Options, fingerprint, pick_columns, record_fields

IMAGEFOLDER_METADATA = ("metadata.jsonl", "metadata.csv")


def imagefolder_metadata(folder: Path, split: str | None) -> Path | None:
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


def open_imagefolder(source: Path, metadata: Path, options: Options) -> Dataset:
    data, raw_rows = read_rows(metadata, required=())
    names: list[str] = []
    for row in raw_rows:
        names.extend(key for key in row.values if key not in names)
    picked = pick_columns(str(metadata), names, options, image_default="file_name", normalise=True)
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
            fields = record_fields(where, f"line {row.line}", row.line - 1, record, picked, image, options, None)
            if picked.answer in ("answer", "answers"):
                references = manifest_references(where, fields.task, row.values, csv_cells=csv_cells)
            elif picked.answer is not None:
                references = parse_references(where, f"column {picked.answer!r}", fields.task,
                                              row.values.get(picked.answer))
            else:
                references = ()
            own_id = cell_text(where, picked.id, row.values.get(picked.id)).strip() if picked.id else ""
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

    built = assemble_dataset(
        source.absolute(),
        rows(),
        sha256="",
        kind="imagefolder",
        prompt_template=options.prompt_template,
        declared=options.declared,
        no_labels=options.no_labels,
        name=options.name or source.absolute().name,
    )
    # The metadata's bytes and the images' sizes and times, as for a manifest (pilot.data.manifest.content_digest).
    images = content_digest(b"", built.items).encode()
    return replace(built, sha256=fingerprint([metadata.name.encode(), data, images], options, picked, options.split))
