"""The packaged original weights: they load into every layer, and they are a trained network."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
import torchvision
from impasto_server.engine import EngineError, imaging
from impasto_server.engine.options import LAYER_NAMES
from impasto_server.engine.vgg import CAFFE, CONV_INDEX, FeatureNet, load_feature_net
from skimage import data

EXPECTED_CHANNELS = {
    "conv1": 64, "conv2": 128, "conv3": 256, "conv4": 512, "conv5": 512,
}  # fmt: skip


def test_every_conv_layer_gets_weights_of_the_right_shape():
    net = load_feature_net("original")
    previous = 3
    for name in LAYER_NAMES:
        conv = net.features[CONV_INDEX[name]]
        out = EXPECTED_CHANNELS[name[:5]]
        assert conv.weight.shape == (out, previous, 3, 3), name
        assert conv.bias.shape == (out,)
        assert not conv.weight.requires_grad
        assert conv.weight.abs().sum() > 0 and torch.isfinite(conv.weight).all()
        previous = out
    assert net.preprocessing.name == "caffe"


def test_loading_is_quick():
    start = time.perf_counter()
    load_feature_net("original")
    # Generous for a loaded CI machine; typically about 0.15 s here.
    assert time.perf_counter() - start < 3.0


def _crop_margin(net: FeatureNet) -> float:
    """How much closer conv5_1 features of two crops of one photograph lie than those of
    crops of different photographs (cosine similarity of spatially averaged features)."""

    def embed(image: np.ndarray) -> torch.Tensor:
        px = imaging.resize(imaging.to_pixels(image)[0], (96, 96))
        with torch.no_grad():
            f = net(px, ("conv5_1",))["conv5_1"].mean(dim=(2, 3))[0]
        return f / f.norm()

    photos = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket()]
    firsts = []
    same = []
    for photo in photos:
        h, w = photo.shape[:2]
        a, b = embed(photo[: 2 * h // 3, : 2 * w // 3]), embed(photo[h // 3 :, w // 3 :])
        same.append(float(a @ b))
        firsts.append(a)
    different = [float(a @ b) for i, a in enumerate(firsts) for j, b in enumerate(firsts) if i < j]
    return min(same) - max(different)


def test_features_recognise_a_photograph_where_random_filters_do_not():
    trained = _crop_margin(load_feature_net("original"))
    torch.manual_seed(0)
    random_net = FeatureNet(torchvision.models.vgg19(weights=None).features, CAFFE)
    random = _crop_margin(random_net)
    # Measured: trained about 0.14, random about -0.005.
    assert trained > 0.08, trained
    assert random < 0.03, random


def test_a_state_dict_file_loads_and_gives_the_same_features(tmp_path):
    original = load_feature_net("original")
    path = tmp_path / "vgg.pt"
    torch.save({f"features.{k}": v for k, v in original.features.state_dict().items()}, path)
    loaded = load_feature_net(str(path), preprocessing="caffe")
    x = torch.rand(1, 3, 32, 32) * 255
    torch.testing.assert_close(loaded(x, ("conv3_1",)), original(x, ("conv3_1",)))


def test_bad_weight_sources_are_clear_errors(tmp_path):
    with pytest.raises(EngineError, match="no weights file") as info:
        load_feature_net(str(tmp_path / "missing.pt"))
    assert info.value.field == "weights"
    partial = tmp_path / "partial.pt"
    torch.save({"0.weight": torch.zeros(64, 3, 3, 3)}, partial)
    with pytest.raises(EngineError, match="lack"):
        load_feature_net(str(partial))
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(EngineError, match="cannot read"):
        load_feature_net(str(junk))
    pickled = tmp_path / "pickled.pt"
    torch.save({"0.weight": torch.zeros(1), "note": object()}, pickled)
    with pytest.raises(EngineError, match="Python objects other than tensors, which are never"):
        load_feature_net(str(pickled))


class _Casts(torch.utils._python_dispatch.TorchDispatchMode):
    """Counts the dtype conversions a pass makes."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += func.overloadpacket.__name__ == "_to_copy"
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("pooling", ["max", "average"])
def test_a_low_precision_pass_gives_autocasts_features_without_casting_the_weights(pooling):
    net = load_feature_net("original")
    layers = ("conv1_1", "conv3_1", "conv4_2", "conv5_1")
    pixels = torch.rand(1, 3, 40, 48, generator=torch.Generator().manual_seed(0)) * 255
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = net(pixels, layers, pooling)
    net.low_precision(torch.bfloat16)  # made once, as the engine does at start
    with _Casts() as casts:
        got = net(pixels, layers, pooling, torch.bfloat16)
    assert casts.count == 1  # the input, once; autocast casts every weight and bias each pass
    for name in layers:
        assert got[name].dtype == torch.bfloat16
        assert torch.equal(got[name], expected[name]), name
    # float32 (or no dtype) is the network itself
    plain = net(pixels, layers, pooling)
    assert torch.equal(net(pixels, layers, pooling, torch.float32)["conv5_1"], plain["conv5_1"])
    assert plain["conv5_1"].dtype == torch.float32
    # moving the network drops the copies (they would be on the old device)
    net.to(torch.float64)
    assert net._low == {}
