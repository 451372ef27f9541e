"""The GPU gate (graphs.GpuGate): a CUDA graph is recorded with no other thread using the GPU.

On an H200, another thread's pass during a recording failed ("operation not permitted when stream
is capturing") and broke the recording (benchmarks/gpu.py, 16 server clients each alone). The
engine's GPU work goes through ``using_gpu()`` and a recording through ``alone()``; these tests
hold the gate's rules on the CPU, then the engine's use of it: two runs in two threads, each
"recording" through a stand-in that sleeps while alone, and no pass of the other run starts
meanwhile."""

from __future__ import annotations

import threading
import time
from typing import ClassVar

import pytest
from graph_stand_in import EagerReplays, install
from impasto_server.engine import Engine, Result, StyleOptions
from impasto_server.engine import graphs as graphs_module
from impasto_server.engine.graphs import GpuGate

WAIT = 5.0  # seconds: far longer than any step here takes
BRIEF = 0.3  # seconds a thread is shown to stay out


def _thread(target) -> threading.Thread:
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread


def test_alone_waits_for_users_and_new_users_wait_behind_it():
    gate = GpuGate()
    using, leave, alone_in, alone_leave, late_in = (threading.Event() for _ in range(5))

    def user():
        with gate.use():
            using.set()
            leave.wait(WAIT)

    def recorder():
        with gate.alone():
            alone_in.set()
            alone_leave.wait(WAIT)

    def late_user():
        with gate.use():
            late_in.set()

    threads = [_thread(user)]
    assert using.wait(WAIT)
    threads.append(_thread(recorder))
    assert not alone_in.wait(BRIEF)  # a user is inside
    threads.append(_thread(late_user))
    assert not late_in.wait(BRIEF)  # behind the waiting recorder, though only users are inside
    leave.set()
    assert alone_in.wait(WAIT)
    assert gate.alone_thread is threads[1]
    assert not late_in.wait(BRIEF)  # not while the recorder is alone
    alone_leave.set()
    assert late_in.wait(WAIT)
    for thread in threads:
        thread.join(WAIT)
    assert gate.alone_thread is None


def test_two_users_that_ask_to_be_alone_both_get_their_turn():
    gate = GpuGate()
    inside = threading.Barrier(2, timeout=WAIT)
    turns: list[str] = []

    def user(name: str):
        with gate.use():
            inside.wait()  # both inside use() before either asks
            with gate.alone():
                turns.append(name)
                time.sleep(0.05)
                assert gate.alone_thread is threading.current_thread()
            with gate.use():  # its use is its own again
                pass

    threads = [_thread(lambda n=n: user(n)) for n in "ab"]
    for thread in threads:
        thread.join(WAIT)
        assert not thread.is_alive()
    assert sorted(turns) == ["a", "b"]
    with gate.alone():  # nothing left counted as inside
        pass


def test_a_thread_enters_again_what_it_is_inside():
    gate = GpuGate()

    def nested():
        with gate.use(), gate.use(), gate.alone(), gate.alone(), gate.use():
            pass
        with gate.alone(), gate.use():
            pass

    thread = _thread(nested)
    thread.join(WAIT)
    assert not thread.is_alive()
    entered = threading.Event()

    def other():
        with gate.alone():  # the gate is free afterwards
            entered.set()

    _thread(other)
    assert entered.wait(WAIT)


def test_background_work_is_not_waited_for_and_no_recording_is_made_while_it_lasts():
    gate = GpuGate()
    inside, leave, late_in = threading.Event(), threading.Event(), threading.Event()

    def compiler():
        with gate.background():
            inside.set()
            leave.wait(WAIT)

    thread = _thread(compiler)
    assert inside.wait(WAIT) and gate.in_background
    with gate.use(), gate.alone():  # neither waits for it (an emptying of the cache)
        pass
    with gate.use():
        with pytest.raises(graphs_module.Busy), gate.alone(unless_background=True):
            pass  # a recording: not while it lasts
        with gate.use():  # that thread's use is its own again, nothing left waiting
            pass
    leave.set()
    thread.join(WAIT)
    assert not gate.in_background
    with gate.alone(unless_background=True):  # now it is
        assert gate.alone_thread is threading.current_thread()

        def late():
            with gate.background():
                late_in.set()

        thread = _thread(late)
        assert not late_in.wait(BRIEF)  # background work waits while a thread is alone
    assert late_in.wait(WAIT)
    thread.join(WAIT)


class RecordsAlone(EagerReplays):
    """Each new batch's first replay "records": alone, for a while, as PassGraphs does."""

    recordings: ClassVar[list[threading.Thread]] = []

    def __init__(self, device, keep_cache=False) -> None:
        self.key = None

    def release(self) -> None:
        self.key = None

    def run(self, stages, evaluate, steps=None):
        key = tuple(id(stage) for stage in stages)
        if key != self.key:
            with graphs_module.gate.alone():
                type(self).recordings.append(threading.current_thread())
                time.sleep(BRIEF)  # another thread's pass, if let in, starts now
            self.key = key
        return super().run(stages, evaluate, steps)


def test_no_pass_of_another_thread_starts_while_a_pass_is_recorded(
    content, style, red_style, monkeypatch
):
    engine = Engine(device="cpu")
    install(monkeypatch, RecordsAlone)
    monkeypatch.setattr(RecordsAlone, "recordings", [])
    monkeypatch.setattr(engine, "cuda_graphs", True)
    overlaps: list[str] = []
    passes: dict[str, int] = {}
    own_pass = engine._pass

    def watched_pass(stages):
        me = threading.current_thread()
        alone = graphs_module.gate.alone_thread
        if alone is not None and alone is not me:
            overlaps.append(f"{me.name} during {alone.name}'s recording")
        passes[me.name] = passes.get(me.name, 0) + 1
        return own_pass(stages)

    monkeypatch.setattr(engine, "_pass", watched_pass)
    options = StyleOptions.from_preset("default", size=48, iterations=12, num_scales=2, seed=3)
    results: dict[str, Result] = {}
    failures: list[BaseException] = []

    def job(name: str, style_image):
        try:
            events = engine.run(content, [style_image], options)
            results[name] = next(e for e in events if isinstance(e, Result))
        except BaseException as exc:  # noqa: BLE001 - the test reports it
            failures.append(exc)

    threads = [
        threading.Thread(target=job, args=(name, image), name=name)
        for name, image in (("first", style), ("second", red_style))
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not failures and set(results) == {"first", "second"}
    # each run recorded once a stage, and both ran many passes: the runs overlapped in time
    assert sorted(t.name for t in RecordsAlone.recordings) == ["first"] * 2 + ["second"] * 2
    assert min(passes.values()) >= 12
    assert overlaps == []


@pytest.fixture(autouse=True)
def _gate_left_free():
    yield
    gate = graphs_module.gate
    assert gate.alone_thread is None and gate._users == 0 and gate._waiting == 0
