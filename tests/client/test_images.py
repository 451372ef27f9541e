"""numpy / PIL <-> wire images: lossless round trips and clear refusals."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
import tifffile
from impasto import images
from PIL import Image as PILImage
from PIL import ImageCms, ImageOps

SHAPES = [(9, 13), (9, 13, 3), (9, 13, 4)]


def _random(dtype, shape, seed=0):
    rng = np.random.default_rng(seed)
    if dtype == np.float32:
        return rng.random(shape, dtype=np.float32)
    return rng.integers(0, np.iinfo(dtype).max + 1, size=shape, dtype=dtype)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_raw_round_trip_is_lossless(dtype, shape):
    array = _random(dtype, shape)
    back = images.from_wire(images.to_wire(array))
    assert back.dtype == array.dtype and np.array_equal(back, array)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize("form", ["png", "tiff"])
def test_encoded_round_trip_is_lossless(dtype, shape, form):
    array = _random(dtype, shape)
    back = images.from_wire(images.to_wire(array, form))
    assert back.dtype == array.dtype and np.array_equal(back, array)


def test_float32_grayscale_tiff_is_lossless():
    array = _random(np.float32, (9, 13))
    assert np.array_equal(images.decode(images.encode(array, "tiff")), array)


def test_hxwx1_travels_as_grayscale():
    array = _random(np.uint8, (9, 13, 1))
    assert np.array_equal(images.from_wire(images.to_wire(array)), array[:, :, 0])


def test_pil_images_and_files(tmp_path):
    array = _random(np.uint8, (9, 13, 3))
    assert np.array_equal(images.from_wire(images.to_wire(PILImage.fromarray(array))), array)
    path = tmp_path / "picture.png"
    PILImage.fromarray(array).save(path)
    wire = images.to_wire(path)
    assert wire.WhichOneof("data") == "encoded"
    assert np.array_equal(images.from_wire(wire), array)
    palette = PILImage.fromarray(array).convert("P")
    assert images.as_array(palette).shape == (9, 13, 3)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (np.zeros((4, 4, 2), np.uint8), "shape"),
        (np.zeros((2, 4, 4, 3), np.uint8), "shape"),
        (np.zeros((4, 4), np.complex64), "dtype"),
        (np.full((4, 4), -1, np.int32), "0..65535"),
        (np.zeros((0, 4), np.uint8), "empty"),
    ],
)
def test_unsupported_arrays_are_refused(value, message):
    with pytest.raises(images.ImageError, match=message):
        images.to_wire(value)


def test_decompression_bomb_is_refused_before_decoding():
    big = images.encode(np.zeros((300, 300), np.uint8), "png")
    with pytest.raises(images.ImageError, match="exceeds the limit"):
        images.decode(big, max_pixels=100 * 100)


def test_bytes_of_no_image_format_get_a_plain_message():
    jpeg = images.encode(np.random.default_rng(0).integers(0, 256, (64, 64, 3), np.uint8), "jpeg")
    with pytest.raises(images.ImageError) as refused:
        images.decode(b"hello, not an image\n")
    assert str(refused.value).endswith("not PNG, JPEG or TIFF, or cut short in its header")
    assert "BytesIO" not in str(refused.value)
    # a known format cut short in its pixels keeps Pillow's own reason
    with pytest.raises(images.ImageError, match="cannot decode image bytes .*truncated"):
        images.decode(jpeg[: len(jpeg) // 2])


def test_only_the_wire_formats_are_decoded_unless_asked():
    """The server reads PNG, JPEG and TIFF only (no other decoder of Pillow's sees a request);
    a client may read any format Pillow reads, to send its pixels."""
    picture = np.random.default_rng(1).integers(0, 256, (12, 10, 3), np.uint8)
    for kind in ("WEBP", "BMP", "GIF"):
        buffer = io.BytesIO()
        PILImage.fromarray(picture).save(
            buffer, kind, **({"lossless": True} if kind == "WEBP" else {})
        )
        with pytest.raises(images.ImageError, match="not PNG, JPEG or TIFF"):
            images.decode(buffer.getvalue())
        assert images.decode(buffer.getvalue(), formats=None).shape == (12, 10, 3), kind
    assert np.array_equal(images.decode(_bmp(picture), formats=None), picture)


def _bmp(picture: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    PILImage.fromarray(picture).save(buffer, "BMP")
    return buffer.getvalue()


def test_a_decompression_bomb_names_the_limit_that_refused_it():
    big = images.encode(np.zeros((300, 300), np.uint8), "png")
    limit = PILImage.MAX_IMAGE_PIXELS
    try:
        PILImage.MAX_IMAGE_PIXELS = 100 * 100  # Pillow's guard, below the caller's
        with pytest.raises(images.ImageError, match="more than 10000 pixels, the most this"):
            images.decode(big, max_pixels=200 * 200)
    finally:
        PILImage.MAX_IMAGE_PIXELS = limit


def _tiff_with_second_frame(ifd: bytes) -> bytes:
    """A one-frame little-endian TIFF whose first directory points on to ``ifd``."""
    data = bytearray(images.encode(np.zeros((8, 8), np.uint8), "tiff"))
    assert data[:4] == b"II*\x00"
    first = int.from_bytes(data[4:8], "little")
    entries = int.from_bytes(data[first : first + 2], "little")
    link = first + 2 + 12 * entries  # where the next directory's offset is kept
    data[link : link + 4] = len(data).to_bytes(4, "little")
    return bytes(data + ifd)


def test_multi_frame_and_broken_second_frames_are_refused():
    one = images.encode(np.zeros((8, 8), np.uint8), "tiff")
    first = int.from_bytes(one[4:8], "little")
    two = _tiff_with_second_frame(one[first:])  # the first directory again, whole
    with pytest.raises(images.ImageError, match="multi-frame images are not supported"):
        images.decode(two)
    # a second directory with no entries: Pillow fails reading it as it counts the frames
    broken = _tiff_with_second_frame(b"\x00\x00" + b"\x00\x00\x00\x00")
    with pytest.raises(images.ImageError, match="cannot decode image bytes"):
        images.decode(broken)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_raw_images_read_only_where_asked(dtype):
    array = _random(dtype, (9, 13, 3))
    message = images.to_wire(array)
    given = images.from_wire(message)  # a caller's own copy, to change as it likes
    assert given.flags.writeable and given.dtype == dtype
    np.testing.assert_array_equal(given, array)
    view = images.from_wire(message, writable=False)  # the server's: only read
    assert not view.flags.writeable and view.dtype.isnative
    np.testing.assert_array_equal(view, array)


def _oriented(stored: np.ndarray, fmt: str, orientation: int) -> bytes:
    exif = PILImage.Exif()
    exif[0x0112] = orientation
    out = io.BytesIO()
    PILImage.fromarray(stored).save(out, fmt, exif=exif)
    return out.getvalue()


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_decode_turns_a_picture_as_its_exif_orientation_says(orientation, fmt):
    stored = _random(np.uint8, (4, 7, 3))
    data = _oriented(stored, fmt, orientation)
    decoded = images.decode(data)
    assert decoded.shape == ((4, 7, 3) if orientation < 5 else (7, 4, 3))
    shown = ImageOps.exif_transpose(PILImage.open(io.BytesIO(data)))  # as a viewer shows it
    np.testing.assert_array_equal(decoded, np.asarray(shown))


def test_a_16_bit_colour_png_is_turned_too():
    stored = _random(np.uint16, (4, 7, 3))
    plain = images.encode(stored, "png")  # impasto's own 16-bit codec
    block = PILImage.Exif()
    block[0x0112] = 8  # turn left
    chunk = images._chunk(b"eXIf", block.tobytes())
    at = plain.index(b"IDAT") - 4
    np.testing.assert_array_equal(images.decode(plain[:at] + chunk + plain[at:]), np.rot90(stored))
    np.testing.assert_array_equal(images.decode(plain), stored)


def test_an_unreadable_exif_block_leaves_the_picture_as_stored():
    stored = _random(np.uint8, (4, 7, 3))
    out = io.BytesIO()
    PILImage.fromarray(stored).save(out, "PNG", exif=b"Exif\x00\x00MM\x00*\xff\xff")
    np.testing.assert_array_equal(images.decode(out.getvalue()), stored)


def test_a_phone_jpeg_lying_on_its_side_is_decoded_upright():
    # a 32 x 48 picture stored landscape, its left half dark: held upright (orientation 6) the
    # dark half is on top
    stored = np.full((32, 48, 3), 230, np.uint8)
    stored[:, :24] = 20
    exif = PILImage.Exif()
    exif[0x0112] = 6
    out = io.BytesIO()
    PILImage.fromarray(stored).save(out, "JPEG", exif=exif, quality=95)
    decoded = images.decode(out.getvalue())
    assert decoded.shape == (48, 32, 3)
    assert decoded[:20].mean() < 40 and decoded[28:].mean() > 210
    # any format Pillow reads goes the same way (the CLI's path for WebP, BMP...)
    np.testing.assert_array_equal(images.decode(out.getvalue(), formats=None), decoded)


def _srgb_icc(swap_red_and_blue: bool = False) -> bytes:
    """lcms's sRGB profile; swapped: the same profile with its red and blue primaries traded,
    a colour space in which (255, 0, 0) is sRGB's blue."""
    data = bytearray(ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes())
    if swap_red_and_blue:
        count = int.from_bytes(data[128:132], "big")  # the tag table follows the header
        at = {bytes(data[132 + 12 * i : 136 + 12 * i]): 132 + 12 * i for i in range(count)}
        data[at[b"rXYZ"] : at[b"rXYZ"] + 4] = b"bXYZ"
        data[at[b"bXYZ"] : at[b"bXYZ"] + 4] = b"rXYZ"
    return bytes(data)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "TIFF"])
