"""Runs that share a batch: one forward and backward pass for all, each its own result."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from impasto_server.engine import Cancelled, Engine, EngineError, Progress, Result, StyleOptions


def _together(engine: Engine, jobs, **prepare) -> dict[int, list]:
    prepared = [engine.prepare(c, [s], o, **prepare) for c, s, o in jobs]
    out: dict[int, list] = {i: [] for i in range(len(jobs))}
    for i, event in engine.run_batch(prepared):
        out[i].append(event)
    return out


def _float(image: np.ndarray) -> np.ndarray:
    return image.astype(np.float32) / 255.0


def _losses(events) -> list[float]:
    return [e.losses["total"] for e in events if isinstance(e, Progress)]


def test_adam_runs_in_a_batch_follow_the_path_they_would_follow_alone(
    engine, content, style, red_style, blue_style
):
    base = StyleOptions.from_preset(
        "default", size=48, iterations=12, num_scales=2, optimizer="adam", seed=1
    )
    flipped = np.ascontiguousarray(content[:, ::-1])
    jobs = [
        (content, style, base),
        (flipped, red_style, base.replace(style_weight=300.0, init="noise", seed=5)),
        (content, blue_style, base.replace(content_weight=5.0, learning_rate=4.0, tv_weight=1e9)),
    ]
    keys = {engine.prepare(c, [s], o).batch_key for c, s, o in jobs}
    assert len(keys) == 1
    together = _together(engine, jobs)
    for i, (c, s, o) in enumerate(jobs):
        events = together[i]
        assert [e.iteration for e in events[:-1]] == list(range(1, 13))
        assert isinstance(events[-1], Result)
        alone = list(engine.run(c, [s], o))
        # The first loss is the same function at the same point: equal to float tolerance
        # (the batched convolutions sum in another order, about 1e-7 relative). Later ones
        # follow the solo path closely; the optimisation is chaotic (a max-pooling tie or a
        # ReLU kink decided by a last bit reroutes a gradient), so not bit for bit.
        solo, batched = _losses(alone), _losses(events)
        assert batched[0] == pytest.approx(solo[0], rel=1e-6)
        for a, b in zip(solo, batched, strict=True):
            assert b == pytest.approx(a, rel=1e-3), (i, a, b)
        difference = np.abs(_float(events[-1].image) - _float(alone[-1].image))
        assert difference.mean() < 1e-3 and difference.max() <= 8 / 255, (i, difference.max())
    # The three results are not one image: each run kept its own settings.
    images = [together[i][-1].image for i in range(3)]
    assert np.abs(_float(images[0]) - _float(images[2])).mean() > 0.01
    assert np.abs(_float(images[0]) - _float(images[1])).mean() > 0.01


def test_lbfgs_runs_share_passes_but_each_keeps_its_own_optimiser(engine, content, style):
    base = StyleOptions.from_preset("default", size=48, iterations=8, num_scales=1, seed=1)
    jobs = [(content, style, base), (content, style, base.replace(style_weight=1e4))]
    together = _together(engine, jobs)
    for i, (c, s, o) in enumerate(jobs):
        alone = list(engine.run(c, [s], o))
        # The first evaluation is the same function at the same point; after that L-BFGS's
        # steps (dot products over the whole image) amplify last-bit differences, so later
        # iterations are as good but not equal to float tolerance.
        assert _losses(together[i])[0] == pytest.approx(_losses(alone)[0], rel=1e-5)
        assert _losses(together[i])[-1] < _losses(together[i])[0] / 2
        assert together[i][-1].image.shape == alone[-1].image.shape
    # The two runs optimised different objectives, not one shared one.
    assert _losses(together[1])[0] > 5 * _losses(together[0])[0]


def test_a_cancelled_or_diverging_run_leaves_the_batch_alone(engine, content, style, red_style):
    base = StyleOptions.from_preset("default", size=48, iterations=10, num_scales=1, seed=2)
    stop_after = {"n": 0}

    def stop_at_four() -> bool:
        return stop_after["n"] >= 4

    prepared = [
        engine.prepare(content, [style], base),
        engine.prepare(content, [red_style], base, should_stop=stop_at_four),
        # A loss beyond float32's range: this run alone ends with a clear error.
        engine.prepare(content, [style], base.replace(style_weight=1e38, content_weight=1e38)),
    ]
    events: dict[int, list] = {0: [], 1: [], 2: []}
    for i, event in engine.run_batch(prepared):
        events[i].append(event)
        if i == 0 and isinstance(event, Progress):
            stop_after["n"] = event.iteration
    assert isinstance(events[1][-1], Cancelled)
    assert [e.iteration for e in events[1][:-1]] == [1, 2, 3, 4]
    assert len(events[2]) == 1 and isinstance(events[2][0], EngineError)
    assert "diverged" in str(events[2][0])
    assert isinstance(events[0][-1], Result) and events[0][-1].iterations == 10
    alone = list(engine.run(content, [style], base))
    # L-BFGS: the first losses match; the run that went on finished as it would alone in form.
    assert _losses(events[0])[0] == pytest.approx(_losses(alone)[0], rel=1e-5)
    assert events[0][-1].image.shape == alone[-1].image.shape


def test_runs_of_different_shapes_do_not_batch(engine, content, style):
    small = engine.prepare(content, [style], StyleOptions(size=48, iterations=2, num_scales=1))
    large = engine.prepare(content, [style], StyleOptions(size=64, iterations=2, num_scales=1))
    average = engine.prepare(
        content, [style], StyleOptions(size=48, iterations=2, num_scales=1, pooling="average")
    )
    assert len({small.batch_key, large.batch_key, average.batch_key}) == 3
    with pytest.raises(ValueError, match="batch_key"):
        engine.run_batch([small, large])


def test_a_batch_that_runs_out_of_memory_goes_on_one_pass_per_run(engine, content, style, caplog):
    from impasto_server.engine.memory_budget import MemoryBudget

    options = StyleOptions(size=32, iterations=6, num_scales=1, optimizer="adam", seed=3)
    small = np.ascontiguousarray(content[::4, ::4])

    def peak(runs: int) -> int:
        budget = MemoryBudget(1 << 40)
        with budget:
            events = list(engine.run_batch(
                [engine.prepare(small, [style], options) for _ in range(runs)]))  # fmt: skip
        assert all(not isinstance(e, Exception) for _, e in events)
        return budget.peak

    one, three = peak(1), peak(3)
    assert three > 1.5 * one, (one, three)
    # A "device" that holds one run's pass but not three at once.
    with (
        caplog.at_level("WARNING", logger="impasto_server.engine"),
        MemoryBudget((one + three) // 2),
    ):
        events = list(engine.run_batch(
            [engine.prepare(small, [style], options) for _ in range(3)]))  # fmt: skip
    assert "ran out of memory" in caplog.text
    results = [e for _, e in events if isinstance(e, Result)]
    assert len(results) == 3 and all(r.iterations == 6 for r in results)
    alone = list(engine.run(small, [style], options))[-1].image
    for result in results:
        assert np.abs(result.image.astype(int) - alone.astype(int)).max() <= 8


class _Ops(torch.utils._python_dispatch.TorchDispatchMode):
    """Counts the operations dispatched while ``on`` (each a kernel launch or more on a GPU)."""

    def __init__(self) -> None:
        super().__init__()
        self.count, self.on = 0, False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += self.on
        return func(*args, **(kwargs or {}))


def _operations_per_iteration(engine, content, style, runs: int) -> float:
    options = StyleOptions.from_preset(
        "default", size=32, iterations=6, num_scales=1, optimizer="adam", seed=0
    )
    prepared = [engine.prepare(content, [style], options) for _ in range(runs)]
    ops, seen = _Ops(), 0
    with ops:
        for index, event in engine.run_batch(prepared):
            if index == runs - 1 and isinstance(event, Progress):
                seen += 1
                ops.on = 2 <= seen < 6  # iterations 3 to 6
    return ops.count / 4


def test_a_batch_computes_its_runs_loss_terms_and_adam_steps_together(engine, content, style):
    # A batch shares the network's pass; its runs' losses (Gram products, loss terms and
    # their backward) are batched too, and the Adam steps of runs with the same settings are
    # one fused step, so a run more costs a few operations an iteration (on a GPU, launches):
    # 3 here; 7 with an Adam step per run, about 185 with per-run losses as well.
    two, six = (_operations_per_iteration(engine, content, style, n) for n in (2, 6))
    assert (six - two) / 4 < 5, (two, six)


def test_runs_with_other_layers_or_a_mask_keep_their_own_losses_in_a_batch(
    engine, content, style, red_style, blue_style
):
    h, w = content.shape[:2]
    mask = np.zeros((h, w), np.uint8)
    mask[:, w // 2 :] = 1
    base = StyleOptions.from_preset(
        "default", size=40, iterations=3, num_scales=1, optimizer="adam", seed=3
    )
    own_layers = base.replace(
        style_layers={"conv1_1": 1.0, "conv3_1": 0.5}, content_layers={"conv3_2": 2.0}
    )
    unmasked = [(content, [style], base, {}), (content, [red_style], own_layers, {})]
    masked = [*unmasked, (content, [red_style, blue_style], base,
                          {"mask": mask, "region_styles": {0: 0, 1: 1}})]  # fmt: skip
    for jobs in (unmasked, masked):  # batched losses; one by one (a mask is per run)
        prepared = [engine.prepare(c, s, o, **kw) for c, s, o, kw in jobs]
        assert len({run.batch_key for run in prepared}) == 1
        first: dict[int, dict[str, float]] = {}
        for i, event in engine.run_batch(prepared):
            if isinstance(event, Progress) and event.iteration == 1:
                first[i] = event.losses
        for i, (c, s, o, kw) in enumerate(jobs):
            alone = next(e for e in engine.run(c, s, o, **kw) if isinstance(e, Progress))
            # Each term as alone (a content loss of 0, the image being the content, comes out
            # near 0: the batched convolutions sum in another order).
            near = 1e-6 * alone.losses["total"]
            for term in ("content", "style", "tv", "total"):
                expected = pytest.approx(alone.losses[term], rel=1e-5, abs=near)
                assert first[i][term] == expected, (i, term)


def test_a_batchs_shared_adam_step_is_each_runs_own_to_the_bit(engine, content, style, monkeypatch):
    from impasto_server.engine import transfer

    options = StyleOptions.from_preset(
        "default", size=40, iterations=5, num_scales=1, optimizer="adam", seed=4
    )
    jobs = [(content, style, options), (content, style, options.replace(seed=9, init="noise"))]

    def results() -> list[np.ndarray]:
        together = _together(engine, jobs)
        return [together[i][-1].image for i in range(len(jobs))]

    shared = results()
    monkeypatch.setattr(transfer, "_adam_together", lambda stages: None)  # each run steps alone
    for own, one in zip(results(), shared, strict=True):
        assert np.array_equal(own, one)


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_a_run_alone_takes_the_batched_terms_of_its_own_objective(
    engine, content, style, precision
):
    # A run without a mask is computed as a batch of one (shared.objective); its terms and
    # gradient are those its own objective (the per-run path masked runs keep) gives.
    from impasto_server.engine import shared

    options = StyleOptions.from_preset(
        "default", size=40, iterations=2, num_scales=1, optimizer="adam", seed=2,
        tv_weight=1e6, init="noise", precision=precision,
        content_layers={"conv4_2": 1.0, "conv2_2": 0.5},
    )  # fmt: skip
    run = engine.prepare(content, [style], options)
    run.begin_stage(0)
    stage = run.stage
    stage.scale = 3.0  # as after the first step

    def evaluate(objective):
        stage.x.grad = None
        feats = engine.net(stage.x, stage.layers, options.pooling, engine._dtype(precision))
        value, terms = objective(feats)
        value.backward()
        return value.item(), terms.tolist(), stage.x.grad.clone()

    batched = evaluate(lambda feats: shared.objective([stage], stage.x, feats))
    own = evaluate(lambda feats: (stage.objective(feats), torch.stack(list(stage.terms.values()))))
    assert batched[0] == pytest.approx(own[0], rel=1e-6)
    assert batched[1][0] == pytest.approx(own[1], rel=1e-6)
    assert all(batched[1][0][:3])  # every term counted (content, style, tv)
    torch.testing.assert_close(batched[2], own[2], rtol=1e-5, atol=1e-6 * own[2].abs().max())


def test_a_run_that_ends_in_a_batch_lets_go_of_its_tensors_while_the_batch_goes_on(
    engine, content, style
):
    """A cancelled job's image, optimiser state and targets are freed within an iteration, as
    the API says, not when the other runs of its batch end."""
    options = StyleOptions.from_preset(
        "default", size=32, iterations=8, num_scales=1, optimizer="adam", seed=1
    )
    stop = {"now": False}
    runs = [
        engine.prepare(content, [style], options, should_stop=lambda: stop["now"]),
        engine.prepare(content, [style], options),
    ]
    ended_at = None
    for i, event in engine.run_batch(runs):
        if i == 0 and isinstance(event, Progress) and event.iteration == 2:
            stop["now"] = True
        if i == 0 and isinstance(event, Cancelled):
            ended_at = "cancelled"
            assert runs[0].stage is None and runs[0].x is None and not runs[0].content_px
        if i == 1 and ended_at == "cancelled" and isinstance(event, Progress):
            ended_at = event.iteration  # the other run went on after it
            assert runs[1].stage is not None
    assert isinstance(ended_at, int) and ended_at < 8
    assert runs[1].stage is None and runs[1].x is None  # let go once its result was made


def _stage_run(engine, content, style, runs: int, **options):
    """A batch of ``runs`` Adam runs of two stages, with the content's passes without gradients
    (their batch sizes) and the Adam steps taken (each one optimiser's step) counted."""
    from impasto_server.engine.host_reads import HostReads
    from impasto_server.engine.vgg import FeatureNet

    base = StyleOptions.from_preset(
        "default", size=40, iterations=6, num_scales=2, optimizer="adam", seed=3, **options
    )
    jobs = [(content, style, base.replace(content_weight=1.0 + r)) for r in range(runs)]
    content_passes: list[int] = []
    steps = [0]
    forward, step = FeatureNet.forward, torch.optim.Adam.step

    def counted_forward(self, pixels, layers, *args, **kwargs):
        if not torch.is_grad_enabled() and layers == tuple(base.content_layers):
            content_passes.append(pixels.shape[0])
        return forward(self, pixels, layers, *args, **kwargs)

    def counted_step(self, *args, **kwargs):
        steps[0] += 1
        return step(self, *args, **kwargs)

    FeatureNet.forward, torch.optim.Adam.step = counted_forward, counted_step
    try:
        with HostReads() as reads:
            events = _together(engine, jobs)
    finally:
        FeatureNet.forward, torch.optim.Adam.step = forward, step
    return events, content_passes, steps[0], reads.count


def test_a_batch_starts_each_stage_with_one_pass_of_its_contents(engine, content, style):
    # Each stage's content targets of the three runs come from one pass (the batch's), not
    # one pass a run; each result is still its own, and as it would be alone.
    events, content_passes, _, _ = _stage_run(engine, content, style, 3)
    assert content_passes == [3, 3]  # two stages
    alone, _, _, _ = _stage_run(engine, content, style, 1)
    assert isinstance(alone[0][-1], Result)
    for i in range(3):
        assert isinstance(events[i][-1], Result)
    difference = np.abs(_float(events[0][-1].image) - _float(alone[0][-1].image))
    assert difference.max() <= 2 / 255


@pytest.mark.parametrize("init", ["content", "noise"])
def test_a_batch_reads_each_stage_first_gradient_size_with_its_losses(engine, content, style, init):
    # The scale of each run's stage (its first gradient's mean size) comes back with the
    # pass's losses, in the one read: a batch of three makes as many separate host reads as
    # a run alone (none), and its first steps are one Adam step for all three, like the rest.
    _, _, one_steps, one_reads = _stage_run(engine, content, style, 1, init=init)
    events, _, steps, reads = _stage_run(engine, content, style, 3, init=init)
    assert reads == one_reads == 0
    assert one_steps == 6  # its six iterations
    assert steps == 6  # the batch's: each a step of all three runs
    for i in range(3):
        progress = [e for e in events[i] if isinstance(e, Progress)]
        assert len(progress) == 6 and progress[-1].losses["total"] < progress[0].losses["total"]


def test_runs_of_one_style_share_its_cached_grams_as_their_targets(engine, content, style):
    # A run with one style takes its Grams from the cache as they are (a blend of one style is
    # that style): two runs of it hold the same tensors, not a copy each.
    options = StyleOptions.from_preset("default", size=40, iterations=2, num_scales=1, seed=4)
    runs = [engine.prepare(content, [style], options) for _ in range(2)]
    for run in runs:
        run.begin_stage(0)
    first, second = (run.stage.regions[0].targets for run in runs)
    assert set(first) == set(options.style_layers)
    assert all(first[layer] is second[layer] for layer in first)
    blended = engine.prepare(content, [style, style[::-1].copy()], options)
    blended.begin_stage(0)
    assert all(blended.stage.regions[0].targets[layer] is not first[layer] for layer in first)


def test_a_batch_whose_shared_stage_start_fails_starts_its_runs_one_by_one(
    engine, content, style, monkeypatch
):
    # Where the batch's stage start fails (out of memory, say), each run starts alone, and an
    # error of its own ends that run alone: here the second run's start fails, the first goes on.
    from impasto_server.engine.transfer import Engine as EngineType

    shared = EngineType._stage_starts
    failing: list = []

    def starts(self, runs, index):
        if len(runs) > 1:
            raise torch.OutOfMemoryError("the batch's stage start")
        if runs[0] is failing[0]:
            raise RuntimeError("this run's own start")
        return shared(self, runs, index)

    monkeypatch.setattr(EngineType, "_stage_starts", starts)
    options = StyleOptions.from_preset(
        "default", size=40, iterations=3, num_scales=1, optimizer="adam", seed=5
    )
    runs = [engine.prepare(content, [style], options) for _ in range(2)]
    failing.append(runs[1])
    events: dict[int, list] = {0: [], 1: []}
    for i, event in engine.run_batch(runs):
        events[i].append(event)
    assert isinstance(events[0][-1], Result) and events[0][-1].iterations == 3
    assert len(events[1]) == 1 and "own start" in str(events[1][0])


def test_a_batch_copies_its_results_to_the_host_together(engine, content, style, monkeypatch):
    # The runs that end together come to the host in one copy (on a GPU, one wait for the
    # device instead of one a run), and all their results are made before the first is handed
    # on; each result is still its own image.
    from impasto_server.engine import transfer

    copies: list[int] = []
    made: list[int] = []
    download, result = transfer.Engine._download, transfer.PreparedRun.result

    def counted_download(self, images):
        copies.append(len(images))
        return download(self, images)

    def counted_result(self, *args, **kwargs):
        made.append(id(self))
        return result(self, *args, **kwargs)

    monkeypatch.setattr(transfer.Engine, "_download", counted_download)
    monkeypatch.setattr(transfer.PreparedRun, "result", counted_result)
    base = StyleOptions.from_preset(
        "default", size=40, iterations=3, num_scales=1, optimizer="adam", seed=6
    )
    jobs = [(content, style, base.replace(init="noise", seed=6 + r)) for r in range(3)]
    prepared = [engine.prepare(c, [s], o) for c, s, o in jobs]
    images: dict[int, np.ndarray] = {}
    for i, event in engine.run_batch(prepared):
        if isinstance(event, Result):
            assert len(made) == 3  # every result made before this one was handed on
            images[i] = event.image
    assert copies == [3] and sorted(images) == [0, 1, 2]
    assert np.abs(_float(images[0]) - _float(images[2])).mean() > 0.01  # each its own noise
    alone = list(engine.run(content, [style], jobs[2][2]))
    assert copies == [3, 1]  # a run alone: its own copy
    assert np.abs(_float(alone[-1].image) - _float(images[2])).max() <= 2 / 255
