"""The paper's loss terms. Everything here runs in float32, whatever the network's precision:
Gram matrices of half-precision features overflow."""

from __future__ import annotations

import torch


def gram(features: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Gram matrix of (1, N, h, w) features divided by the number of positions M.

    With a (1, 1, h, w) soft ``mask`` each position is weighted by mask**2 and the sum divided by
    the total weight, so a region's Gram is comparable to a whole style image's (Gatys et al. 2017).
    Dividing by M makes E_l below equal to the paper's 1/(4 N^2 M^2) sum (G - A)^2 for same-sized
    images while letting the style image differ in size from the content.
    """
    f = features.float()
    n = f.shape[1]
    if mask is not None:
        f = f * mask
        denominator = mask.square().sum().clamp_min(1e-8)
    else:
        denominator = f.shape[2] * f.shape[3]
    if f.is_contiguous():
        flat = f.view(n, -1)  # (N, M)
        g = flat @ flat.t()
    else:  # channels_last (on a GPU): the memory is (M, N) already, so no copy
        flat = f.permute(0, 2, 3, 1).reshape(-1, n)
        g = flat.t() @ flat
    return g / denominator


def style_layer_loss(g: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """E_l = 1/(4 N^2) sum (G - A)^2 with M-normalised Grams (the paper's E_l)."""
    n = g.shape[0]
    return (g - target).square().sum() / (4.0 * n * n)


def content_layer_loss(features: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The paper's content loss: 1/2 sum (F - P)^2."""
    return 0.5 * (features.float() - target).square().sum()


def tv_loss(pixels: torch.Tensor) -> torch.Tensor:
    """Total variation: the sum of squared differences between neighbouring pixels (0..1 units),
    divided by the number of pixels so its weight does not depend on the image size."""
    x = pixels.float() / 255.0
    dx = (x[..., :, 1:] - x[..., :, :-1]).square().sum()
    dy = (x[..., 1:, :] - x[..., :-1, :]).square().sum()
    return (dx + dy) / (x.shape[-1] * x.shape[-2])