def test_colours_in_another_icc_space_are_converted_to_srgb(fmt):
    stored = np.zeros((32, 32, 3), np.uint8)
    stored[..., 0] = 255  # red in the file's space, which is sRGB's blue
    stored[16:] = (0, 255, 0)  # green stays green
    out = io.BytesIO()
    PILImage.fromarray(stored).save(out, fmt, icc_profile=_srgb_icc(swap_red_and_blue=True))
    decoded = images.decode(out.getvalue()).astype(int)
    np.testing.assert_allclose(decoded[0, 0], (0, 0, 255), atol=2)
    np.testing.assert_allclose(decoded[-1, -1], (0, 255, 0), atol=2)


def test_alpha_survives_the_colour_conversion():
    stored = np.zeros((4, 4, 4), np.uint8)
    stored[..., 0], stored[..., 3] = 255, np.arange(16, dtype=np.uint8).reshape(4, 4) * 16
    out = io.BytesIO()
    PILImage.fromarray(stored).save(out, "PNG", icc_profile=_srgb_icc(swap_red_and_blue=True))
    decoded = images.decode(out.getvalue())
    np.testing.assert_array_equal(decoded[..., 3], stored[..., 3])
    assert decoded[0, 0, 2] >= 253 and decoded[0, 0, 0] <= 2


