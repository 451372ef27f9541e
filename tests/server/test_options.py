"""Every option crosses the wire and reaches the engine."""

from __future__ import annotations

import numpy as np
from impasto import images

ALL_OPTIONS = {
    "preset": "paper",
    "size": 36,
    "iterations": 4,
    "content_weight": 2.5,
    "style_weight": 123.0,
    "tv_weight": 0.01,
    "content_layers": {"conv3_2": 1.0},
    "style_layers": {"conv1_1": 0.5, "conv2_1": 0.25},
    "style_scale": 0.8,
    "init": "noise",
    "optimizer": "adam",
    "learning_rate": 3.0,
    "pooling": "max",
    "seed": 42,
    "color_preservation": "luminance",
    "num_scales": 2,
    "scales": (24, 36),
    "precision": "float32",
}


def test_every_option_reaches_the_engine(client, tiny_content, tiny_style):
    result = client.stylize(tiny_content, [tiny_style, tiny_style[::-1]], style_weights=[3, 1],
                            **ALL_OPTIONS).result()  # fmt: skip
    for name, value in ALL_OPTIONS.items():
        assert result.settings[name] == value, name


def test_seed_makes_runs_repeatable_and_options_change_the_image(client, tiny_content, tiny_style):
    options = {"size": 32, "iterations": 3, "num_scales": 1, "init": "noise", "seed": 7}
    a = client.stylize(tiny_content, [tiny_style], **options).result().image
    b = client.stylize(tiny_content, [tiny_style], **options).result().image
    c = client.stylize(tiny_content, [tiny_style], **{**options, "seed": 8}).result().image
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_mask_regions_and_init_image_reach_the_engine(client, tiny_content, tiny_style):
    mask = np.zeros((20, 24), dtype=np.uint8)  # half the content's size, same aspect
    mask[:, 12:] = 1
    blue = np.zeros_like(tiny_style)
    blue[..., 2] = 255
    common = {"size": 32, "iterations": 3, "num_scales": 1, "seed": 1}
    masked = client.stylize(tiny_content, [tiny_style, blue], mask=mask,
                            region_styles={0: 0, 1: 1}, **common).result()  # fmt: skip
    assert masked.image.shape == (27, 32, 3)
    # a boolean mask is labels 0 and 1 (as a picture, True would be 255)
    request = client.build_request(tiny_content, [tiny_style], mask=mask.astype(bool),
                                   region_styles={1: 0})  # fmt: skip
    assert set(np.unique(images.from_wire(request.mask.labels)).tolist()) == {0, 1}
    client.stylize(tiny_content, [tiny_style], mask=mask.astype(bool), region_styles={1: 0},
                   **common).result()  # fmt: skip
    start = np.full_like(tiny_content, 128)
    from_image = client.stylize(tiny_content, [tiny_style], init="image", init_image=start,
                                **common).result()  # fmt: skip
    from_content = client.stylize(tiny_content, [tiny_style], **common).result()
    assert from_image.settings["init"] == "image"
    assert not np.array_equal(from_image.image, from_content.image)


def test_style_weights_too_large_to_sum_still_blend(client, tiny_content, tiny_style):
    """Weights are finite and >= 0, so any are valid: two at 1e308 blend half and half."""
    blue = np.zeros_like(tiny_style)
    blue[..., 2] = 255
    common = {"size": 32, "iterations": 2, "num_scales": 1, "seed": 3}
    huge = client.stylize(tiny_content, [tiny_style, blue], style_weights=[1e308, 1e308],
                          **common).result()  # fmt: skip
    even = client.stylize(tiny_content, [tiny_style, blue], style_weights=[1, 1],
                          **common).result()  # fmt: skip
    assert np.array_equal(huge.image, even.image)


def test_the_result_settings_give_the_stages_that_ran(client, tiny_content):
    """The 40x48 content at 32 px: stages of long side 16 are 13 px high, under the network's
    16, and are left out; so are the coarsest stages beyond one iteration each. The settings
    say which ran, and sent again they make the same stages."""
    style = np.zeros((32, 32, 3), np.uint8)
    job = client.stylize(tiny_content, [style], size=32, iterations=4, num_scales=4)
    counts = {event.scale_count for event in job if hasattr(event, "scale_count")}
    result = job.result()
    assert counts == {2} and result.settings["num_scales"] == 2  # sides 16, 16, 23, 32 asked
    one = client.stylize(tiny_content, [style], size=32, iterations=1, num_scales=4).result()
    assert one.settings["num_scales"] == 1
    explicit = client.stylize(tiny_content, [style], size=32, iterations=4,
                              scales=[16, 24]).result()  # fmt: skip
    assert explicit.settings["scales"] == (24, 32) and explicit.settings["num_scales"] == 2
    again = client.stylize(tiny_content, [style], size=32, iterations=4,
                           scales=explicit.settings["scales"]).result()  # fmt: skip
    assert again.settings["scales"] == (24, 32)


def test_small_sizes_do_not_repeat_a_stage(client):
    """Square content at 32 px in 4 stages asks for sides 16, 16, 23 and 32: the network's
    16 px floor makes the first two the same, and that stage runs once."""
    content = np.full((32, 32, 3), 120, np.uint8)
    style = np.zeros((32, 32, 3), np.uint8)
    job = client.stylize(content, [style], size=32, iterations=6, num_scales=4)
    counts = {event.scale_count for event in job if hasattr(event, "scale_count")}
    result = job.result()
    assert counts == {3} and result.settings["num_scales"] == 3
    again = client.stylize(content, [style], size=32, iterations=6, num_scales=3).result()
    assert again.settings["num_scales"] == 3
