"""A server that compiles the network's passes (``--compile``, engine/compiled.py): the flag,
what GetServerInfo, ``impasto info`` and the metrics say of it. The engine compiles with a
backend that runs the traced graph as it is (a real inductor compile: tests/engine)."""

from __future__ import annotations

from impasto import cli
from impasto.client import Client
from impasto_server.app import ServerConfig, default_engine, parse_args
from impasto_server.engine import Engine
from job_watch import SHORT


def _as_traced(gm, example_inputs):
    return gm.forward


def test_compile_is_off_unless_asked_for():
    assert parse_args([]).compile is False
    assert parse_args(["--compile"]).compile is True
    assert parse_args(["--compile", "--no-compile"]).compile is False
    assert default_engine(ServerConfig(device="cpu")).compiled is None
    assert default_engine(ServerConfig(device="cpu", compile=True)).compiled is not None


def test_a_compiling_server_says_so_and_counts_its_compiled_shapes(
    make_server, shared_engine, tiny_content, tiny_style, capsys
):
    engine = Engine(device="cpu", compile_net=True, compile_backend=_as_traced)
    server = make_server(engine=engine)
    registry = server.metrics.registry
    assert registry.get_sample_value("impasto_compiled_pass_shapes") == 0.0
    with Client(server.address) as client:
        assert client.server_info().compiled_network is True
        first = client.stylize(tiny_content, [tiny_style], seed=3, **SHORT).result()
        assert engine.compiled.wait(60)
        again = client.stylize(tiny_content, [tiny_style], seed=3, **SHORT).result()
    assert registry.get_sample_value("impasto_compiled_pass_shapes") == 1.0
    assert registry.get_sample_value("impasto_compile_waiting_shapes") == 0.0
    assert registry.get_sample_value("impasto_compile_failed_shapes") == 0.0
    assert registry.get_sample_value("impasto_compile_seconds") > 0
    stats = engine.compiled.stats()
    assert stats["compiled_passes"] >= 2 and stats["passes"] >= 4  # the second job's passes
    assert (first.image == again.image).all()
    assert cli.main(["info", "--server", server.address]) == cli.EXIT_OK
    assert "torch.compile" in capsys.readouterr().out
    plain = make_server(engine=shared_engine)
    with Client(plain.address) as client:
        assert client.server_info().compiled_network is False
    assert plain.metrics.registry.get_sample_value("impasto_compiled_pass_shapes") is None
