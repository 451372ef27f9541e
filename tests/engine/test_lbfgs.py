"""impasto's L-BFGS against torch's: the same steps, without the host reads."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from impasto_server.engine import Engine, Progress, StyleOptions
from impasto_server.engine.host_reads import HostReads
from impasto_server.engine.lbfgs import LBFGS


def _problem(n: int = 60):
    """A smooth, strictly convex function with a quartic term (float64)."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=g, dtype=torch.float64)
    a = a @ a.t() / n + 0.5 * torch.eye(n, dtype=torch.float64)
    b = torch.randn(n, generator=g, dtype=torch.float64)
    x0 = torch.randn(n, generator=g, dtype=torch.float64)
    return (lambda x: 0.5 * x @ a @ x - b @ x + 0.05 * (x**4).sum()), x0


def _evaluate(f, x: torch.Tensor) -> torch.Tensor:
    x.grad = None
    value = f(x.reshape(-1))
    value.backward()
    return value.detach()


@pytest.mark.parametrize("history", [3, 50])
def test_steps_are_torchs_and_the_image_may_be_channels_last(history):
    f, x0 = _problem()
    theirs = x0.clone().view(1, 3, 4, 5).requires_grad_(True)
    ours = x0.clone().view(1, 3, 4, 5).contiguous(memory_format=torch.channels_last)
    ours.requires_grad_(True)
    torch_lbfgs = torch.optim.LBFGS(
        [theirs], lr=0.8, max_iter=1, history_size=history, tolerance_grad=-1,
        tolerance_change=-1,
    )  # fmt: skip
    lbfgs = LBFGS(ours, history, lr=0.8)
    first = _evaluate(f, ours).item()
    for _ in range(25):
        value = _evaluate(f, theirs)
        torch_lbfgs.step(lambda value=value: value)
        _evaluate(f, ours)
        lbfgs.step()
        torch.testing.assert_close(ours.detach(), theirs.detach(), rtol=1e-12, atol=1e-12)
    assert lbfgs.stored == len(torch_lbfgs.state[theirs]["old_dirs"])
    assert lbfgs.stored == 3 if history == 3 else lbfgs.stored > 10  # 3: it wrapped around
    assert f(ours.detach().reshape(-1)).item() < first - 1.0


def test_a_step_reads_nothing_from_the_device_once_the_curvature_is_read_with_the_losses():
    f, x0 = _problem()
    theirs = x0.clone().requires_grad_(True)
    ours = x0.clone().requires_grad_(True)
    torch_lbfgs = torch.optim.LBFGS(
        [theirs], max_iter=1, history_size=10, tolerance_grad=-1, tolerance_change=-1
    )
    lbfgs = LBFGS(ours, 10)
    torch_reads, our_reads = [], []
    for _ in range(12):
        value = _evaluate(f, theirs)
        with HostReads() as reads:
            torch_lbfgs.step(lambda value=value: value)
        torch_reads.append(reads.count)
        _evaluate(f, ours)
        pending = lbfgs.curvature()
        curvature = None if pending is None else pending.tolist()  # the engine's one read
        with HostReads() as reads:
            lbfgs.step(curvature)
        our_reads.append(reads.count)
    assert our_reads == [0] * 12
    # torch reads each stored pair's coefficient twice, and a few values besides.
    assert torch_reads[-1] >= 2 * 10
    assert torch_reads[-1] > torch_reads[1]


def test_pairs_without_positive_curvature_are_left_out_as_torch_does():
    # f = cos(3x): concave near 0, so the first pairs have y.s < 0.
    x0 = torch.linspace(-0.2, 0.2, 12, dtype=torch.float64)
    theirs = x0.clone().requires_grad_(True)
    ours = x0.clone().requires_grad_(True)
    f = lambda x: torch.cos(3 * x).sum()
    torch_lbfgs = torch.optim.LBFGS(
        [theirs], lr=0.5, max_iter=1, history_size=5, tolerance_grad=-1, tolerance_change=-1
    )
    lbfgs = LBFGS(ours, 5, lr=0.5)
    stored = []
    for _ in range(8):
        value = _evaluate(f, theirs)
        torch_lbfgs.step(lambda value=value: value)
        _evaluate(f, ours)
        lbfgs.step()
        stored.append(lbfgs.stored)
        torch.testing.assert_close(ours.detach(), theirs.detach(), rtol=1e-12, atol=1e-12)
    assert stored[:3] == [0, 0, 1]  # the first pair was refused, later ones stored
    assert len(torch_lbfgs.state[theirs]["old_dirs"]) == lbfgs.stored


