"""Load any image Pillow reads as a bounded-size 8-bit RGB image, or raise :class:`ImageError`.

Decisions a caller should know:

* Transparency (LA, RGBA, PA, palette or grey/RGB with a ``transparency`` entry) is composited over white.
* High bit depths are mapped to 8 bits by the *nominal* range of their mode when the data fit in it, and
  by the image's own min..max otherwise (one rule for all modes):

  - ``I;16``, ``I;16B``, ``I;16L``, ...: 0..65535 -> 0..255, i.e. ``round(v / 257)``;
  - ``I`` (32-bit int; 16-bit PNG/TIFF often decode to it): 0..65535 as above if all values fit,
    otherwise min..max -> 0..255;
  - ``F`` (32-bit float): Pillow's convention 0..255 if all finite values fit, otherwise min..max -> 0..255;
    non-finite values count as 0.

  A constant image outside the nominal range maps to 0.
* The EXIF orientation is applied (a damaged EXIF block is ignored, not an error); only the first frame of
  animated or multi-page files is used.
* Images over :data:`MAX_PIXELS` (40,000 x 40,000 pixels) are refused before decoding. Up to that limit,
  JPEGs are decoded at reduced scale (``draft``); other formats are decoded in full and then shrunk, so a
  very large PNG or TIFF still needs its full size in memory once.
* The result is shrunk (never enlarged) to fit ``max_side`` x ``max_side``, keeping the aspect ratio.
* Truncated files raise :class:`ImageError` even if some other code set ``ImageFile.LOAD_TRUNCATED_IMAGES``:
  while this function opens and decodes a file it holds a module lock and sets Pillow's two globals
  (``Image.MAX_IMAGE_PIXELS`` to :data:`MAX_PIXELS`, ``ImageFile.LOAD_TRUNCATED_IMAGES`` to False), restoring
  them afterwards. Decoding through this function is therefore serialised within a process.
* Images kept inside a dataset's files (parquet, arrow) come as an :class:`EmbeddedImage`: its bytes are read
  (:meth:`EmbeddedImage.read_bytes`) only when the image is loaded, so a dataset never holds all its images in
  memory; the checks above are the same, and errors name the image's :attr:`~EmbeddedImage.name`.
"""

from __future__ import annotations

import io
import os
import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageFile, ImageOps

__all__ = ["MAX_PIXELS", "BytesImage", "EmbeddedImage", "ImageError", "load_image"]

MAX_PIXELS = 40_000 * 40_000
"""Images with more pixels than this are refused."""

_WHITE = (255, 255, 255)
_PILLOW_GLOBALS_LOCK = threading.Lock()


class ImageError(Exception):
    """An image that cannot be used; the message names the file (or the embedded image) and the reason."""


@dataclass(frozen=True)
class EmbeddedImage(ABC):
    """An image stored inside a dataset file, read on demand; subclasses say where the bytes are.

    Keep subclasses small and picklable (paths and indices, not open files or tables): a dataset has one per
    item, and the bytes are fetched only by :func:`load_image`.
    """

    name: str
    """Names the image in error messages, e.g. ``data/train-0.parquet row 17 column image``."""

    @abstractmethod
    def read_bytes(self) -> bytes:
        """The encoded image (PNG, JPEG, ...). May raise :class:`ImageError` or ``OSError``."""


@dataclass(frozen=True)
class BytesImage(EmbeddedImage):
    """Encoded image bytes already in memory (small datasets, tests)."""

    data: bytes = field(repr=False)

    def read_bytes(self) -> bytes:
        return self.data


def load_image(source: str | os.PathLike[str] | EmbeddedImage, max_side: int = 2048) -> Image.Image:
    """Return the image at ``source`` (a path, or an :class:`EmbeddedImage`) as RGB, EXIF-oriented, shrunk to fit
    ``max_side`` x ``max_side``."""
    if max_side < 1:
        raise ValueError(f"max_side must be at least 1, got {max_side}")
    if isinstance(source, EmbeddedImage):
        name = source.name
        fp: BinaryIO = io.BytesIO(_embedded_bytes(source))
    else:
        name = str(Path(source))
        fp = _open_file(Path(source))
    img = _decode(fp, name, max_side)
    try:
        img = _to_rgb(img)
        img.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    except Exception as exc:
        raise ImageError(f"{name}: cannot convert the image ({_reason(exc)})") from exc
    return img