@pytest.mark.parametrize("icc", [_srgb_icc(), b"not a profile at all"], ids=["srgb", "unusable"])
def test_srgb_and_unusable_profiles_keep_the_pixels_to_the_bit(icc):
    stored = _random(np.uint8, (6, 5, 3))
    out = io.BytesIO()
    PILImage.fromarray(stored).save(out, "PNG", icc_profile=icc)
    np.testing.assert_array_equal(images.decode(out.getvalue()), stored)


def _unfilter_by_the_book(kinds: np.ndarray, lines: np.ndarray, bpp: int) -> np.ndarray:
    """PNG's five filters undone byte by byte, as the PNG specification writes them."""
    out = np.zeros_like(lines)
    for y, kind in enumerate(kinds):
        for i in range(lines.shape[1]):
            left = int(out[y, i - bpp]) if i >= bpp else 0
            up = int(out[y - 1, i]) if y else 0
            upper_left = int(out[y - 1, i - bpp]) if y and i >= bpp else 0
            p = left + up - upper_left
            paeth = min((abs(p - left), 0, left), (abs(p - up), 1, up),
                        (abs(p - upper_left), 2, upper_left))[2]  # fmt: skip
            predicted = [0, left, up, (left + up) >> 1, paeth][kind]
            out[y, i] = (int(lines[y, i]) + predicted) & 0xFF
    return out


