"""numpy / PIL <-> wire ``Image`` conversion, shared by the client and the server.

Raw images and TIFF are lossless for every supported dtype (uint8, uint16, float32) and
channel count (1, 3, 4); PNG for 8-bit and 16-bit data (float32 goes as 16-bit); JPEG is 8-bit.

Pillow reads 16-bit colour PNG and TIFF as 8-bit and cannot write them, nor float colour TIFF:
16-bit colour PNGs are written and read by the small codec at the bottom of this module, and
those TIFFs by tifffile.
"""

from __future__ import annotations

import functools
import io
import logging
import os
import struct
import warnings
import zlib
from collections.abc import Callable
from typing import Any

import numpy as np
import tifffile
from PIL import Image as PILImage

from impasto.v1 import style_transfer_pb2 as pb

DTYPES: dict[int, np.dtype] = {
    pb.DATA_TYPE_UINT8: np.dtype("<u1"),
    pb.DATA_TYPE_UINT16: np.dtype("<u2"),
    pb.DATA_TYPE_FLOAT32: np.dtype("<f4"),
}
_DTYPE_CODES = {np.dtype(v).str: k for k, v in DTYPES.items()}
CHANNELS = (1, 3, 4)
FORMATS = ("raw", "png", "jpeg", "tiff")
_PIL_FORMATS = {"png": "PNG", "jpeg": "JPEG", "tiff": "TIFF"}


