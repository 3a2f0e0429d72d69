"""read_image and probe_image: every mode converted the documented way, broken files named."""

from __future__ import annotations

import struct
import time
import zlib

import numpy as np
import pytest
from PIL import Image

from headstart.data.images import MAX_PIXELS, probe_image, read_image
from headstart.errors import HeadstartError
from helpers import truncated_jpeg, two_colour_jpeg


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image).astype(int)


def declared_png(path, width: int, height: int) -> None:
    """A valid 1×1 PNG whose IHDR is patched to declare width × height (CRC recomputed)."""
    Image.new("L", (1, 1)).save(path)
    data = bytearray(path.read_bytes())
    # Signature (8) + chunk length (4) + "IHDR" (4), then width and height as big-endian uint32.
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    path.write_bytes(bytes(data))


def test_rgb_unchanged(tmp_path):
    path = tmp_path / "rgb.png"
    Image.new("RGB", (3, 2), (10, 20, 30)).save(path)
    image = read_image(path)
    assert image.mode == "RGB" and image.size == (3, 2)
    assert (pixels(image) == [10, 20, 30]).all()


def test_grey_is_replicated(tmp_path):
    path = tmp_path / "grey.png"
    Image.new("L", (4, 4), 77).save(path)
    assert (pixels(read_image(path)) == 77).all()


def test_one_bit_becomes_black_and_white(tmp_path):
    path = tmp_path / "bits.png"
    image = Image.new("1", (4, 1), 0)
    image.putpixel((2, 0), 1)
    image.save(path)
    assert pixels(read_image(path))[0, :, 0].tolist() == [0, 0, 255, 0]


def test_grey_with_alpha_is_composited_on_white(tmp_path):
    path = tmp_path / "la.png"
    image = Image.new("LA", (2, 1), (0, 255))
    image.putpixel((1, 0), (0, 0))  # fully transparent black
    image.save(path)
    out = pixels(read_image(path))
    assert out[0, 0].tolist() == [0, 0, 0]
    assert out[0, 1].tolist() == [255, 255, 255]


def test_rgba_half_transparent_is_blended_with_white(tmp_path):
    path = tmp_path / "rgba.png"
    Image.new("RGBA", (2, 2), (255, 0, 0, 128)).save(path)
    out = pixels(read_image(path))[0, 0]
    assert out[0] == 255
    assert abs(out[1] - 127) <= 1 and abs(out[2] - 127) <= 1


def test_palette_with_transparency(tmp_path):
    path = tmp_path / "palette.png"
    image = Image.new("P", (2, 1))
    image.putpalette([0, 0, 255] + [255, 0, 0] + [0, 0, 0] * 254)
    image.putpixel((0, 0), 0)
    image.putpixel((1, 0), 1)
    image.info["transparency"] = 1
    image.save(path, transparency=1)
    assert Image.open(path).mode == "P"
    out = pixels(read_image(path))
    assert out[0, 0].tolist() == [0, 0, 255]
    assert out[0, 1].tolist() == [255, 255, 255]  # transparent entry shows the white background


def test_sixteen_bit_png_scaled_by_full_range(tmp_path):
    path = tmp_path / "deep.png"
    values = np.array([[0, 257 * 100, 32768, 65535]], dtype=np.uint16)
    Image.fromarray(values).save(path)
    assert Image.open(path).mode.startswith("I")
    out = pixels(read_image(path, mode="L"))
    assert out[0].tolist() == [0, 100, 128, 255]


def test_dark_sixteen_bit_image_stays_dark(tmp_path):
    path = tmp_path / "dark.png"
    Image.fromarray(np.full((2, 2), 1000, dtype=np.uint16)).save(path)
    assert (pixels(read_image(path, mode="L")) == 4).all()  # 1000 / 65535 × 255 ≈ 3.9


def test_cmyk_jpeg_becomes_rgb(tmp_path):
    path = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(path, quality=100)
    assert Image.open(path).mode == "CMYK"
    image = read_image(path)
    assert image.mode == "RGB"
    red, green, blue = pixels(image)[4, 4]
    assert red > 240 and green < 15 and blue < 15


def test_cmyk_tiff_converts_exactly(tmp_path):
    path = tmp_path / "cmyk.tif"
    Image.new("CMYK", (2, 2), (0, 0, 255, 0)).save(path)
    assert pixels(read_image(path))[0, 0].tolist() == [255, 255, 0]