@pytest.mark.parametrize(
    ("height", "width", "channels"), [(6, 9, 3), (1, 7, 4), (8, 1, 3), (5, 5, 4)]
)
def test_16_bit_colour_png_filters_all_undo_as_the_specification_says(height, width, channels):
    """Average and Paeth rows (other tools write them) among the rest; undone by diagonals."""
    rng = np.random.default_rng(height * width)
    bpp = channels * 2
    kinds = rng.integers(0, 5, height).astype(np.uint8)
    kinds[0] = 4
    lines = rng.integers(0, 256, (height, width * bpp), dtype=np.uint8)
    scan = np.concatenate([kinds[:, None], lines], axis=1)
    header = struct.pack(">IIBBBBB", width, height, 16, {3: 2, 4: 6}[channels], 0, 0, 0)
    data = (images._PNG_SIGNATURE + images._chunk(b"IHDR", header)
            + images._chunk(b"IDAT", zlib.compress(scan.tobytes())) + images._chunk(b"IEND", b""))  # fmt: skip
    want = _unfilter_by_the_book(kinds, lines, bpp).view(">u2").reshape(height, width, channels)
    np.testing.assert_array_equal(images.decode(data), want.astype(np.uint16))


def _adam7_png16(array: np.ndarray) -> bytes:
    """A 16-bit colour PNG interlaced by Adam7 (as image editors may write it), each pass's
    rows filtered None or Sub in turn."""
    height, width, channels = array.shape
    bpp = channels * 2
    body = b""
    for x0, y0, dx, dy in ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4),
                           (1, 0, 2, 2), (0, 1, 1, 2)):  # fmt: skip
        sub = np.ascontiguousarray(array[y0::dy, x0::dx], dtype=">u2")
        if sub.size == 0:
            continue  # an empty pass has no rows, not even their filter bytes
        lines = sub.view(np.uint8).reshape(sub.shape[0], -1)
        for y, line in enumerate(lines):
            if y % 2:  # Sub: each byte less the one a pixel to its left
                left = np.concatenate([np.zeros(bpp, np.uint8), line[:-bpp]])
                body += b"\x01" + (line - left).astype(np.uint8).tobytes()
            else:
                body += b"\x00" + line.tobytes()
    header = struct.pack(">IIBBBBB", width, height, 16, {3: 2, 4: 6}[channels], 0, 0, 1)
    return (images._PNG_SIGNATURE + images._chunk(b"IHDR", header)
            + images._chunk(b"IDAT", zlib.compress(body)) + images._chunk(b"IEND", b""))  # fmt: skip


