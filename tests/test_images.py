"""Every Pillow mode comes back as bounded 8-bit RGB; broken files raise ImageError naming the file."""

import io
import os
from dataclasses import dataclass, field

import numpy as np
import pytest
from PIL import Image, ImageFile

from pilot.data.images import BytesImage, EmbeddedImage, ImageError, load_image

RED = (200, 30, 40)


def save(img, path, **kwargs):
    img.save(path, **kwargs)
    return path


def pixel(img, xy=(0, 0)):
    assert img.mode == "RGB"
    return img.getpixel(xy)


def test_rgb_png_roundtrip(tmp_path):
    img = load_image(save(Image.new("RGB", (8, 6), RED), tmp_path / "a.png"))
    assert img.size == (8, 6)
    assert pixel(img) == RED


@pytest.mark.parametrize(("mode", "value", "expected"), [("L", 77, 77), ("1", 1, 255), ("1", 0, 0)])
def test_greyscale(tmp_path, mode, value, expected):
    img = load_image(save(Image.new(mode, (4, 4), value), tmp_path / "g.png"))
    assert pixel(img) == (expected,) * 3


def test_rgba_transparent_is_white_and_opaque_kept(tmp_path):
    src = Image.new("RGBA", (4, 2), (10, 20, 30, 0))
    src.putpixel((1, 0), (*RED, 255))
    src.putpixel((2, 0), (0, 0, 0, 128))
    img = load_image(save(src, tmp_path / "a.png"))
    assert pixel(img, (0, 0)) == (255, 255, 255)
    assert pixel(img, (1, 0)) == RED
    assert all(abs(c - 127) <= 1 for c in pixel(img, (2, 0)))  # half-transparent black over white


def test_la_transparent_is_white(tmp_path):
    img = load_image(save(Image.new("LA", (3, 3), (0, 0)), tmp_path / "la.png"))
    assert pixel(img) == (255, 255, 255)


def test_palette_without_and_with_transparency(tmp_path):
    pal = Image.new("P", (4, 4), 1)
    pal.putpalette([0, 0, 0, *RED, 0, 255, 0] + [0] * (256 * 3 - 9))
    pal.putpixel((0, 0), 2)
    img = load_image(save(pal, tmp_path / "p.png"))
    assert pixel(img, (1, 1)) == RED and pixel(img, (0, 0)) == (0, 255, 0)

    img = load_image(save(pal, tmp_path / "pt.png", transparency=1))
    assert pixel(img, (1, 1)) == (255, 255, 255)
    assert pixel(img, (0, 0)) == (0, 255, 0)

    img = load_image(save(pal, tmp_path / "pt.gif", transparency=1))
    assert pixel(img, (1, 1)) == (255, 255, 255)


@pytest.mark.parametrize(("raw", "expected"), [(257 * 128, 128), (32768, 128), (65535, 255), (0, 0), (1000, 4)])
def test_16bit_png_scaled_by_257(tmp_path, raw, expected):
    src = Image.fromarray(np.full((4, 5), raw, dtype=np.uint16))
    path = save(src, tmp_path / "16.png")
    with Image.open(path) as check:
        assert check.mode.startswith("I")  # I;16 (or I on older Pillow)
    assert pixel(load_image(path)) == (expected,) * 3


@pytest.mark.parametrize("mode", ["I;16", "I;16B", "I"])
def test_16bit_modes_in_tiff(tmp_path, mode):
    arr = np.array([[0, 257 * 128, 65535]], dtype=np.uint16)
    src = Image.fromarray(arr).convert(mode) if mode != "I;16B" else Image.frombytes(mode, (3, 1), arr.astype(">u2"))
    assert src.mode == mode
    img = load_image(save(src, tmp_path / "16.tif"))
    assert [pixel(img, (x, 0))[0] for x in range(3)] == [0, 128, 255]


def test_32bit_int_outside_16bit_range_is_stretched(tmp_path):
    src = Image.fromarray(np.array([[-100, 0, 100_000]], dtype=np.int32))
    img = load_image(save(src, tmp_path / "i.tif"))
    assert [pixel(img, (x, 0))[0] for x in range(3)] == [0, 0, 255]


