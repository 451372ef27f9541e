"""The common yardstick for comparing stylized images, whoever made them: the paper's losses
under the packaged original weights, measured at the image's own size.

Content distance: 1/2 sum (F - P)^2 at conv4_2 against the content resized to the image.
Style distance: the mean over conv1_1..conv5_1 of 1/(4 N^2) sum (G - A)^2, with M-normalised
Grams of the image and of the style resized to the image's long side.
"""

from __future__ import annotations

import numpy as np
import torch

from . import imaging
from .losses import content_layer_loss, gram, style_layer_loss
from .vgg import load_feature_net

STYLE_LAYERS = ("conv1_1", "conv2_1", "conv3_1", "conv4_1", "conv5_1")
CONTENT_LAYER = "conv4_2"


class Yardstick:
    """``Yardstick(content, style, (h, w))(image)`` -> (content distance, style distance)."""

    def __init__(
        self,
        content: np.ndarray,
        style: np.ndarray,
        shape: tuple[int, int],
        net: torch.nn.Module | None = None,
    ) -> None:
        self.net = net if net is not None else load_feature_net("original")
        self.device = next(self.net.parameters()).device
        h, w = shape
        c = imaging.resize(imaging.to_pixels(content)[0], (h, w))
        s = imaging.resize(
            imaging.to_pixels(style)[0], imaging.fit_long_side(*style.shape[:2], max(h, w))
        )
        with torch.no_grad():
            self.content = self.net(c.to(self.device), (CONTENT_LAYER,))[CONTENT_LAYER]
            self.grams = {
                n: gram(f) for n, f in self.net(s.to(self.device), STYLE_LAYERS, "max").items()
            }

    def __call__(self, image: np.ndarray) -> tuple[float, float]:
        px = imaging.to_pixels(image)[0].to(self.device)
        with torch.no_grad():
            f = self.net(px, (*STYLE_LAYERS, CONTENT_LAYER), "max")
        style = sum(style_layer_loss(gram(f[n]), self.grams[n]).item() for n in STYLE_LAYERS)
        return content_layer_loss(f[CONTENT_LAYER], self.content).item(), style / len(STYLE_LAYERS)