@pytest.mark.parametrize(("height", "width", "channels"), [(13, 11, 3), (1, 1, 4), (3, 9, 4)])
def test_an_interlaced_16_bit_colour_png_is_read_whole(height, width, channels):
    stored = _random(np.uint16, (height, width, channels), seed=height)
    data = _adam7_png16(stored)
    np.testing.assert_array_equal(images.decode(data), stored)
    # Pillow reads it too, narrowed to the high bytes: the pixels are in the same places
    mode = "RGB" if channels == 3 else "RGBA"
    narrowed = np.asarray(PILImage.open(io.BytesIO(data)).convert(mode))
    np.testing.assert_array_equal(narrowed, (stored >> 8).astype(np.uint8))


def test_a_16_bit_png_of_no_rows_is_refused_before_anything_is_inflated():
    """Its rows' bytes bound the inflation: for 0 rows zlib would take 0 for no bound at all,
    and a small file would inflate as far as the data goes."""
    header = struct.pack(">IIBBBBB", 64, 0, 16, 2, 0, 0, 0)
    bomb = zlib.compress(bytes(64 << 20), 9)  # 64 MiB of zeros in some 64 KiB
    data = (images._PNG_SIGNATURE + images._chunk(b"IHDR", header)
            + images._chunk(b"IDAT", bomb) + images._chunk(b"IEND", b""))  # fmt: skip
    with pytest.raises(images.ImageError, match="declares 0x64 pixels: an empty image"):
        images.decode(data)


@pytest.mark.parametrize("dtype", [np.uint16, np.float32])
@pytest.mark.parametrize("channels", [3, 4])
def test_16_bit_and_float_colour_tiff_is_a_tiff_and_lossless(dtype, channels):
    """Pillow writes neither, and reads the 16-bit one as 8-bit: tifffile writes and reads
    them, so a TIFF asked for is a TIFF (once the bytes of a 16-bit PNG)."""
    array = _random(dtype, (9, 13, channels))
    data = images.encode(array, "tiff")
    assert data[:4] == b"II*\x00"
    np.testing.assert_array_equal(tifffile.imread(io.BytesIO(data)), array)  # another reader
    back = images.decode(data)
    assert back.dtype == dtype
    np.testing.assert_array_equal(back, array)


@pytest.mark.parametrize(
    "written",
    [
        {"compression": "lzw"},  # what image editors write most
        {"compression": "packbits", "byteorder": ">"},
        {"planarconfig": "separate"},  # one plane per sample
        {"extratags": [(0x0112, "H", 1, 6, True)]},  # orientation 6: held turned right
    ],
)
def test_16_bit_colour_tiffs_of_other_writers_are_read_whole(written):
    stored = _random(np.uint16, (6, 9, 3))
    out = io.BytesIO()
    planar = written.get("planarconfig") == "separate"
    tifffile.imwrite(out, np.moveaxis(stored, -1, 0) if planar else stored, photometric="rgb",
                     **written)  # fmt: skip
    want = np.rot90(stored, -1) if "extratags" in written else stored
    np.testing.assert_array_equal(images.decode(out.getvalue()), want)


def test_a_wide_tiff_is_refused_before_decoding_when_too_large_or_corrupt():
    out = io.BytesIO()
    tifffile.imwrite(out, _random(np.uint16, (64, 64, 3)), photometric="rgb")
    data = out.getvalue()
    with pytest.raises(images.ImageError, match="64x64 exceeds the limit of 1000 pixels"):
        images.decode(data, max_pixels=1000)
    with pytest.raises(images.ImageError, match=r"cannot decode image bytes \(TIFF\)"):
        images.decode(data[: len(data) // 2])
    out = io.BytesIO()
    tifffile.imwrite(out, np.full((4, 4, 3), np.nan, np.float32), photometric="rgb")
    with pytest.raises(images.ImageError, match="must be finite"):
        images.decode(out.getvalue())


@pytest.mark.parametrize("mode", ["P", "1"])
def test_a_palette_or_bilevel_mask_gives_its_labels(mode):
    """Annotation tools write label images as palette PNGs, a colour for each label."""
    labels = np.zeros((6, 8), np.uint8)
    labels[:, 4:] = 1
    labels[3:, :] += 1 if mode == "P" else 0
    if mode == "P":
        picture = PILImage.fromarray(labels, mode="P")
        picture.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0])
    else:
        picture = PILImage.fromarray(labels.astype(bool))
    out = io.BytesIO()
    picture.save(out, "PNG")
    np.testing.assert_array_equal(images.decode(out.getvalue(), labels=True), labels)
    # as a picture, its colours
    assert images.decode(out.getvalue()).ndim == (3 if mode == "P" else 2)


