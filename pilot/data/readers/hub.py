"""A Hugging Face Hub dataset id, streamed with ``datasets.load_dataset(id, split=split, streaming=True)``; its images
are kept in memory as they arrive."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

from pilot.data.images import BytesImage, EmbeddedImage, ImageError
from pilot.data.manifest import Dataset, ManifestError, RowFields, assemble_dataset
from pilot.data.readers.common import Options, cell_bytes, fingerprint, pick_columns, record_fields

HUB_PROBE_TIMEOUT_S = 3.0
"""How long the Hub may take to answer one request before a Hub id fails (datasets' own retries take ~23 s)."""


def _unreachable(dataset_id: str, reason: str) -> ManifestError:
    return ManifestError(
        f"{dataset_id}: no local file or folder of that name, and the machine could not reach the Hugging Face Hub "
        f"to stream it as a dataset id ({reason}); pass a local folder (one saved with Dataset.save_to_disk, "
        "parquet files, an imagefolder) or a .parquet file instead. On a machine without the Hub, set "
        "HF_HUB_OFFLINE=1 so that Hugging Face libraries stop trying to reach it"
    )


def probe_hub(dataset_id: str, timeout_s: float = HUB_PROBE_TIMEOUT_S) -> None:
    """One HEAD request to the Hub's endpoint (``HF_ENDPOINT``, proxies from the environment), so that an unreachable
    Hub fails in seconds instead of after the retries of ``datasets``; any HTTP answer counts as reachable.

    The request runs in a daemon thread waited on for ``timeout_s``: the socket timeout does not bound a name
    lookup, which a broken resolver can hold for much longer."""
    import threading
    import urllib.error
    import urllib.request

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return  # datasets then fails at once, naming offline mode
    endpoint = constants.ENDPOINT
    outcome: list[BaseException | None] = []

    def request() -> None:
        try:
            with urllib.request.urlopen(urllib.request.Request(endpoint, method="HEAD"), timeout=timeout_s):
                pass
            outcome.append(None)
        except urllib.error.HTTPError:
            outcome.append(None)  # the Hub answered (even 4xx/5xx): datasets takes it from here
        except (OSError, ValueError) as exc:  # URLError, timeouts, refused connections, DNS failures
            outcome.append(exc)

    probe = threading.Thread(target=request, name="hub-probe", daemon=True)
    probe.start()
    probe.join(timeout_s)
    if not outcome:
        raise _unreachable(dataset_id, f"{endpoint}: no answer within {timeout_s:g} s")
    if outcome[0] is not None:
        raise _unreachable(dataset_id, f"{endpoint}: {getattr(outcome[0], 'reason', outcome[0])}") from outcome[0]


def open_hub(dataset_id: str, options: Options) -> Dataset:
    import datasets

    probe_hub(dataset_id)
    try:
        stream = datasets.load_dataset(dataset_id, split=options.split, streaming=True)
    except Exception as exc:  # offline, unknown id, gated, no such split: all end here, named
        reason = f"{type(exc).__name__}: {exc}"
        if isinstance(exc, ConnectionError) or "offline" in str(exc).lower():
            raise _unreachable(dataset_id, reason) from exc
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
    picked = pick_columns(dataset_id, names, options)
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
                data = cell_bytes(f"{where} column {picked.image}", cell, Path("."))
            except ImageError as exc:
                raise ManifestError(str(exc)) from exc
            image = BytesImage(name=f"{where} column {picked.image}", data=data)
            fields = record_fields(where, f"row {index}", index, record, picked, image, options, class_names)
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
    return replace(built, sha256=fingerprint(digest_parts, options, picked, split))