def test_float_image(tmp_path):
    src = Image.fromarray(np.array([[0.0, 127.6, 255.0, np.nan]], dtype=np.float32))
    img = load_image(save(src, tmp_path / "f.tif"))
    assert [pixel(img, (x, 0))[0] for x in range(4)] == [0, 128, 255, 0]
    img = load_image(save(Image.fromarray(np.array([[-1.0, 0.0, 1.0]], dtype=np.float32)), tmp_path / "g.tif"))
    assert [pixel(img, (x, 0))[0] for x in range(3)] == [0, 128, 255]


def test_cmyk_jpeg_and_tiff(tmp_path):
    cmyk = Image.new("CMYK", (16, 16), (0, 255, 255, 0))  # pure red
    for name in ("c.jpg", "c.tif"):
        r, g, b = pixel(load_image(save(cmyk, tmp_path / name)))
        assert r > 240 and g < 15 and b < 15, (name, r, g, b)


def test_ycbcr(tmp_path):
    src = Image.new("RGB", (16, 16), RED).convert("YCbCr")
    img = load_image(save(src, tmp_path / "y.tif"))
    assert all(abs(a - b) <= 3 for a, b in zip(pixel(img), RED, strict=True))


def test_exif_orientation_6_rotates(tmp_path):
    src = Image.new("RGB", (40, 20), (0, 0, 255))
    src.paste(RED, (0, 0, 10, 20))  # red band on the left
    exif = Image.Exif()
    exif[0x0112] = 6
    img = load_image(save(src, tmp_path / "o.jpg", exif=exif.tobytes(), quality=95))
    assert img.size == (20, 40)
    r, g, b = pixel(img, (10, 2))  # orientation 6 = rotate 90 clockwise for display: left band goes on top
    assert r > 150 and b < 100


def test_large_jpeg_is_shrunk_to_max_side(tmp_path):
    path = save(Image.new("RGB", (5000, 3000), RED), tmp_path / "big.jpg", quality=70)
    img = load_image(path)
    assert max(img.size) == 2048 and img.size == (2048, 1229)
    assert all(abs(a - b) <= 6 for a, b in zip(pixel(img, (1000, 600)), RED, strict=True))


def test_large_png_is_shrunk_and_small_max_side(tmp_path):
    path = save(Image.new("L", (3000, 5000), 9), tmp_path / "big.png")
    assert load_image(path).size == (1229, 2048)
    assert load_image(path, max_side=100).size == (60, 100)


def test_small_image_not_enlarged(tmp_path):
    assert load_image(save(Image.new("RGB", (30, 10)), tmp_path / "s.png")).size == (30, 10)


def test_missing_file(tmp_path):
    with pytest.raises(ImageError, match="missing.png"):
        load_image(tmp_path / "missing.png")


def test_directory(tmp_path):
    with pytest.raises(ImageError, match="folder"):
        load_image(tmp_path)


def test_not_an_image(tmp_path):
    path = tmp_path / "noise.jpg"
    path.write_bytes(os.urandom(2000))
    with pytest.raises(ImageError, match="noise.jpg"):
        load_image(path)


def test_corrupt_jpeg(tmp_path):
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), RED).save(buf, "JPEG")
    data = buf.getvalue()
    path = tmp_path / "corrupt.jpg"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match="corrupt.jpg"):
        load_image(path)
    path.write_bytes(data[:200] + b"\x00" * 20)  # header intact, scan data gone
    with pytest.raises(ImageError, match="corrupt.jpg"):
        load_image(path)


@pytest.mark.parametrize("load_truncated", [False, True])
def test_truncated_png(tmp_path, load_truncated, monkeypatch):
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "PNG")
    path = tmp_path / "cut.png"
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", load_truncated)
    max_pixels = Image.MAX_IMAGE_PIXELS
    with pytest.raises(ImageError, match="cut.png"):
        load_image(path)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is load_truncated  # restored
    assert max_pixels == Image.MAX_IMAGE_PIXELS


