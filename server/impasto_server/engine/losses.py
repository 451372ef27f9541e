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


# The same losses for runs batched along the first axis (one image each, no masks), one value
# per run: a batch's terms in a few operations instead of a few for every run.


def grams(features: torch.Tensor) -> torch.Tensor:
    """(N, C, C): ``gram`` of each of the N images of (N, C, h, w) features."""
    f = features.float()
    n, c = f.shape[:2]
    if f.is_contiguous():
        flat = f.view(n, c, -1)  # (N, C, M)
        g = torch.bmm(flat, flat.transpose(1, 2))
    else:  # channels_last: (N, M, C) in memory already
        flat = f.permute(0, 2, 3, 1).reshape(n, -1, c)
        g = torch.bmm(flat.transpose(1, 2), flat)
    return g / (f.shape[2] * f.shape[3])


def style_layer_losses(g: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(N,): ``style_layer_loss`` of each run, from (N, C, C) Grams and targets."""
    n = g.shape[-1]
    return (g - targets).square().sum(dim=(1, 2)) / (4.0 * n * n)


def content_layer_losses(features: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(N,): ``content_layer_loss`` of each run."""
    return 0.5 * (features.float() - targets).square().sum(dim=(1, 2, 3))


def tv_losses(pixels: torch.Tensor) -> torch.Tensor:
    """(N,): ``tv_loss`` of each image of (N, 3, H, W) pixels."""
    x = pixels.float() / 255.0
    dx = (x[..., :, 1:] - x[..., :, :-1]).square().sum(dim=(1, 2, 3))
    dy = (x[..., 1:, :] - x[..., :-1, :]).square().sum(dim=(1, 2, 3))
    return (dx + dy) / (x.shape[-1] * x.shape[-2])
