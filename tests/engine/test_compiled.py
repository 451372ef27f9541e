"""The network's passes compiled in the background (compiled.py, ``Engine(compile_net=True)``).

Most tests give torch.compile a backend that only counts: it runs the traced graph as it is
(the same operations, so the same results to the bit) and notes each call's thread, which says
whether a pass ran compiled code and where a compile ran. One test compiles with inductor, the
default, on the CPU (some 25 s)."""

from __future__ import annotations

import logging
import threading

import numpy as np
import pytest
import torch
from impasto_server.engine import Engine, Result, StyleOptions
from impasto_server.engine import graphs as graphs_module
from impasto_server.engine.compiled import CompiledNet
from impasto_server.engine.graphs import PassGraphs
from impasto_server.engine.memory_budget import MemoryBudget

WAIT = 120.0  # seconds: far longer than a compile with the counting backend takes
LAYERS = ("conv1_1", "conv2_1", "conv3_1", "conv4_2")


class Counting:
    """A torch.compile backend: the traced graph as it is, each call's thread noted."""

    def __init__(self, fail: bool = False) -> None:
        self.compiles: list[str] = []
        self.calls: list[str] = []
        self.in_background: list[bool] = []  # whether recordings were held off at each compile
        self.fail = fail

    def __call__(self, gm, example_inputs):
        self.compiles.append(threading.current_thread().name)
        self.in_background.append(graphs_module.gate.in_background)
        if self.fail:
            raise RuntimeError("this backend compiles nothing")

        def run(*args):
            self.calls.append(threading.current_thread().name)
            return gm.forward(*args)

        return run


def _options(**changes) -> StyleOptions:
    base = StyleOptions.from_preset("default", size=40, iterations=5, num_scales=1, seed=4)
    return base.replace(**changes)


def _images(engine: Engine, content, style, weights=(1e4,), **changes) -> list[np.ndarray]:
    """The results of one batch: a job per style weight."""
    prepared = [
        engine.prepare(content, [style], _options(style_weight=w, **changes)) for w in weights
    ]
    images = [event.image for _, event in engine.run_batch(prepared) if isinstance(event, Result)]
    assert len(images) == len(weights)
    return images


@pytest.fixture(scope="module")
def eager() -> Engine:
    return Engine(device="cpu")


def test_a_pass_runs_eagerly_until_its_shape_is_compiled_in_the_background(eager, content, style):
    backend = Counting()
    engine = Engine(device="cpu", compile_net=True, compile_backend=backend)
    expected = _images(eager, content, style)
    first = _images(engine, content, style)
    assert engine.compiled.wait(WAIT)
    # asked for by the first pass, compiled once, in its own thread, no recording meanwhile
    assert backend.compiles == ["impasto-compile"] and backend.in_background == [True]
    assert not graphs_module.gate.in_background  # and no longer once it is done
    assert engine.compiled.stats()["compiled"] == 1
    job_calls = [t for t in backend.calls if t != "impasto-compile"]
    again = _images(engine, content, style)
    ran = [t for t in backend.calls if t != "impasto-compile"][len(job_calls) :]
    # every pass of the second job ran the compiled code, in the job's thread, no compile more
    assert ran == [threading.current_thread().name] * 5
    assert backend.compiles == ["impasto-compile"]
    # what ran compiled, the compile's own pass left out
    assert engine.compiled.stats()["compiled_passes"] == len(ran) + len(job_calls)
    for image in (first[0], again[0]):
        assert np.array_equal(image, expected[0])


@pytest.mark.parametrize("channels_last", [False, True])
def test_every_batch_of_two_or_more_shares_one_compile(eager, content, style, channels_last):
    """Also in the GPU's layout (channels_last images), whose strides torch's guards check."""
    backend = Counting()
    engine = Engine(device="cpu", compile_net=True, compile_backend=backend)
    engine.channels_last = channels_last
    _images(engine, content, style, weights=(1e4, 2e4))
    assert engine.compiled.wait(WAIT)
    assert len(backend.compiles) == 1
    before = len(backend.calls)
    passes = engine.compiled.stats()["compiled_passes"]
    three = _images(engine, content, style, weights=(1e4, 2e4, 3e4))
    assert len(backend.calls) - before == 5  # a batch of three: the batch of two's compile
    assert engine.compiled.stats()["compiled_passes"] - passes == 5  # counted as they ran
    assert len(backend.compiles) == 1
    for got, want in zip(three, _images(eager, content, style, weights=(1e4, 2e4, 3e4)),
                         strict=True):  # fmt: skip
        assert np.array_equal(got, want)
    _images(engine, content, style)  # a batch of one is a shape of its own
    assert engine.compiled.wait(WAIT)
    assert len(backend.compiles) == 2
    _images(engine, content, style, size=48)  # so is another image size
    assert engine.compiled.wait(WAIT)
    assert len(backend.compiles) == 3
    stats = engine.compiled.stats()
    assert (stats["compiled"], stats["failed"], stats["waiting"]) == (3, 0, 0)
    assert 0 < stats["compiled_passes"] < stats["passes"]  # the new shapes' first passes eager