def _reason(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _fit(size: tuple[int, int], max_side: int) -> tuple[int, int]:
    width, height = size
    scale = min(1.0, max_side / max(width, height, 1))
    return max(1, round(width * scale)), max(1, round(height * scale))


def _embedded_bytes(image: EmbeddedImage) -> bytes:
    try:
        data = image.read_bytes()
    except ImageError:
        raise
    except Exception as exc:  # a reader's OSError, pyarrow error, ...: that sample's error, not the run's
        raise ImageError(f"{image.name}: cannot read the image bytes ({_reason(exc)})") from exc
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ImageError(f"{image.name}: the image reader returned {type(data).__name__}, not bytes")
    if not data:
        raise ImageError(f"{image.name}: the image is empty (0 bytes)")
    return bytes(data)


def _open_file(path: Path) -> BinaryIO:
    try:
        return open(path, "rb")  # noqa: SIM115 - closed by _decode
    except FileNotFoundError as exc:
        raise ImageError(f"{path}: image file not found") from exc
    except IsADirectoryError as exc:
        raise ImageError(f"{path}: is a folder, not an image file") from exc
    except OSError as exc:
        raise ImageError(f"{path}: cannot open the image ({exc.strerror or exc})") from exc


def _decode(fp: BinaryIO, name: str, max_side: int) -> Image.Image:
    """Open, check the size, draft (JPEG) and fully load the image in ``fp``; ``fp`` is closed on return."""
    try:
        with _PILLOW_GLOBALS_LOCK:
            saved = Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES
            Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES = MAX_PIXELS, False
            try:
                img = Image.open(fp)
                width, height = img.size
                if width * height > MAX_PIXELS:
                    raise ImageError(
                        f"{name}: image is {width} x {height} pixels, over the limit of 40,000 x 40,000 "
                        f"({MAX_PIXELS:,} pixels)"
                    )
                if img.format == "JPEG":
                    img.draft("RGB", _fit(img.size, max_side))
                img.load()
            finally:
                Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES = saved
        try:  # while the file is open: TIFF reads its EXIF from the file
            img = ImageOps.exif_transpose(img)  # a new image, detached from the file
        except Exception:  # a damaged EXIF block should not lose the picture: keep it unrotated
            img = img.copy()
    except ImageError:
        raise
    except Image.UnidentifiedImageError as exc:
        raise ImageError(f"{name}: not an image Pillow can read (unknown or corrupt format)") from exc
    except Image.DecompressionBombError as exc:
        raise ImageError(f"{name}: image is too large ({exc})") from exc
    except Exception as exc:  # decoders raise OSError, SyntaxError, ValueError, struct.error, ...
        raise ImageError(f"{name}: cannot decode the image, it may be corrupt or truncated ({_reason(exc)})") from exc
    finally:
        fp.close()
    return img


def _to_rgb(img: Image.Image) -> Image.Image:
    mode = img.mode
    if mode == "RGB" and "transparency" not in img.info:
        return img
    if mode.startswith("I;16") or mode in ("I", "F"):
        return Image.fromarray(_to_uint8(img), mode="L").convert("RGB")
    if mode in ("LA", "La", "PA", "RGBA", "RGBa") or (
        "transparency" in img.info and mode in ("1", "L", "P", "RGB")
    ):
        rgba = img.convert("RGBA")
        out = Image.new("RGB", rgba.size, _WHITE)
        out.paste(rgba, mask=rgba.getchannel("A"))
        return out
    if mode in ("1", "L", "P", "RGBX", "CMYK", "YCbCr", "HSV"):
        return img.convert("RGB")
    if mode == "LAB":
        from PIL import ImageCms  # LAB needs a colour transform, not a plain convert

        return ImageCms.applyTransform(
            img, ImageCms.buildTransform(ImageCms.createProfile("LAB"), ImageCms.createProfile("sRGB"), "LAB", "RGB")
        )
    raise ValueError(f"unsupported image mode {mode!r}")


def _to_uint8(img: Image.Image) -> np.ndarray:
    """Map a 16-bit, 32-bit int or float greyscale image to uint8 (see the module docstring for the rule)."""
    arr = np.asarray(img)
    values = np.nan_to_num(np.asarray(arr, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    if img.mode == "F":
        low, high, scale = 0.0, 255.0, 1.0
    else:
        low, high, scale = 0.0, 65535.0, 257.0
    lo, hi = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if lo < low or hi > high:
        scaled = (values - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(values)
    else:
        scaled = values / scale
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