def test_oversized_header_is_refused_without_decoding(tmp_path):
    # A valid PNG header claiming 50,000 x 40,000 pixels, with no image data.
    import struct
    import zlib

    ihdr = struct.pack(">IIBBBBB", 50_000, 40_000, 8, 0, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    data = b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk + struct.pack(">I", zlib.crc32(chunk))
    path = tmp_path / "bomb.png"
    path.write_bytes(data)
    with pytest.raises(ImageError, match="bomb.png"):
        load_image(path)


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc")
def test_no_file_handle_left_open(tmp_path):
    good = save(Image.new("RGB", (8, 8)), tmp_path / "ok.png")
    bad = tmp_path / "bad.png"
    bad.write_bytes(good.read_bytes()[:40])
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(5):
        load_image(good)
        with pytest.raises(ImageError):
            load_image(bad)
    assert len(os.listdir("/proc/self/fd")) == before


# -- embedded images (bytes inside a dataset file) --------------------------------------------------


@dataclass(frozen=True)
class CountingImage(EmbeddedImage):
    """An embedded image that counts its reads (to check they happen only on load)."""

    data: bytes = b""
    reads: list = field(default_factory=list, compare=False)

    def read_bytes(self):
        self.reads.append(1)
        return self.data


@dataclass(frozen=True)
class FailingImage(EmbeddedImage):
    def read_bytes(self):
        raise OSError("disk on fire")


def encoded(img, fmt="PNG", **kwargs):
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


def test_embedded_bytes_load_like_a_file(tmp_path):
    src = Image.new("RGBA", (5, 3), (*RED, 255))
    src.putpixel((0, 0), (0, 0, 0, 0))
    from_file = load_image(save(src, tmp_path / "a.png"))
    from_bytes = load_image(BytesImage(name="data.parquet row 0 column image", data=encoded(src)))
    assert from_bytes.mode == "RGB" and from_bytes.size == (5, 3)
    assert np.array_equal(np.asarray(from_bytes), np.asarray(from_file))
    assert pixel(from_bytes, (0, 0)) == (255, 255, 255) and pixel(from_bytes, (1, 0)) == RED


def test_embedded_bytes_are_read_only_when_loaded():
    image = CountingImage(name="x row 1", data=encoded(Image.new("RGB", (4, 4), RED)))
    assert image.reads == []
    assert pixel(load_image(image)) == RED
    assert image.reads == [1]


def test_embedded_exif_orientation_and_max_side():
    src = Image.new("RGB", (40, 20), (0, 0, 255))
    src.paste(RED, (0, 0, 10, 20))
    exif = Image.Exif()
    exif[0x0112] = 6
    img = load_image(BytesImage(name="o", data=encoded(src, "JPEG", exif=exif.tobytes(), quality=95)))
    assert img.size == (20, 40)
    r, g, b = pixel(img, (10, 2))
    assert r > 150 and b < 100
    tall = BytesImage(name="big", data=encoded(Image.new("L", (300, 500), 9)))
    assert load_image(tall, max_side=100).size == (60, 100)


@pytest.mark.parametrize("load_truncated", [False, True])
def test_embedded_broken_bytes_name_the_image(load_truncated, monkeypatch):
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", load_truncated)
    rng = np.random.default_rng(0)
    data = encoded(Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)))
    cases = {
        "cut row 3": data[: len(data) // 2],
        "noise row 4": os.urandom(500),
        "empty row 5": b"",
    }
    for name, payload in cases.items():
        with pytest.raises(ImageError, match=name):
            load_image(BytesImage(name=name, data=payload))
    with pytest.raises(ImageError, match="failing row 6.*disk on fire"):
        load_image(FailingImage(name="failing row 6"))
    assert ImageFile.LOAD_TRUNCATED_IMAGES is load_truncated


def test_embedded_oversized_header_is_refused():
    import struct
    import zlib

    ihdr = struct.pack(">IIBBBBB", 50_000, 40_000, 8, 0, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    data = b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk + struct.pack(">I", zlib.crc32(chunk))
    with pytest.raises(ImageError, match="bomb row 0"):
        load_image(BytesImage(name="bomb row 0", data=data))


def test_embedded_image_is_abstract():
    with pytest.raises(TypeError):
        EmbeddedImage(name="x")