def test_a_pass_under_a_memory_count_runs_eagerly(eager):
    backend = Counting()
    compiled = CompiledNet(eager.net, backend=backend)
    x = torch.rand(1, 3, 32, 32, requires_grad=True)
    compiled(x, LAYERS)
    assert compiled.wait(WAIT)
    calls = len(backend.calls)
    with MemoryBudget(1 << 30) as budget:
        compiled(x, LAYERS)
    assert len(backend.calls) == calls and budget.peak > 0  # counted, and eagerly
    compiled(x, LAYERS)
    assert len(backend.calls) == calls + 1


def test_a_shape_that_fails_to_compile_runs_eagerly_and_is_not_tried_again(
    eager, content, style, caplog
):
    backend = Counting(fail=True)
    engine = Engine(device="cpu", compile_net=True, compile_backend=backend)
    with caplog.at_level(logging.WARNING, logger="impasto_server.engine"):
        first = _images(engine, content, style)
        assert engine.compiled.wait(WAIT)
        again = _images(engine, content, style)
    assert len(backend.compiles) == 1 and not backend.calls
    assert engine.compiled.stats()["failed"] == 1
    assert [r.getMessage() for r in caplog.records] == [
        "could not compile the network's pass of shape (1, 3, 40, 40)"
    ]
    expected = _images(eager, content, style)[0]
    assert np.array_equal(first[0], expected) and np.array_equal(again[0], expected)


def test_no_more_shapes_are_compiled_than_allowed(eager):
    backend = Counting()
    compiled = CompiledNet(eager.net, backend=backend, max_shapes=2)
    for side in (32, 40, 48, 56):
        compiled(torch.rand(1, 3, side, side, requires_grad=True), LAYERS)
        compiled.wait(WAIT)
    assert len(backend.compiles) == 2
    assert compiled.stats()["compiled"] == 2


def test_the_compiles_of_many_engines_do_not_use_up_torchs_recompile_limit(eager):
    """Every CompiledNet of one network adds its entries to the same forward's cache; past
    torch's limit of 8 (any engines' together), torch ran the forward eagerly for good."""
    nets = [CompiledNet(eager.net, backend=Counting(), max_shapes=2) for _ in range(6)]
    for number, compiled in enumerate(nets):
        for side in (32 + 8 * number, 36 + 8 * number):  # 12 shapes in all, none shared
            compiled(torch.rand(1, 3, side, side, requires_grad=True), LAYERS)
            assert compiled.wait(WAIT)
    last = nets[-1]
    assert last.stats()["compiled"] == 2
    last(torch.rand(1, 3, 76, 76, requires_grad=True), LAYERS)
    assert last.stats()["compiled_passes"] == 1  # the twelfth entry ran compiled


class _Graph:
    replays = 0

    def replay(self) -> None:
        type(self).replays += 1


def test_no_pass_is_recorded_while_a_compile_runs(monkeypatch):
    """PassGraphs (graphs.py) with a stand-in recording: while background work runs, a new
    batch's pass runs eagerly, the graphs stay on, and a later pass records it."""
    recorded = []

    def record(self, key, stages, evaluate, steps):
        with graphs_module.gate.alone(unless_background=True):
            recorded.append(key)
            self._key, self._graph, self._terms = key, _Graph(), torch.zeros(1, 4)

    monkeypatch.setattr(PassGraphs, "_record", record)
    graphs = PassGraphs(torch.device("cpu"))
    stages = [object()]
    inside, leave = threading.Event(), threading.Event()

    def compile_():
        with graphs_module.gate.background():
            inside.set()
            leave.wait(WAIT)

    thread = threading.Thread(target=compile_, daemon=True)
    thread.start()
    assert inside.wait(WAIT)
    assert graphs.run(stages, lambda s: None) is None  # eagerly, nothing recorded
    assert graphs.enabled and not recorded
    leave.set()
    thread.join(WAIT)
    assert graphs.run(stages, lambda s: None) is not None
    assert len(recorded) == 1 and graphs.enabled


def test_the_network_compiled_by_inductor_gives_the_eager_passes_result(eager, content, style):
    """The default backend (inductor) on the CPU: a batch of two compiled while the first
    batch runs, then a batch of three runs the compiled code, its results those of the eager
    network (this machine: equal in 8-bit pixels)."""
    engine = Engine(device="cpu", compile_net=True)
    weights = (1e4, 2e4, 3e4)
    _images(engine, content, style, weights=weights[:2])
    assert engine.compiled.wait(600), "the compile took over 10 minutes"
    assert engine.compiled.stats()["compiled"] == 1, engine.compiled.stats()
    passes = engine.compiled.stats()["compiled_passes"]
    got = _images(engine, content, style, weights=weights)
    assert engine.compiled.stats()["compiled_passes"] - passes == 5
    for a, b in zip(got, _images(eager, content, style, weights=weights), strict=True):
        assert np.abs(a.astype(int) - b).max() <= 2
