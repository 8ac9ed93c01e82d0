"""What a manifest's content digest costs: ``load_manifest`` with and without it, at several sizes.

    python bench/data_digest.py                  # 10k and 100k images in a temporary folder
    python bench/data_digest.py --sizes 1000 20000 --folder /data/scratch   # on the disk the images live on

The digest (``pilot.data.manifest.content_digest``) hashes the manifest's bytes and each image's path, size and
modification time: one ``os.stat`` per image, no image read. Prints one table: rows, the whole ``load_manifest``
(median of --repeats), the digest alone, and its share. The images are tiny files: a stat costs the same for a
large one.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pilot.data.manifest import content_digest, load_manifest  # noqa: E402


def write_images(folder: Path, n: int) -> Path:
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    lines = ["image,label"]
    for i in range(n):
        path = images / f"{i:06d}.png"
        if not path.exists():
            path.write_bytes(b"x" * (i % 97))
        lines.append(f"images/{i:06d}.png,{'ab'[i % 2]}")
    manifest = folder / f"manifest-{n}.csv"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--folder", help="where to write the images (default: a temporary folder)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.folder) as tmp:
        print(f"{'images':>8}  {'load_manifest s':>15}  {'digest s':>8}  {'share':>6}")
        for n in args.sizes:
            manifest = write_images(Path(tmp), n)
            data = manifest.read_bytes()
            loads, digests = [], []
            for _ in range(args.repeats):
                started = time.perf_counter()
                dataset = load_manifest(manifest)
                loads.append(time.perf_counter() - started)
                started = time.perf_counter()
                content_digest(data, dataset.items)
                digests.append(time.perf_counter() - started)
            load_s, digest_s = statistics.median(loads), statistics.median(digests)
            print(f"{n:>8}  {load_s:>15.2f}  {digest_s:>8.2f}  {digest_s / load_s:>6.1%}")


if __name__ == "__main__":
    main()