@pytest.mark.parametrize(
    ("orientation", "top_colour"),
    [(1, None), (3, "blue"), (6, "red"), (8, "blue")],
)
def test_exif_orientation_is_applied(tmp_path, orientation, top_colour):
    """A 16×8 JPEG, red left half and blue right half, tagged with an EXIF orientation."""
    path = tmp_path / f"oriented{orientation}.jpg"
    two_colour_jpeg(path, orientation)
    out = pixels(read_image(path))
    if orientation == 1:
        assert out.shape == (8, 16, 3)
        assert out[4, 2, 0] > 200 and out[4, 13, 2] > 200
    elif orientation == 3:  # rotated 180°: blue now on the left
        assert out.shape == (8, 16, 3)
        assert out[4, 2, 2] > 200 and out[4, 13, 0] > 200
    else:  # 6 = turn 90° clockwise (left edge to top), 8 = 90° anticlockwise (left edge to bottom)
        assert out.shape == (16, 8, 3)
        channel = 0 if top_colour == "red" else 2
        assert out[2, 4, channel] > 200
        assert out[13, 4, 2 - channel] > 200


def test_mode_l_uses_luminance(tmp_path):
    path = tmp_path / "red.png"
    Image.new("RGB", (1, 1), (255, 0, 0)).save(path)
    image = read_image(path, mode="L")
    assert image.mode == "L" and pixels(image)[0, 0] == 76  # 0.299 × 255


def test_unknown_mode_argument_is_refused(tmp_path):
    path = tmp_path / "x.png"
    Image.new("RGB", (1, 1)).save(path)
    with pytest.raises(HeadstartError, match="'CMYK'.*expected 'RGB' or 'L'"):
        read_image(path, mode="CMYK")


def test_declared_20000_square_png_refused_before_decoding(tmp_path):
    path = tmp_path / "bomb.png"
    declared_png(path, 20_000, 20_000)
    started = time.perf_counter()
    with pytest.raises(HeadstartError) as caught:
        read_image(path)
    assert time.perf_counter() - started < 1.0
    message = str(caught.value)
    assert str(path) in message and "refused before decoding" in message and f"{MAX_PIXELS:,}" in message
    with pytest.raises(HeadstartError, match="refused before decoding"):
        probe_image(path)


def test_size_just_over_the_limit_names_the_size(tmp_path):
    side = int(MAX_PIXELS**0.5) + 1
    path = tmp_path / "large.png"
    declared_png(path, side, side)
    with pytest.raises(HeadstartError, match=f"declares {side}x{side} pixels.*refused before decoding"):
        read_image(path)


def test_missing_file_named(tmp_path):
    path = tmp_path / "absent.png"
    with pytest.raises(HeadstartError, match="absent.png: no such file"):
        read_image(path)


def test_folder_named(tmp_path):
    with pytest.raises(HeadstartError, match="is a folder"):
        read_image(tmp_path)


def test_empty_file_named(tmp_path):
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    for reader in (read_image, probe_image):
        with pytest.raises(HeadstartError, match=r"empty\.jpg: file is empty \(0 bytes\)"):
            reader(path)


def test_text_named_jpg(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("this is not an image\n")
    for reader in (read_image, probe_image):
        with pytest.raises(HeadstartError, match=r"notes\.jpg: not a readable image"):
            reader(path)


def test_truncated_jpeg_named(tmp_path):
    path = tmp_path / "cut.jpg"
    truncated_jpeg(path, side=64, seed=0)
    with pytest.raises(HeadstartError, match=r"cut\.jpg: corrupt or truncated image"):
        read_image(path)


def test_probe_reports_stored_size_without_decoding(tmp_path):
    path = tmp_path / "wide.png"
    Image.new("RGB", (7, 3)).save(path)
    assert probe_image(path) == (7, 3)


def test_png_with_damaged_checksum_fails_probe(tmp_path):
    path = tmp_path / "damaged.png"
    Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8)).save(path)
    data = bytearray(path.read_bytes())
    idat = data.index(b"IDAT")
    data[idat + 6] ^= 0xFF  # flip bits inside the compressed pixel data
    path.write_bytes(bytes(data))
    with pytest.raises(HeadstartError, match=r"damaged\.png"):
        probe_image(path)


def test_a_large_jpeg_is_decoded_at_reduced_scale_when_the_network_is_small(tmp_path):
    from skimage import data

    from headstart.data.dataset import decode_file

    path = tmp_path / "big.jpg"
    Image.fromarray(data.astronaut()).resize((4000, 3000), Image.BILINEAR).save(path, quality=90)
    reduced = read_image(path, min_side=224)
    assert reduced.size == (500, 375)  # 1/8 scale: the shorter side stays >= 224
    assert read_image(path, min_side=2000).size == (4000, 3000)  # no room to shrink: full decode
    assert read_image(path).size == (4000, 3000)
    full = np.asarray(read_image(path).resize((299, 224), Image.BILINEAR).crop((37, 0, 261, 224)), dtype=float)
    fast = decode_file(path, 224, 3).permute(1, 2, 0).numpy().astype(float)
    assert fast.shape == (224, 224, 3) and np.abs(full - fast).mean() < 2.0
