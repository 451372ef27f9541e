"""One pass through the network and its input-gradient backward, eager against compiled in the
background by the engine's ``CompiledNet`` (engine/compiled.py, the server's --compile), on
this machine's device: ms per pass (median of the timed passes), the compile's seconds, and
the ratio compiled / eager. See docs/benchmarks.md ("On a GPU", the server-compiled part).

    PYTHONPATH=proto:server python benchmarks/compiled_pass.py            # 256 px
    PYTHONPATH=proto:server python benchmarks/compiled_pass.py --size 32 --passes 3 --backend eager
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch
from impasto_server.engine import Engine
from impasto_server.engine.compiled import CompiledNet

LAYERS = ("conv1_1", "conv2_1", "conv3_1", "conv4_1", "conv5_1", "conv4_2")


def ms_per_pass(net, x: torch.Tensor, dtype: torch.dtype, passes: int) -> float:
    def one() -> float:
        x.grad = None
        started = time.perf_counter()
        feats = net(x, LAYERS, "max", dtype)
        sum(f.float().square().mean() for f in feats.values()).backward()
        if x.is_cuda:
            torch.cuda.synchronize()
        return (time.perf_counter() - started) * 1000

    one()  # warm
    return statistics.median(one() for _ in range(passes))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--passes", type=int, default=15)
    parser.add_argument("--backend", default="inductor", help="torch.compile's backend")
    parser.add_argument("--device", default=None)
    args = parser.parse_args()
    engine = Engine(device=args.device, cuda_graphs=False)
    print(f"device: {engine.device} ({platform.machine()}, {torch.get_num_threads()} threads); "
          f"torch {torch.__version__}; {time.strftime('%Y-%m-%d')}; {args.size} px, "
          f"backend {args.backend}")  # fmt: skip
    for precision in engine.supported_precisions:
        dtype = Engine._dtype(precision)
        x = torch.rand(1, 3, args.size, args.size, device=engine.device)
        if engine.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        x.requires_grad_(True)
        eager = ms_per_pass(engine.net, x, dtype, args.passes)
        compiled = CompiledNet(engine.net, backend=args.backend)
        compiled(x, LAYERS, "max", dtype)  # asks for the compile; runs eagerly
        if not compiled.wait(1200):
            raise SystemExit("the compile took over 20 minutes")
        stats = compiled.stats()
        if stats["compiled"] != 1:
            raise SystemExit(f"not compiled: {stats}")
        fast = ms_per_pass(compiled, x, dtype, args.passes)
        if compiled.stats()["compiled_passes"] < args.passes:
            raise SystemExit("the timed passes did not run the compiled code")
        print(f"{precision:9} eager {eager:8.2f} ms, compiled {fast:8.2f} ms "
              f"({fast / eager:.2f}x), compile {stats['seconds']:.1f} s")  # fmt: skip


if __name__ == "__main__":
    main()