class ImageError(ValueError):
    """An image that cannot be converted; ``field`` names the request field it came from."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


# ---------------------------------------------------------------- numpy arrays


def as_array(image: Any, field: str = "image") -> np.ndarray:
    """Normalise a numpy array or PIL image to HxW or HxWxC (C in 1, 3, 4) of a wire dtype."""
    if isinstance(image, PILImage.Image):
        image = _pil_to_array(image)
    array = np.asarray(image)
    if array.dtype == np.bool_:
        array = array.astype(np.uint8) * 255
    elif array.dtype == np.float64 or array.dtype == np.float16:
        array = array.astype(np.float32)
    elif array.dtype.kind in "iu" and array.dtype not in (np.uint8, np.uint16):
        # Label-like integer arrays (napari Labels are int32/int64) fit uint16 when small.
        if array.size and (array.min() < 0 or array.max() > 65535):
            raise ImageError(field, f"integer values must lie in 0..65535, dtype {array.dtype}")
        array = array.astype(np.uint16)
    if array.dtype not in (np.uint8, np.uint16, np.float32):
        raise ImageError(field, f"unsupported dtype {array.dtype}; use uint8, uint16 or float32")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in CHANNELS):
        raise ImageError(
            field, f"shape {array.shape} is not HxW, HxWx1, HxWx3 or HxWx4 (one 2D picture)"
        )
    if array.shape[0] < 1 or array.shape[1] < 1:
        raise ImageError(field, f"empty image of shape {array.shape}")
    return array


def _pil_to_array(image: PILImage.Image) -> np.ndarray:
    mode = image.mode
    if mode in ("L", "RGB", "RGBA", "F") or mode.startswith("I;16"):
        return np.asarray(image)
    if mode == "1":
        return np.asarray(image.convert("L"))
    if mode == "I":
        return np.asarray(image)  # int32; as_array narrows it to uint16 or refuses
    if mode in ("LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in image.info):
        return np.asarray(image.convert("RGBA"))
    return np.asarray(image.convert("RGB"))


def channels_of(array: np.ndarray) -> int:
    return 1 if array.ndim == 2 else int(array.shape[2])


# ---------------------------------------------------------------- to the wire


def to_wire(image: Any, form: str | None = None, *, field: str = "image") -> pb.Image:
    """Make a wire Image.

    ``image``: numpy array, PIL image, file path, or the bytes of a PNG/JPEG/TIFF file.
    ``form``: "raw", "png", "jpeg" or "tiff"; None sends arrays raw and files as they are.
    """
    if isinstance(image, (bytes, bytearray, memoryview)):
        if form not in (None, "png", "jpeg", "tiff"):
            image = decode(bytes(image), field=field)
        else:
            return pb.Image(encoded=bytes(image))
    elif isinstance(image, (str, os.PathLike)):
        with open(image, "rb") as handle:  # client side only: the server never opens paths
            data = handle.read()
        if form is None:
            return pb.Image(encoded=data)
        image = decode(data, field=field)
    array = as_array(image, field)
    if form is None or form == "raw":
        return pb.Image(raw=raw_of(array))
    return pb.Image(encoded=encode(array, form, field=field))


def raw_of(array: np.ndarray) -> pb.RawImage:
    dtype = array.dtype.newbyteorder("<")
    return pb.RawImage(
        height=array.shape[0],
        width=array.shape[1],
        channels=channels_of(array),
        dtype=_DTYPE_CODES[dtype.str],
        data=np.ascontiguousarray(array, dtype=dtype).tobytes(),
    )


def encode(array: np.ndarray, form: str, *, field: str = "image") -> bytes:
    """Encode an array as PNG, JPEG or TIFF bytes (float data becomes 16-bit, JPEG 8-bit)."""
    if form not in _PIL_FORMATS:
        raise ImageError(field, f"unknown image format {form!r}; choose one of {FORMATS}")
    array = as_array(array, field)
    channels = channels_of(array)
    if form == "tiff" and channels > 1 and array.dtype != np.uint8:
        return _tiff_encode(array)  # 16-bit or float colour, which Pillow cannot write
    if array.dtype == np.float32:
        if form == "tiff":
            return _pil_save(PILImage.fromarray(array, mode="F"), "TIFF")
        array = to_uint16(array)
    if form == "jpeg":
        if array.dtype == np.uint16:
            array = (array >> 8).astype(np.uint8)
        if channels == 4:
            array = array[:, :, :3]  # JPEG has no alpha
        return _pil_save(PILImage.fromarray(array), "JPEG", quality=95)
    if array.dtype == np.uint16:
        if channels == 1:
            return _pil_save(PILImage.fromarray(array), _PIL_FORMATS[form])
        return _png16_encode(array)  # Pillow cannot write 16-bit colour PNG
    return _pil_save(PILImage.fromarray(array), _PIL_FORMATS[form])


def _pil_save(image: PILImage.Image, fmt: str, **params: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def to_uint16(array: np.ndarray) -> np.ndarray:
    """float32 in 0..1 (or rescaled by its own range when outside it) to uint16."""
    lo, hi = float(np.nanmin(array)), float(np.nanmax(array))
    if lo < 0.0 or hi > 1.0:
        array = (array - lo) / (hi - lo) if hi > lo else np.zeros_like(array)
    return np.round(np.clip(array, 0.0, 1.0) * 65535.0).astype(np.uint16)


# ---------------------------------------------------------------- from the wire


def from_wire(
    message: pb.Image, *, field: str = "image", max_pixels: int | None = None,
    writable: bool = True, labels: bool = False,
) -> np.ndarray:  # fmt: skip
    """Decode a wire Image to HxW (grayscale) or HxWxC; raise ImageError on anything invalid.
    ``writable=False``: a raw image may come back as a read-only view of the message's bytes
    (one copy of the pixels fewer, for a reader that only reads them). ``labels``: see
    ``decode``."""
    kind = message.WhichOneof("data")
    if kind is None:
        raise ImageError(field, "no image data: set `encoded` or `raw`")
    if kind == "encoded":
        return decode(
            message.encoded, field=f"{field}.encoded", max_pixels=max_pixels, labels=labels
        )
    return from_raw(message.raw, field=f"{field}.raw", max_pixels=max_pixels, writable=writable)


def from_raw(
    raw: pb.RawImage, *, field: str = "raw", max_pixels: int | None = None, writable: bool = True
) -> np.ndarray:
    if raw.height < 1 or raw.width < 1:
        raise ImageError(field, f"height and width must be >= 1, got {raw.height}x{raw.width}")
    if raw.channels not in CHANNELS:
        raise ImageError(f"{field}.channels", f"must be 1, 3 or 4, got {raw.channels}")
    if raw.dtype not in DTYPES:
        raise ImageError(f"{field}.dtype", "must be DATA_TYPE_UINT8, _UINT16 or _FLOAT32")
    pixels = raw.height * raw.width
    if max_pixels is not None and pixels > max_pixels:
        raise ImageError(
            field, f"{raw.height}x{raw.width} exceeds the limit of {max_pixels} pixels"
        )
    dtype = DTYPES[raw.dtype]
    expected = pixels * raw.channels * dtype.itemsize
    data = raw.data  # a copy of the message's bytes at each access (upb): taken once
    if len(data) != expected:
        raise ImageError(
            f"{field}.data",
            f"has {len(data)} bytes; {raw.height}x{raw.width}x{raw.channels} "
            f"{dtype.name} needs {expected}",
        )
    array = np.frombuffer(data, dtype=dtype).reshape(raw.height, raw.width, raw.channels)
    # native byte order; writable unless asked otherwise (then a view where it is native)
    array = array.astype(dtype.newbyteorder("="), copy=writable)
    if array.dtype == np.float32 and not np.isfinite(array).all():
        raise ImageError(f"{field}.data", "float32 pixels must be finite (no NaN or inf)")
    return array[:, :, 0] if raw.channels == 1 else array


#: The encoded formats the wire carries: no other decoder of Pillow's reads a request's bytes.
WIRE_FORMATS = ("PNG", "JPEG", "TIFF")


def _named(formats: tuple[str, ...]) -> str:
    """("PNG", "JPEG", "TIFF") -> "PNG, JPEG or TIFF"."""
    return ", ".join(formats[:-1]) + f" or {formats[-1]}" if len(formats) > 1 else formats[0]


def decode(
    data: bytes,
    *,
    field: str = "encoded",
    max_pixels: int | None = None,
    formats: tuple[str, ...] | None = WIRE_FORMATS,
    labels: bool = False,
) -> np.ndarray:
    """Decode PNG/JPEG/TIFF bytes (``formats``; None: any Pillow reads), refusing
    decompression bombs before any pixel is inflated. ``labels``: the bytes are a label image
    (a mask): a palette image gives its indices, not their colours (annotation tools write
    labels so, each its own colour), and a bilevel one 0 and 1."""
    if not data:
        raise ImageError(field, "empty image bytes")
    if data.startswith(_PNG_SIGNATURE):
        header = _png_header(data, field)
        if header is not None and header[2] == 16 and header[3] in (2, 4, 6):
            _check_pixels(header[0], header[1], field, max_pixels)
            return _png16_decode(data, field)
    limit = max_pixels if max_pixels is not None else PILImage.MAX_IMAGE_PIXELS
    if data.startswith(_TIFF_SIGNATURES) and (formats is None or "TIFF" in formats):
        wide = _tiff_wide_decode(data, field, limit)
        if wide is not None:
            return wide
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", PILImage.DecompressionBombWarning)
            image = PILImage.open(io.BytesIO(data), formats=formats)
            width, height = image.size  # the header only; nothing is decoded yet
            _check_pixels(height, width, field, limit)
            if image.format == "TIFF" and 322 in image.tag_v2:  # TileWidth, TileLength
                _check_tiles(height, width, image.tag_v2.get(323, 0), image.tag_v2[322], field)
            image.load()
            # Counting frames reads every frame's header, which may be the corrupt part.
            if getattr(image, "n_frames", 1) > 1:
                raise ImageError(field, "multi-frame images are not supported; send one 2D picture")
    except ImageError:
        raise
    except (PILImage.DecompressionBombError, PILImage.DecompressionBombWarning) as exc:
        # Pillow's own guard, which refuses more than its MAX_IMAGE_PIXELS before ours can
        bound = (
            PILImage.MAX_IMAGE_PIXELS if limit is None else min(limit, PILImage.MAX_IMAGE_PIXELS)
        )
        raise ImageError(
            field,
            f"more than {bound} pixels, the most this reader decodes (a guard against "
            "decompression bombs): downscale the image",
        ) from exc
    except PILImage.UnidentifiedImageError as exc:  # its text names Python's buffer object
        what = f"not {_named(formats)}" if formats else "not in an image format Pillow reads"
        raise ImageError(
            field, f"cannot decode image bytes: {what}, or cut short in its header"
        ) from exc
    except Exception as exc:  # Pillow raises many types for corrupt data
        known = f" ({_named(formats)})" if formats else ""
        raise ImageError(field, f"cannot decode image bytes{known}: {exc}") from exc
    if labels and image.mode in ("P", "1"):
        return _upright(np.asarray(image).astype(np.uint8), _orientation(image.getexif))
    return _upright(as_array(_in_srgb(image), field), _orientation(image.getexif))


_ORIENTATION = 0x0112  # the EXIF (and TIFF) tag
# How viewers turn the stored rows for each orientation (TIFF 6.0's Orientation tag): a camera
# or phone stores the sensor's rows as they came and the way to hold them in this tag, which
# every image viewer and browser applies; a photograph taken upright would otherwise be
# stylized (and written back) lying on its side.
_TURNS = {
    2: np.fliplr,
    3: lambda a: np.rot90(a, 2),
    4: np.flipud,
    5: lambda a: np.swapaxes(a, 0, 1),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: np.swapaxes(np.rot90(a, 2), 0, 1),
    8: lambda a: np.rot90(a, 1),
}


def _orientation(read: Callable[[], PILImage.Exif]) -> int:
    """The orientation that an image's EXIF gives, ``read`` on demand: 1 (upright) where it
    gives none, or cannot be read (the pixels are still good)."""
    try:
        return int(read().get(_ORIENTATION, 1))
    except Exception:  # noqa: BLE001 - Pillow raises many types for a corrupt block
        return 1


def _exif(block: bytes) -> PILImage.Exif:
    exif = PILImage.Exif()
    exif.load(block)
    return exif


def _upright(array: np.ndarray, orientation: int) -> np.ndarray:
    turn = _TURNS.get(orientation)
    return array if turn is None else np.ascontiguousarray(turn(array))


_PRIMARIES = ("red_colorant", "green_colorant", "blue_colorant")


@functools.cache
def _srgb() -> Any:  # ImageCms.ImageCmsProfile; None where Pillow was built without lcms
    try:
        from PIL import ImageCms
    except ImportError:
        return None
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))


def _in_srgb(image: PILImage.Image) -> PILImage.Image:
    """The picture's colours in sRGB, the space the network's training images were in and the
    one a result (written with no profile) is shown in. A file that embeds an ICC profile of
    another space (a phone's Display P3, a scan's Adobe RGB, a CMYK print file) is converted,
    as a viewer converts it for the screen; one whose profile has sRGB's primaries (most
    cameras embed one) keeps its pixels to the bit, as does a profile lcms cannot use."""
    icc = image.info.get("icc_profile")
    srgb = _srgb() if icc and image.mode in ("RGB", "RGBA", "CMYK") else None
    if srgb is None:
        return image
    from PIL import ImageCms

    try:
        profile = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        if image.mode != "CMYK" and _srgb_primaries(profile, srgb):
            return image
        mode = "RGBA" if image.mode == "RGBA" else "RGB"
        return ImageCms.profileToProfile(image, profile, srgb, outputMode=mode)
    except (ImageCms.PyCMSError, OSError, ValueError):
        return image


def _srgb_primaries(profile: Any, srgb: Any) -> bool:
    for name in _PRIMARIES:
        theirs, ours = getattr(profile.profile, name), getattr(srgb.profile, name)
        if theirs is None or max(abs(a - b) for a, b in zip(theirs[0], ours[0])) > 2e-3:
            return False
    return True


def _check_pixels(height: int, width: int, field: str, limit: int | None) -> None:
    if height < 1 or width < 1:  # and an inflation bounded by 0 bytes would have no bound
        raise ImageError(field, f"its header declares {height}x{width} pixels: an empty image")
    if limit is not None and height * width > limit:
        raise ImageError(field, f"{height}x{width} exceeds the limit of {limit} pixels")


# ---------------------------------------------------------------- 16-bit colour PNG

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _chunk(kind: bytes, body: bytes) -> bytes:
    crc = zlib.crc32(kind + body) & 0xFFFFFFFF
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)


def _png16_encode(array: np.ndarray) -> bytes:
    height, width, channels = array.shape
    color_type = {3: 2, 4: 6}[channels]
    rows = np.ascontiguousarray(array, dtype=">u2").view(np.uint8).reshape(height, -1)
    scan = np.zeros((height, rows.shape[1] + 1), dtype=np.uint8)  # filter byte 0 per row
    scan[:, 1:] = rows
    header = struct.pack(">IIBBBBB", width, height, 16, color_type, 0, 0, 0)
    return (
        _PNG_SIGNATURE
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(scan.tobytes(), 6))
        + _chunk(b"IEND", b"")
    )


def _png_header(data: bytes, field: str) -> tuple[int, int, int, int, int] | None:
    if len(data) < 33 or data[12:16] != b"IHDR":
        return None
    width, height, depth, color, _c, _f, interlace = struct.unpack(">IIBBBBB", data[16:29])
    return height, width, depth, color, interlace


#: Adam7's seven passes: each the pixels at (x0 + i * dx, y0 + j * dy), as x0, y0, dx, dy.
_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2),
          (0, 1, 1, 2))  # fmt: skip


def _png16_decode(data: bytes, field: str) -> np.ndarray:
    height, width, _depth, color, interlace = _png_header(data, field) or (0, 0, 0, 0, 0)
    channels = {2: 3, 4: 2, 6: 4}[color]  # RGB, gray and alpha, RGBA
    bpp = channels * 2
    # Each pass's sub-image, filtered row by row on its own; one pass, the whole, if not
    # interlaced. Empty passes (a small image's) have no rows at all.
    passes = [
        (x0, y0, dx, dy, -(-(height - y0) // dy), -(-(width - x0) // dx))
        for x0, y0, dx, dy in (_ADAM7 if interlace else ((0, 0, 1, 1),))
    ]
    passes = [p for p in passes if p[4] > 0 and p[5] > 0]
    expected = sum(rows * (cols * bpp + 1) for *_, rows, cols in passes)
    idat, offset, orientation = bytearray(), 8, 1
    try:
        while offset < len(data):
            (length,) = struct.unpack(">I", data[offset : offset + 4])
            kind = data[offset + 4 : offset + 8]
            if kind == b"IDAT":
                idat += data[offset + 8 : offset + 8 + length]
            elif kind == b"eXIf":
                block = data[offset + 8 : offset + 8 + length]
                orientation = _orientation(functools.partial(_exif, block))
            offset += 12 + length
        decompressor = zlib.decompressobj()
        # Bound the inflation to the declared size, so a small file cannot expand without limit.
        raw = decompressor.decompress(bytes(idat), expected)
    except (struct.error, zlib.error) as exc:
        raise ImageError(field, f"corrupt PNG: {exc}") from exc
    if len(raw) != expected:
        raise ImageError(field, "corrupt PNG: image data is shorter than its header declares")
    out = np.zeros((height, width, bpp), dtype=np.uint8)
    start = 0
    for x0, y0, dx, dy, rows, cols in passes:
        stride = cols * bpp
        scan = np.frombuffer(raw, np.uint8, rows * (stride + 1), start).reshape(rows, stride + 1)
        start += scan.size
        out[y0::dy, x0::dx] = _unfilter(scan, field, bpp).reshape(rows, cols, bpp)
    array = out.reshape(height, width * bpp).view(">u2").reshape(height, width, channels)
    if channels == 2:  # the wire has no two-channel form: RGBA, as Pillow's path reads LA
        array = np.concatenate([array[:, :, :1]] * 3 + [array[:, :, 1:]], axis=2)
    return _upright(array.astype(np.uint16), orientation)


def _unfilter(scan: np.ndarray, field: str, bpp: int) -> np.ndarray:
    """The bytes of PNG scanlines (a filter byte each, then the row) with their filters undone."""
    height, stride = scan.shape[0], scan.shape[1] - 1
    width = stride // bpp
    kinds = scan[:, 0]
    if kinds.size and kinds.max() > 4:
        bad = int(kinds[kinds > 4][0])
        raise ImageError(field, f"corrupt PNG: unknown filter {bad}")
    if np.isin(kinds, (3, 4)).any():
        out = _unfilter_diagonals(scan[:, 1:].reshape(height, width, bpp), kinds)
        return out.reshape(height, stride)
    return _unfilter_rows(scan, height, width, stride, bpp)


def _unfilter_rows(scan: np.ndarray, height: int, width: int, stride: int, bpp: int) -> np.ndarray:
    """PNG's None, Sub and Up filters undone a row at a time (each row whole in numpy)."""
    out = np.zeros((height, stride), dtype=np.uint8)
    previous = np.zeros(stride, dtype=np.uint8)
    for y in range(height):
        kind, line = scan[y, 0], scan[y, 1:]
        if kind == 0:
            row = line.copy()
        elif kind == 2:
            row = line + previous
        else:  # 1, Sub: a running sum of each byte lane, modulo 256
            lanes = line.reshape(width, bpp).astype(np.int64)
            row = (np.cumsum(lanes, axis=0) % 256).astype(np.uint8).reshape(stride)
        out[y] = row
        previous = row
    return out