@pytest.mark.parametrize("history", [3, 50])
def test_a_capturable_step_is_the_same_step(history):
    """The masked, device-decided form over the whole history against the one that reads the
    curvature: a history that wraps around (3), one that never fills (50), channels_last."""
    f, x0 = _problem()
    plain = x0.clone().view(1, 3, 4, 5).requires_grad_(True)
    ours = x0.clone().view(1, 3, 4, 5).contiguous(memory_format=torch.channels_last)
    ours.requires_grad_(True)
    reference, lbfgs = LBFGS(plain, history, lr=0.8), LBFGS(ours, history, lr=0.8, capturable=True)
    for _ in range(25):
        _evaluate(f, plain)
        reference.step()
        _evaluate(f, ours)
        with HostReads() as reads:
            lbfgs.step()
        assert reads.count == 0
        assert lbfgs.curvature() is None  # nothing for the engine to read back
        torch.testing.assert_close(ours.detach(), plain.detach(), rtol=1e-12, atol=1e-12)
    assert lbfgs.stored == reference.stored
    assert reference.stored == 3 if history == 3 else reference.stored > 10  # 3: it wrapped


def test_a_capturable_step_leaves_out_pairs_without_positive_curvature():
    x0 = torch.linspace(-0.2, 0.2, 12, dtype=torch.float64)
    plain = x0.clone().requires_grad_(True)
    ours = x0.clone().requires_grad_(True)
    f = lambda x: torch.cos(3 * x).sum()
    reference, lbfgs = LBFGS(plain, 5, lr=0.5), LBFGS(ours, 5, lr=0.5, capturable=True)
    stored = []
    for _ in range(8):
        _evaluate(f, plain)
        reference.step()
        _evaluate(f, ours)
        lbfgs.step()
        stored.append(lbfgs.stored)
        torch.testing.assert_close(ours.detach(), plain.detach(), rtol=1e-12, atol=1e-12)
    assert stored[:3] == [0, 0, 1] and stored[-1] == 5  # refused first, then full


def _state(lbfgs: LBFGS) -> dict:
    """What a CUDA graph of a step fixes when it is recorded: the tensors it reads and writes
    (by identity and address) and every Python value it computes with."""
    return {
        k: (id(v), v.data_ptr()) if isinstance(v, torch.Tensor) else v
        for k, v in vars(lbfgs).items()
    }


def test_a_capturable_step_reads_no_device_value_and_keeps_its_state_in_place():
    """A CUDA graph replays a step's kernels on the same memory, with the Python values of its
    recording. So a capturable step must decide nothing on the host (it runs on tensors that
    hold no data at all: 'meta'), keep every tensor it updates in place, and change no Python
    value: then each replay is the step that an eager call would take (checked on the CPU)."""
    x = torch.zeros(1, 3, 8, 8, device="meta", requires_grad=True)
    lbfgs = LBFGS(x, 4, capturable=True)
    for _ in range(6):  # past a full history
        x.grad = torch.empty_like(x)
        lbfgs.step()
    eager = LBFGS(torch.zeros(1, 3, 8, 8, device="meta", requires_grad=True), 4)
    eager.x.grad = torch.empty_like(eager.x)
    eager.step()  # the first step reads nothing either
    eager.x.grad = torch.empty_like(eager.x)
    with pytest.raises(NotImplementedError):  # the second reads its curvature
        eager.step()

    f, x0 = _problem()
    x = x0.clone().requires_grad_(True)
    lbfgs = LBFGS(x, 4, capturable=True)
    states = []
    for _ in range(7):
        _evaluate(f, x)
        lbfgs.step()
        states.append(_state(lbfgs))
    assert all(state == states[0] for state in states)
    with pytest.raises(ValueError, match="device"):
        lbfgs.step([1.0, 1.0])  # a curvature read back is not what this form takes


def test_bad_arguments_are_refused():
    x = torch.zeros(3, requires_grad=True)
    with pytest.raises(ValueError, match="history"):
        LBFGS(x, 0)
    with pytest.raises(ValueError, match="leaf"):
        LBFGS(torch.zeros(3), 5)
    with pytest.raises(RuntimeError, match="backward"):
        LBFGS(x, 5).step()


def _run(engine: Engine, content, style, **overrides):
    options = StyleOptions.from_preset(
        "default", size=48, num_scales=2, seed=3, precision="float32", **overrides
    )
    prepared = engine.prepare(content, [style], options)
    events, layouts = [], set()
    for _, event in engine.run_batch([prepared]):
        if isinstance(event, BaseException):
            raise event
        if isinstance(event, Progress):
            layouts.add(prepared.stage.x.is_contiguous())
        events.append(event)
    return events[-1], [e for e in events if isinstance(e, Progress)], layouts


