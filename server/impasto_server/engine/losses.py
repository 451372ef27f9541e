"""The paper's loss terms. Gram matrices, differences and loss values are float32, whatever
the network's precision: Gram matrices of half-precision features overflow. (The style loss's
gradient goes back to half-precision features in their precision, see ``_StyleLoss``.)"""

from __future__ import annotations

import torch


def _positions(features: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """(N, C, h, w) features as (N, M, C) in channels_last memory (True; on a GPU: the memory
    is (M, C) already) or (N, C, M) (False), without a copy."""
    n, c = features.shape[:2]
    if features.is_contiguous():
        return features.view(n, c, -1), False
    return features.permute(0, 2, 3, 1).reshape(n, -1, c), True


def _pair(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The two factors of F F^T for (N, C, h, w) features, read in their memory layout."""
    flat, last = _positions(features)
    return (flat.transpose(1, 2), flat) if last else (flat, flat.transpose(1, 2))


def _products(features: torch.Tensor) -> torch.Tensor:
    """(N, C, C): F F^T of each image of (N, C, h, w) features."""
    return torch.bmm(*_pair(features))


# How a device takes the Grams of half-precision features, by (device type, dtype): "baddbmm"
# or "bmm" (products with float32 output, the second then scaled and subtracted apart), or
# "copy" (a float32 copy of the features first).
_HALF_PRODUCTS: dict[tuple[str, torch.dtype], str] = {}


def _differences(features: torch.Tensor, targets: torch.Tensor, how: str) -> torch.Tensor:
    m = features.shape[2] * features.shape[3]
    if how == "baddbmm":
        factors = _pair(features)
        return torch.baddbmm(targets, *factors, beta=-1.0, alpha=1.0 / m, out_dtype=torch.float32)
    if how == "bmm":
        return torch.bmm(*_pair(features), out_dtype=torch.float32).div_(m).sub_(targets)
    return torch.baddbmm(targets, *_pair(features.float()), beta=-1.0, alpha=1.0 / m)


def gram_differences(features: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(N, C, C) in float32: the M-normalised Gram matrix of each image of (N, C, h, w)
    features less its (N, C, C) float32 target, in one matrix product that scales and subtracts
    as it sums. From half-precision features without a float32 copy of them where the device
    can (torch's ``out_dtype`` products, CUDA only: the products of 8-bit mantissas are exact in
    float32, so this is the float32 Gram summed in another order, and a half-precision matrix
    product, on tensor cores). How the device can is found out once per device type and
    precision, on a tiny product checked against the copy's."""
    if features.dtype not in (torch.bfloat16, torch.float16):
        return _differences(features, targets, "copy")
    key = (features.device.type, features.dtype)
    how = _HALF_PRODUCTS.get(key)
    if how is None:
        how = _HALF_PRODUCTS[key] = _half_products(features.device, features.dtype)
    return _differences(features, targets, how)


def _half_products(device: torch.device, dtype: torch.dtype) -> str:
    probe = torch.arange(24.0, device=device).view(1, 2, 3, 4).to(dtype)
    target = torch.tensor([[[1.0, 2.0], [2.0, 3.0]]], device=device)
    for how in ("baddbmm", "bmm"):
        try:
            if all(
                torch.allclose(_differences(f, target, how), _differences(f, target, "copy"))
                for f in (probe, probe.contiguous(memory_format=torch.channels_last))
            ):
                return how
        except (NotImplementedError, RuntimeError, TypeError):  # no such product here
            pass
    return "copy"


def gram(features: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Gram matrix of (1, N, h, w) features divided by the number of positions M.

    With a (1, 1, h, w) soft ``mask`` each position is weighted by mask**2 and the sum divided by
    the total weight, so a region's Gram is comparable to a whole style image's (Gatys et al. 2017).
    Dividing by M makes E_l below equal to the paper's 1/(4 N^2 M^2) sum (G - A)^2 for same-sized
    images while letting the style image differ in size from the content.
    """
    f = features.float()
    if mask is not None:
        f = f * mask
        denominator = mask.square().sum().clamp_min(1e-8)
    else:
        denominator = f.shape[2] * f.shape[3]
    return _products(f)[0] / denominator


def style_layer_loss(g: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """E_l = 1/(4 N^2) sum (G - A)^2 with M-normalised Grams (the paper's E_l)."""
    n = g.shape[0]
    return (g - target).square().sum() / (4.0 * n * n)


def content_layer_loss(features: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The paper's content loss: 1/2 sum (F - P)^2, of (1, C, h, w) features."""
    return content_layer_losses(features, target)[0]


def tv_loss(pixels: torch.Tensor) -> torch.Tensor:
    """Total variation of (1, 3, H, W) pixels: the sum of squared differences between
    neighbouring pixels (0..1 units), divided by the number of pixels so its weight does not
    depend on the image size."""
    return tv_losses(pixels)[0]


# The losses of images batched along the first axis (no masks), one value per image: a batch's
# terms in a few operations instead of a few for every run. The content and total-variation
# losses above are these for one image.


class _StyleLoss(torch.autograd.Function):
    """``style_layer_loss(gram(f), target)`` for each image of a batch, with its gradient
    written out: E = 1/(4 C^2) sum (G - A)^2 with G = F F^T / M gives dE/dF = (G - A) F /
    (C^2 M) (G - A is symmetric). Autograd's version keeps a float32 copy of every style
    layer's features for the product's backward and runs about twenty operations a layer; this
    keeps the features as they came (bfloat16 from a bfloat16 network, half the bytes) and the
    C x C difference, and runs about ten.

    With half-precision features the gradient's product runs in their precision (the C x C
    matrix rounded to it, summed in float32 by the device's matrix product) and comes out in
    it, as the network's backward takes it: no float32 copy of the features and no cast of the
    result, each a pass over the layer's memory (and, on a GPU, a product on tensor cores)."""

    @staticmethod
    def forward(
        ctx, features: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None
    ) -> torch.Tensor:
        n, c = features.shape[:2]
        difference = gram_differences(features, targets)
        ctx.save_for_backward(features, difference, weights)
        # sum (G - A)^2 / (4 C^2) of each image as one batched product of the difference with
        # itself, then the weights: two kernels (the square, sum and division were three).
        flat = difference.view(n, 1, -1)
        losses = _scaled_bmm(flat, flat.transpose(1, 2), 1.0 / (4.0 * c * c)).view(n)
        return losses if weights is None else losses.mul_(weights)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        features, difference, weights = ctx.saved_tensors
        n, c, h, w = features.shape
        if weights is not None:
            grad = grad * weights
        scaled = (difference * grad.view(n, 1, 1)).to(features.dtype)
        flat, last = _positions(features)
        k = 1.0 / (c * c * h * w)
        if last:  # (N, M, C) @ (N, C, C), back to (N, C, h, w) in channels_last memory
            return _scaled_bmm(flat, scaled, k).view(n, h, w, c).permute(0, 3, 1, 2), None, None
        return _scaled_bmm(scaled, flat, k).view(n, c, h, w), None, None


def _scaled_bmm(a: torch.Tensor, b: torch.Tensor, alpha: float) -> torch.Tensor:
    """alpha * a @ b (batched) in one kernel and one allocation: baddbmm in place ignores what
    its tensor held when beta is 0 (torch.baddbmm would allocate its result beside it)."""
    out = a.new_empty((a.shape[0], a.shape[1], b.shape[2]))
    return out.baddbmm_(a, b, beta=0.0, alpha=alpha)


def style_layer_losses(
    features: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """(N,): ``style_layer_loss(gram(f), target)`` of each image of (N, C, h, w) features
    against (N, C, C) targets, which are Gram matrices (symmetric: the gradient relies on it),
    times its weight in ``weights`` (N,) if given; float32 whatever the features'
    precision."""
    return _StyleLoss.apply(features, targets, weights)


def content_layer_losses(features: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(N,): ``content_layer_loss`` of each image of (N, C, h, w) features against float32
    targets (the difference is float32: no float32 copy of half-precision features first)."""
    return 0.5 * (features - targets).square().sum(dim=(1, 2, 3))


def tv_losses(pixels: torch.Tensor) -> torch.Tensor:
    """(N,): ``tv_loss`` of each image of (N, 3, H, W) pixels."""
    x = pixels.float() / 255.0
    dx = (x[..., :, 1:] - x[..., :, :-1]).square().sum(dim=(1, 2, 3))
    dy = (x[..., 1:, :] - x[..., :-1, :]).square().sum(dim=(1, 2, 3))
    return (dx + dy) / (x.shape[-1] * x.shape[-2])