def _unfilter_diagonals(lines: np.ndarray, kinds: np.ndarray) -> np.ndarray:
    """Every PNG filter undone, Average and Paeth included: a pixel needs the pixels left of
    it, above it and above-left, so the pixels of one anti-diagonal (y + x constant) depend
    only on the two diagonals before it and are undone together, H + W - 1 numpy steps in
    all (byte by byte, a 4096 px image took half a minute). ``lines``: (H, W, bpp) filtered
    bytes; ``kinds``: each row's filter."""
    height, width, bpp = lines.shape
    out = np.zeros((height + 1, width + 1, bpp), dtype=np.uint8)  # a zero row and column
    rows = np.arange(height)
    for d in range(height + width - 1):
        ys = rows[max(0, d - width + 1) : min(height, d + 1)]
        xs = d - ys
        left = out[ys + 1, xs].astype(np.int16)
        up = out[ys, xs + 1].astype(np.int16)
        upper_left = out[ys, xs].astype(np.int16)
        kind = kinds[ys][:, None]
        p = left + up - upper_left
        pa, pb, pc = np.abs(p - left), np.abs(p - up), np.abs(p - upper_left)
        paeth = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, up, upper_left))
        predicted = np.select(
            [kind == 1, kind == 2, kind == 3, kind == 4],
            [left, up, (left + up) >> 1, paeth],
            0,
        )
        out[ys + 1, xs + 1] = (lines[ys, xs] + predicted) & 0xFF
    return out[1:, 1:]


