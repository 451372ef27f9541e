"""Images as napari holds them (uint8/uint16/float, gray/RGB/RGBA numpy arrays) to and from the
engine's working form: float32 RGB pixels in 0..255, shape (1, 3, H, W)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .options import EngineError

MIN_SIDE = 16  # conv5_1 sits after four 2x poolings
#: Bytes a pixel takes as ``to_pixels`` makes it: RGB float32 (a job's copies of its images).
PIXEL_BYTES = 3 * 4
# ITU-R BT.601 luma, and the YIQ chroma axes that go with it.
_RGB_TO_YIQ = torch.tensor(
    [[0.299, 0.587, 0.114], [0.595716, -0.274453, -0.321263], [0.211456, -0.522591, 0.311135]]
)
_YIQ_TO_RGB = torch.linalg.inv(_RGB_TO_YIQ)


@dataclass(frozen=True)
class Source:
    """How an input image was scaled into 0..1, so the result can be mapped back."""

    dtype: np.dtype
    channels: int  # 1, 3 or 4
    low: float
    high: float


def check_image(name: str, image: object) -> np.ndarray:
    """Validate one input image; return it as an (H, W, C) array."""
    if not isinstance(image, np.ndarray):
        raise EngineError(name, f"must be a numpy array, got {type(image).__name__}")
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4):
        raise EngineError(name, f"must be HxW, HxWx1, HxWx3 or HxWx4, got shape {image.shape}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise EngineError(name, "is empty")
    if image.dtype not in (np.uint8, np.uint16, np.float32, np.float64):
        raise EngineError(name, f"dtype {image.dtype} is not uint8, uint16 or float")
    if image.dtype.kind == "f" and not np.isfinite(image).all():
        raise EngineError(name, "contains NaN or infinity")
    return image


def to_pixels(image: np.ndarray) -> tuple[torch.Tensor, torch.Tensor | None, Source]:
    """(H, W, C) array -> (1, 3, H, W) RGB float32 in 0..255, the alpha plane or None, and Source."""
    image = check_image("image", image)
    channels = image.shape[2]
    if image.dtype == np.uint8:
        low, high = 0.0, 255.0
    elif image.dtype == np.uint16:
        low, high = 0.0, 65535.0
    else:
        low, high = float(image.min()), float(image.max())
        if low >= 0.0 and high <= 1.0:
            low, high = 0.0, 1.0
        elif not high > low:  # constant (low + 1.0 is low itself from 2**53 on)
            high = low + max(1.0, abs(low))
    # One pass from the array's (H, W, C) layout and dtype to float32 planes, then the scaling
    # in place (none for uint8: 0..255 already): a photograph of many megapixels is converted
    # for each job.
    planes = image.transpose(2, 0, 1)
    scale = 255.0 / (high - low)

    def converted(source: np.ndarray) -> torch.Tensor:
        x = np.empty((1, *source.shape), dtype=np.float32)
        np.copyto(x[0], source)
        if low != 0.0 or scale != 1.0:
            # scaled first: x - low overflows float32 where the values span more than its
            # range (-3e38 and 3e38 are finite float32 pixels)
            x *= np.float32(scale)
            x -= np.float32(low * scale)
        return torch.from_numpy(x)

    rgb = converted(np.broadcast_to(planes[:1], (3, *planes.shape[1:])) if channels == 1
                    else planes[:3])  # fmt: skip
    alpha = converted(planes[3:4]) if channels == 4 else None
    return rgb, alpha, Source(image.dtype, channels, low, high)


def from_pixels(rgb: torch.Tensor, alpha: torch.Tensor | None, source: Source) -> np.ndarray:
    """Inverse of to_pixels: clamps to the valid range and restores dtype and channel count."""
    x = rgb.detach().float().cpu().clamp(0.0, 255.0)
    if source.channels in (1,):
        x = luminance(x)
    if alpha is not None and source.channels == 4:
        x = torch.cat([x, resize(alpha.cpu(), x.shape[-2:]).clamp(0.0, 255.0)], dim=1)
    array = x[0].permute(1, 2, 0).numpy()
    if source.channels == 1:
        array = array[:, :, 0]
    if source.dtype == np.uint8:
        return np.rint(array).astype(np.uint8)
    if source.dtype == np.uint16:
        return np.rint(array * (65535.0 / 255.0)).astype(np.uint16)
    values = array.astype(np.float64) * ((source.high - source.low) / 255.0) + source.low
    top = float(np.finfo(np.float32).max)  # the source's own range, in float64 arithmetic
    return np.clip(values, -top, top).astype(np.float32)


def fit_long_side(height: int, width: int, long_side: int) -> tuple[int, int]:
    """The (h, w) whose longer side is ``long_side`` with the aspect ratio kept."""
    scale = long_side / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def resize(x: torch.Tensor, size: tuple[int, int] | torch.Size) -> torch.Tensor:
    size = (int(size[0]), int(size[1]))
    if tuple(x.shape[-2:]) == size:
        return x
    return F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=True)


def luminance(rgb: torch.Tensor) -> torch.Tensor:
    """(1, 3, H, W) -> (1, 1, H, W) luma."""
    weights = _RGB_TO_YIQ[0].to(rgb.device, rgb.dtype).view(1, 3, 1, 1)
    return (rgb * weights).sum(dim=1, keepdim=True)


def luminance_rgb(rgb: torch.Tensor) -> torch.Tensor:
    return luminance(rgb).expand(-1, 3, -1, -1).contiguous()


def match_luminance(style: torch.Tensor, content: torch.Tensor) -> torch.Tensor:
    """Style luma with its mean and deviation matched to the content's (Gatys et al. 2016)."""
    ls, lc = luminance(style), luminance(content)
    matched = (ls - ls.mean()) * (lc.std() / ls.std().clamp_min(1e-6)) + lc.mean()
    return matched.expand(-1, 3, -1, -1).contiguous()


def with_chroma_of(luma_source: torch.Tensor, chroma_source: torch.Tensor) -> torch.Tensor:
    """Luma of the first image combined with the YIQ chroma of the second (same size)."""
    to_yiq = _RGB_TO_YIQ.to(chroma_source.device)
    to_rgb = _YIQ_TO_RGB.to(chroma_source.device)
    yiq = torch.einsum("ij,bjhw->bihw", to_yiq, chroma_source.float())
    yiq[:, 0:1] = luminance(luma_source.float())
    return torch.einsum("ij,bjhw->bihw", to_rgb, yiq)


def match_color_statistics(style: torch.Tensor, content: torch.Tensor) -> torch.Tensor:
    """Affinely map the style's RGB so its mean and covariance equal the content's."""

    def stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        flat = x.reshape(3, -1).double()
        mean = flat.mean(dim=1, keepdim=True)
        centred = flat - mean
        cov = centred @ centred.t() / flat.shape[1] + 1e-3 * torch.eye(3, dtype=flat.dtype)
        return flat, mean, cov

    def sqrtm(m: torch.Tensor, inverse: bool = False) -> torch.Tensor:
        values, vectors = torch.linalg.eigh(m)
        values = values.clamp_min(1e-8).sqrt()
        if inverse:
            values = 1.0 / values
        return vectors @ torch.diag(values) @ vectors.t()

    s_flat, s_mean, s_cov = stats(style)
    _, c_mean, c_cov = stats(content)
    transform = sqrtm(c_cov) @ sqrtm(s_cov, inverse=True)
    mapped = transform @ (s_flat - s_mean) + c_mean
    return mapped.float().reshape(style.shape).clamp(0.0, 255.0)