def _tiff(array: np.ndarray, **written) -> bytes:
    out = io.BytesIO()
    tifffile.imwrite(out, array, **written)
    return out.getvalue()


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_a_tiff_of_a_small_picture_in_one_huge_tile_is_refused_before_inflating(dtype):
    """A tile is inflated whole, whatever the picture's size: 16x16 pixels declared in one
    2048x2048 tile of 25 KB would take 25 MB (a 16384 px tile, 1.6 GB, from 1.5 MB)."""
    picture = np.zeros((16, 16, 3), dtype)
    data = _tiff(picture, photometric="rgb", tile=(2048, 2048), compression="zlib")
    with pytest.raises(images.ImageError, match="tiles of 2048x2048 pixels are far larger"):
        images.decode(data)
    # tiles of a common size over a small picture are read as usual
    stored = _random(dtype, (100, 60, 3))
    tiled = _tiff(stored, photometric="rgb", tile=(256, 256), compression="zlib")
    np.testing.assert_array_equal(images.decode(tiled), stored)


def test_a_volume_tiff_and_a_malformed_orientation_tag():
    volume = _tiff(np.zeros((4, 16, 16, 3), np.uint16), photometric="rgb", volumetric=True,
                   tile=(16, 16))  # fmt: skip
    with pytest.raises(images.ImageError, match="a volume of 4 planes"):
        images.decode(volume)
    stored = _random(np.uint16, (4, 6, 3))
    for tag in [(0x0112, "H", 2, (6, 6), True), (0x0112, "s", 0, "x", True)]:
        # read as stored (was a TypeError or ValueError: UNKNOWN on the server)
        data = _tiff(stored, photometric="rgb", extratags=[tag])
        np.testing.assert_array_equal(images.decode(data), stored)


def test_16_bit_and_float_gray_with_alpha_is_read_whole_as_rgba():
    """As 8-bit gray and alpha is (the wire has no two-channel form); a 16-bit PNG of it was
    narrowed to 8 bits, a 16-bit or float TIFF of it refused as undecodable."""
    for dtype in (np.uint16, np.float32):
        stored = _random(dtype, (5, 7, 2))
        data = _tiff(stored, photometric="minisblack", extrasamples=["unassalpha"])
        decoded = images.decode(data)
        assert decoded.dtype == dtype and decoded.shape == (5, 7, 4)
        np.testing.assert_array_equal(decoded[:, :, :3], np.repeat(stored[:, :, :1], 3, axis=2))
        np.testing.assert_array_equal(decoded[:, :, 3], stored[:, :, 1])
    stored = _random(np.uint16, (5, 7, 2))
    scan = np.concatenate(
        [np.zeros((5, 1), np.uint8), stored.astype(">u2").view(np.uint8).reshape(5, -1)], axis=1
    )
    header = struct.pack(">IIBBBBB", 7, 5, 16, 4, 0, 0, 0)
    png = (images._PNG_SIGNATURE + images._chunk(b"IHDR", header)
           + images._chunk(b"IDAT", zlib.compress(scan.tobytes())) + images._chunk(b"IEND", b""))  # fmt: skip
    decoded = images.decode(png)
    assert decoded.dtype == np.uint16
    np.testing.assert_array_equal(decoded[:, :, 0], stored[:, :, 0])
    np.testing.assert_array_equal(decoded[:, :, 3], stored[:, :, 1])