# ---------------------------------------------------------------- 16-bit and float colour TIFF

_TIFF_SIGNATURES = (b"II*\0", b"MM\0*", b"II+\0", b"MM\0+")  # classic and BigTIFF
# tifffile logs each bad tag of a corrupt file (as an error, some of them): a client's bytes
# would write lines in the server's log. The ImageError says what was wrong, once.
logging.getLogger("tifffile").setLevel(logging.CRITICAL)
_TIFF_GRAY = 1  # PhotometricInterpretation: MinIsBlack
_TIFF_RGB = 2
_TIFF_FLOAT = 3  # SampleFormat


def _tiff_encode(array: np.ndarray) -> bytes:
    """16-bit or float32 RGB(A) as a deflate-compressed TIFF, alpha marked as such."""
    buffer = io.BytesIO()
    alpha = ["unassalpha"] if channels_of(array) == 4 else None
    tifffile.imwrite(
        buffer, array, photometric="rgb", extrasamples=alpha, compression="zlib", metadata=None
    )
    return buffer.getvalue()


def _tiff_wide_decode(data: bytes, field: str, limit: int | None) -> np.ndarray | None:
    """A one-page RGB(A) TIFF of 16-bit or float samples, read whole (Pillow would narrow it
    to 8 bits); None for every other TIFF, which Pillow reads without loss. Its orientation
    tag is applied; an ICC profile is not (its pixels are taken as stored)."""
    try:
        with tifffile.TiffFile(io.BytesIO(data)) as tiff:
            page = tiff.pages[0]
            try:
                tiff.pages[1]  # read up to the second page only: a file may chain millions
            except IndexError:
                pass
            else:
                return None  # Pillow's path refuses several frames
            wide = page.bitspersample > 8 or page.sampleformat == _TIFF_FLOAT
            gray_alpha = page.photometric == _TIFF_GRAY and page.samplesperpixel == 2
            rgb = page.photometric == _TIFF_RGB and page.samplesperpixel in (3, 4)
            if not wide or not (rgb or gray_alpha):
                return None
            _check_pixels(page.imagelength, page.imagewidth, field, limit)
            if page.imagedepth != 1:
                raise ImageError(
                    field, f"a volume of {page.imagedepth} planes: send one 2D picture"
                )
            if page.is_tiled:
                _check_tiles(page.imagelength, page.imagewidth,
                             page.tilelength, page.tilewidth * page.tiledepth, field)  # fmt: skip
            array = page.asarray()
            orientation = _tiff_orientation(page.tags.get(_ORIENTATION))
    except ImageError:
        raise
    except Exception as exc:  # tifffile raises many types for corrupt data
        raise ImageError(field, f"cannot decode image bytes (TIFF): {exc}") from exc
    if page.axes.startswith("S"):  # planar: one plane per sample
        array = np.moveaxis(array, 0, -1)
    if gray_alpha:  # the wire has no two-channel form: RGBA, as Pillow's path reads LA
        array = np.concatenate([array[:, :, :1]] * 3 + [array[:, :, 1:]], axis=2)
    if array.dtype.kind == "f":
        array = array.astype(np.float32)
        if not np.isfinite(array).all():
            raise ImageError(field, "float pixels must be finite (no NaN or inf)")
    elif array.dtype != np.uint16:
        raise ImageError(field, f"{array.dtype} TIFF samples are not supported")
    return _upright(as_array(array, field), orientation)


def _tiff_orientation(tag: Any) -> int:
    """The orientation a TIFF's tag gives: 1 (as stored) for none, or for a malformed one."""
    value = getattr(tag, "value", 1)
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _check_tiles(height: int, width: int, tile_height: int, tile_width: int, field: str) -> None:
    """A tiled TIFF's tile is inflated whole at its declared size, whatever the picture's: a
    small file could declare a tiny picture of one huge tile. A tile may pass the picture's
    edges (they are multiples of 16), not by more than a common tile's size."""
    padded = (-(-height // 16) * 16) * (-(-width // 16) * 16)
    if tile_height * tile_width > max(padded, 1 << 20):
        raise ImageError(
            field,
            f"its tiles of {tile_height}x{tile_width} pixels are far larger than the "
            f"{height}x{width} picture",
        )