def test_host_reads_of_a_run_do_not_grow_with_its_iterations(engine, content, style):
    counts = []
    for iterations in (8, 16):
        with HostReads() as reads:
            _, progress, _ = _run(engine, content, style, iterations=iterations)
        assert len(progress) == iterations
        counts.append(reads.count)
    assert counts[0] == counts[1]


@pytest.mark.parametrize("optimizer", ["lbfgs", "adam"])
def test_the_gpu_layout_runs_on_the_cpu_with_the_same_result(content, style, optimizer):
    """On a GPU the image and the network are channels_last; a CPU engine made to use that
    layout must optimise as the default layout does (torch's L-BFGS could not: it flattens the
    gradient with view(-1))."""
    plain = Engine(device="cpu")
    gpu_layout = Engine(device="cpu")
    gpu_layout.channels_last = True
    a, a_progress, a_layouts = _run(plain, content, style, iterations=10, optimizer=optimizer)
    b, b_progress, b_layouts = _run(gpu_layout, content, style, iterations=10, optimizer=optimizer)
    assert a_layouts == {True} and b_layouts == {False}  # b's image was channels_last
    first = a_progress[0].losses["total"]
    assert b_progress[0].losses["total"] == pytest.approx(first, rel=1e-4)
    assert a_progress[-1].losses["total"] < 0.5 * first
    assert b_progress[-1].losses["total"] == pytest.approx(a_progress[-1].losses["total"], rel=0.05)
    diff = np.abs(a.image.astype(np.float32) - b.image.astype(np.float32))
    assert diff.mean() < 2.0


@pytest.mark.parametrize("channels_last", [False, True])
def test_an_engine_with_capturable_lbfgs_gives_the_same_run(content, style, channels_last):
    """Engine(capturable_lbfgs=True) (with CUDA graphs, its steps are recorded with the pass):
    the same run as the default's, to rounding. Each stage's first two iterations (its start,
    and its first step, taken before any pair is stored) agree to about 5 digits in float32;
    after them L-BFGS without a line search amplifies the last bits as it does for any change
    of rounding: on this 48 px run the two end 0 to 2.5 levels of 255 apart on average,
    depending on the layout (at 52 px, 2.5 levels with either way of resizing the stages'
    content; the GPU's layout on the CPU moves such a run as far)."""
    plain = Engine(device="cpu")
    capturable = Engine(device="cpu", capturable_lbfgs=True)
    plain.channels_last = capturable.channels_last = channels_last
    a, a_progress, _ = _run(plain, content, style, iterations=12)
    b, b_progress, _ = _run(capturable, content, style, iterations=12)
    assert [(p.scale_index, p.iteration) for p in a_progress] == [
        (p.scale_index, p.iteration) for p in b_progress
    ]
    assert {p.scale_index for p in a_progress} == {0, 1}
    for stage in (0, 1):
        first = [(x, y) for x, y in zip(a_progress, b_progress) if x.scale_index == stage][:2]
        for x, y in first:
            assert y.losses["total"] == pytest.approx(x.losses["total"], rel=1e-4)
    for run in (a_progress, b_progress):
        assert run[-1].losses["total"] < 0.5 * run[0].losses["total"]
    diff = np.abs(a.image.astype(np.float32) - b.image.astype(np.float32))
    assert diff.mean() < 4.0


class _MatrixOperands(torch.utils._python_dispatch.TorchDispatchMode):
    """Records the row distance (leading dimension) of every matrix that a product reads."""

    PRODUCTS = frozenset({"mv", "mm", "bmm", "addmm", "addmv", "baddbmm", "dot"})

    def __init__(self) -> None:
        super().__init__()
        self.distances: list[int] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket.__name__ in self.PRODUCTS:
            for arg in args:
                if isinstance(arg, torch.Tensor) and arg.dim() >= 2:
                    # cuBLAS takes the larger of a matrix's two strides as a 32-bit int.
                    self.distances.append(max(arg.stride()[-2:]))
        return func(*args, **(kwargs or {}))


def test_products_read_the_history_with_rows_at_most_one_image_apart():
    # cuBLAS takes a matrix's row distance as a 32-bit int: with the pairs laid out as
    # (s_1..s_m, y_1..y_m) a product read rows history * n apart, past 2^31 at 4096 x 4096 px
    # with 100 pairs (a RuntimeError on a GPU). Every product must read rows <= n apart.
    f, x0 = _problem()
    x = x0.clone().view(1, 3, 4, 5).requires_grad_(True)
    lbfgs = LBFGS(x, history=4, lr=0.8)
    with _MatrixOperands() as seen:
        for _ in range(7):  # past a full history, so slots wrap around
            _evaluate(f, x)
            lbfgs.step()
    assert seen.distances, "no matrix products seen"
    n = x.numel()
    assert max(seen.distances) <= n, seen.distances
