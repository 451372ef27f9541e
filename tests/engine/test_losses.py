"""The loss terms against hand computations on small tensors."""

from __future__ import annotations

import torch
from impasto_server.engine.losses import (
    _products,
    content_layer_loss,
    gram,
    gram_differences,
    style_layer_loss,
    style_layer_losses,
    tv_loss,
)


def test_style_loss_is_the_papers_formula():
    torch.manual_seed(0)
    n, h, w = 4, 3, 5
    m = h * w
    f = torch.rand(1, n, h, w)
    s = torch.rand(1, n, h, w)
    fl, sl = f.reshape(n, m), s.reshape(n, m)
    g_raw = fl @ fl.t()
    a_raw = sl @ sl.t()
    # The paper: E_l = 1/(4 N^2 M^2) sum (G - A)^2 with unnormalised Grams.
    expected = ((g_raw - a_raw) ** 2).sum() / (4 * n**2 * m**2)
    got = style_layer_loss(gram(f), gram(s))
    torch.testing.assert_close(got, expected)
    # And by hand for one entry of the Gram matrix.
    assert torch.isclose(gram(f)[1, 2], (fl[1] * fl[2]).sum() / m)


def test_content_loss_is_half_the_sum_of_squares():
    f = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    p = torch.tensor([[[[0.0, 2.0], [5.0, 1.0]]]])
    assert content_layer_loss(f, p).item() == 0.5 * (1 + 0 + 4 + 9)


def test_masked_gram_of_a_full_mask_is_the_plain_gram_and_a_region_is_its_own():
    torch.manual_seed(1)
    f = torch.rand(1, 3, 4, 6)
    torch.testing.assert_close(gram(f, torch.ones(1, 1, 4, 6)), gram(f))
    left = torch.zeros(1, 1, 4, 6)
    left[..., :3] = 1.0
    torch.testing.assert_close(gram(f, left), gram(f[..., :3]))


def test_gram_of_half_precision_features_is_float32():
    f = torch.full((1, 8, 64, 64), 300.0, dtype=torch.bfloat16)
    g = gram(f)
    assert g.dtype == torch.float32 and torch.isfinite(g).all()


def test_total_variation_by_hand():
    x = torch.tensor([[[[0.0, 255.0], [255.0, 255.0]]]])  # one channel, 0..255
    # neighbours differ by 1 (in 0..1 units) once horizontally and once vertically; 4 pixels
    assert tv_loss(x).item() == (1.0 + 1.0) / 4


def test_gram_of_channels_last_features_equals_the_contiguous_one():
    torch.manual_seed(2)
    f = torch.rand(1, 5, 6, 7)
    last = f.contiguous(memory_format=torch.channels_last)
    assert not last.is_contiguous()
    torch.testing.assert_close(gram(last), gram(f))
    mask = torch.rand(1, 1, 6, 7)
    torch.testing.assert_close(gram(last, mask), gram(f, mask))


def _reference(features: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Autograd's way, one image at a time: the losses the engine used to compute."""
    return torch.stack([
        style_layer_loss(gram(features[i : i + 1]), targets[i]) for i in range(len(features))
    ])  # fmt: skip


def test_batched_style_losses_and_their_gradient_are_autograds():
    g = torch.Generator().manual_seed(0)
    features = torch.rand(3, 5, 4, 6, generator=g, dtype=torch.float64) * 3
    targets = torch.stack([gram(torch.rand(1, 5, 7, 3, generator=g, dtype=torch.float64))
                           for _ in range(3)])  # fmt: skip
    upstream = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    for layout in (torch.contiguous_format, torch.channels_last):
        f = features.clone(memory_format=layout).requires_grad_(True)
        r = features.clone().requires_grad_(True)
        got, expected = style_layer_losses(f, targets), _reference(r, targets)
        torch.testing.assert_close(got, expected)
        (got * upstream).sum().backward()
        (expected * upstream).sum().backward()
        torch.testing.assert_close(f.grad, r.grad)
        assert f.grad.is_contiguous(memory_format=layout)


def test_style_losses_keep_bfloat16_features_not_a_float32_copy_for_the_backward():
    # Autograd's product would save a float32 copy of the features (4 bytes a value) until the
    # backward pass; the hand-written one keeps the bfloat16 features (2 bytes) it was given.
    features = (torch.rand(2, 8, 16, 16) * 4).to(torch.bfloat16).requires_grad_(True)
    targets = gram(torch.rand(1, 8, 5, 5)).expand(2, 8, 8)  # Grams: symmetric
    loss = style_layer_losses(features, targets)
    saved = [t for t in loss.grad_fn.saved_tensors if t is not None]  # (no weights given)
    assert {t.dtype for t in saved} == {torch.bfloat16, torch.float32}
    big = [t for t in saved if t.numel() == features.numel()]
    assert len(big) == 1 and big[0].dtype == torch.bfloat16
    loss.sum().backward()
    reference = features.detach().float().requires_grad_(True)
    _reference(reference, targets).sum().backward()
    assert features.grad.dtype == torch.bfloat16
    # the same gradient, but for bfloat16's rounding of it (8 bits: 0.4% relative)
    rounded = reference.grad.to(torch.bfloat16).float()
    torch.testing.assert_close(features.grad.float(), rounded, rtol=1.6e-2, atol=1e-5)


def test_gram_differences_of_bfloat16_features_are_those_of_their_float32_copy():
    # Without a float32 copy where the device has products with float32 output (CUDA), with
    # one elsewhere: either way the float32 Gram (bf16 x bf16 products are exact in float32),
    # divided by the positions, less the target.
    features = (torch.rand(2, 6, 5, 7) * 4).to(torch.bfloat16)
    targets = torch.rand(2, 6, 6)
    for layout in (torch.contiguous_format, torch.channels_last):
        f = features.contiguous(memory_format=layout)
        got = gram_differences(f, targets)
        assert got.dtype == torch.float32
        expected = _products(f.float()) / 35 - targets
        torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)


