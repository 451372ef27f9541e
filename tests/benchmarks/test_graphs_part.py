"""benchmarks/gpu.py's graphs part runs on a GPU only (it records CUDA graphs), and a GPU is lent
for minutes: its rows are driven here on the CPU at toy sizes, with a stand-in for the engine's
graphs whose "replay" runs what a recording would hold (the pass, then the steps it was given),
so every mode it compares runs, the L-BFGS step in the graph included."""

from __future__ import annotations

import logging

from graph_stand_in import EagerReplays, install
from impasto import samples
from impasto_server.engine import Engine


def test_the_graphs_part_compares_every_mode(gpu, monkeypatch):
    stand_in = install(monkeypatch)
    engine = Engine(device="cpu")
    rows = gpu.Rows()
    content, style = samples.content()[::8, ::8].copy(), samples.style(size=64)
    gpu.graphs_part(engine, rows, content, style, iterations=3, warmup=2, sizes=(32, 40, 32),
                    lbfgs_iterations={32: 7}.get)  # fmt: skip
    table = dict(rows)
    assert rows.failed == 0, table
    assert (engine.cuda_graphs, engine.capturable_lbfgs) == (False, False)  # its own again
    lbfgs = table["ms/iteration 32 px bfloat16 lbfgs, eager / CUDA graphs / with the step"]
    ms, rest = lbfgs.split(" (")
    assert len(ms.split(" / ")) == 3 and all(float(t) > 0 for t in ms.split(" / ")), lbfgs
    gaps = rest.split("last loss apart by ")[1].split(" of it")[0].split(" / ")
    # graphed replays the same kernels; the step in the graph is the capturable form's
    assert float(gaps[0]) == 0 and float(gaps[1]) < 1e-2, lbfgs
    assert lbfgs.endswith("; one stage of 7 iterations"), lbfgs
    adam = table["ms/iteration 32 px bfloat16 adam, eager / CUDA graphs"]
    assert len(adam.split(" (")[0].split(" / ")) == 2, adam
    assert table["ms/iteration 40 px bfloat16 lbfgs, eager / CUDA graphs / with the step"].endswith(
        "; one stage of 5 iterations"
    )  # warmup + iterations where lbfgs_iterations has no entry
    assert (
        "results apart by at most 0 levels"
        in table["batch of 4 x 32 px Adam bfloat16, ms/iteration eager / CUDA graphs"]
    )
    # three alternating runs of each mode; per run, a replay for each pass from the third on
    assert stand_in.with_steps == 3 * (7 - 2) + 3 * (5 - 2)


class StepsNotRecorded(EagerReplays):
    """Records a pass, but not a pass with the steps: warns as PassGraphs does and runs eagerly."""

    failed = False

    def run(self, stages, evaluate, steps=None):
        if steps is None:
            return super().run(stages, evaluate)
        if self.failed:  # once a batch's recording failed, it goes on eagerly
            return None
        self.failed = True
        try:
            raise RuntimeError("operation not permitted when stream is capturing")
        except RuntimeError:
            logging.getLogger("impasto_server.engine").warning(
                "could not record the pass as a CUDA graph", exc_info=True
            )
        for stage in stages:
            stage.x.grad = None
        return None


def test_a_step_that_cannot_be_recorded_leaves_the_rest_of_the_row(gpu, monkeypatch):
    install(monkeypatch, StepsNotRecorded)
    engine = Engine(device="cpu")
    rows = gpu.Rows()
    content, style = samples.content()[::8, ::8].copy(), samples.style(size=64)
    gpu.graphs_part(engine, rows, content, style, iterations=3, warmup=2, sizes=(32, 32, 32))
    assert rows.failed == 0, dict(rows)
    lbfgs = dict(rows)["ms/iteration 32 px bfloat16 lbfgs, eager / CUDA graphs / with the step"]
    ms = lbfgs.split(" (")[0].split(" / ")
    assert float(ms[0]) > 0 and float(ms[1]) > 0 and ms[2] == "-", lbfgs
    assert "with the step: 1 pass(es) not recorded" in lbfgs and "capturing" in lbfgs, lbfgs


def test_the_lbfgs_rows_run_as_long_as_the_default_jobs_last_stage(gpu):
    """300 iterations in 4 scales, the coarser stages given more: 58 at full size (512 px)."""
    engine = Engine(device="cpu")
    content, style = samples.content(), samples.style(size=64)
    assert gpu.default_last_stage(engine, content, style, 512) == 58
