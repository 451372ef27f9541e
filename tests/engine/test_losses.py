"""The loss terms against hand computations on small tensors."""

from __future__ import annotations

import torch
from impasto_server.engine.losses import content_layer_loss, gram, style_layer_loss, tv_loss


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