def test_the_first_half_precision_product_a_device_gets_right_is_kept(monkeypatch):
    # As on a device whose torch has bmm with a float32 output but not baddbmm: the probe
    # falls through to it; one whose products come out wrong falls through to the copy.
    from impasto_server.engine import losses

    real = losses._differences

    def device(broken: set[str], wrong: set[str]):
        def differences(features, targets, how):
            if how in broken:
                raise RuntimeError(f"no {how} with out_dtype here")
            result = real(features, targets, "copy")
            return result + 1 if how in wrong else result

        return differences

    cpu = torch.device("cpu")
    monkeypatch.setattr(losses, "_differences", device({"baddbmm"}, set()))
    assert losses._half_products(cpu, torch.bfloat16) == "bmm"
    monkeypatch.setattr(losses, "_differences", device(set(), {"baddbmm"}))
    assert losses._half_products(cpu, torch.bfloat16) == "bmm"
    monkeypatch.setattr(losses, "_differences", device({"baddbmm"}, {"bmm"}))
    assert losses._half_products(cpu, torch.bfloat16) == "copy"
    monkeypatch.setattr(losses, "_differences", real)
    assert losses._half_products(cpu, torch.bfloat16) == "copy"  # this CPU has neither


def test_weighted_style_losses_are_the_weights_times_the_losses_and_so_is_their_gradient():
    g = torch.Generator().manual_seed(1)
    features = torch.rand(3, 4, 5, 6, generator=g, dtype=torch.float64) * 3
    targets = torch.stack([gram(torch.rand(1, 4, 6, 5, generator=g)) for _ in range(3)])
    weights = torch.tensor([0.5, 0.0, 3.0])
    f = features.clone().requires_grad_(True)
    r = features.clone().requires_grad_(True)
    got = style_layer_losses(f, targets, weights)
    expected = style_layer_losses(r, targets) * weights
    torch.testing.assert_close(got, expected)
    got.sum().backward()
    expected.sum().backward()
    torch.testing.assert_close(f.grad, r.grad)
    assert f.grad[1].abs().max() == 0  # a weight of 0: no gradient


def test_the_style_gradient_allocates_one_feature_sized_tensor():
    # The backward's product (features-sized) is written into the one tensor it allocates; a
    # second one beside it (torch.baddbmm's result next to its ignored input) raised the
    # counted peak of a 1024 px float32 job by 5%.
    from impasto_server.engine.memory_budget import MemoryBudget

    features = torch.rand(2, 16, 32, 32, requires_grad=True)
    targets = gram(torch.rand(1, 16, 5, 5)).expand(2, 16, 16)
    loss = style_layer_losses(features, targets).sum()
    size = features.numel() * features.element_size()
    with MemoryBudget(1 << 40) as counter:
        (gradient,) = torch.autograd.grad(loss, features)
    assert counter.peak < 2 * size, (counter.peak, size)
    torch.testing.assert_close(
        gradient, torch.autograd.grad(_reference(features, targets).sum(), features)[0]
    )
