"""The optimisation: one Engine holds the warm network; each ``run`` is one style transfer."""

from __future__ import annotations

import dataclasses
import gc
import hashlib
import logging
import math
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from . import imaging, shared
from .cache import GramCache
from .compiled import CompiledNet
from .events import Progress, Result
from .graphs import PassGraphs, empty_cache, using_gpu
from .lbfgs import LBFGS
from .losses import content_layer_loss, gram, style_layer_loss, style_layer_losses, tv_loss
from .memory import (
    MIN_PAIRS,
    PAIR_BYTES_PER_PIXEL,
    PROBE_PIXELS,
    Footprint,
    InsufficientMemory,
    MemoryPlan,
    device_capacity,
    quick_bound,
)
from .memory_budget import MemoryBudget
from .options import SIZE_RANGE, Cancelled, EngineError, StyleOptions
from .vgg import CONV_INDEX, load_feature_net

Targets = dict[str, torch.Tensor]
log = logging.getLogger("impasto_server.engine")


def _cpu_has_bf16() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` means the device (or the host) ran out of memory."""
    if isinstance(exc, torch.OutOfMemoryError | MemoryError):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and (
        "out of memory" in text or "can't allocate memory" in text
    )


@dataclass
class _Region:
    """Part of the content with one style target per layer; mask None means the whole image."""

    mask: torch.Tensor | None  # (1, 1, h, w) at the stage's size, 0..1
    targets: Targets
    area: float  # fraction of the image


@dataclass
class _Inputs:
    # (1, 3, H, W) 0..255 on the CPU; None once a prepared run no longer needs it (see
    # PreparedRun)
    content: torch.Tensor | None
    alpha: torch.Tensor | None
    source: imaging.Source
    # The styles as given, (H, W, C): each becomes float32 pixels only where a target is made
    # from it (a style whose Grams are cached needs none), let go once the job is prepared.
    styles: list[np.ndarray]
    style_keys: list[str]
    blend: list[float]
    labels: np.ndarray | None
    region_styles: dict[int, int]
    init: torch.Tensor | None
    content_key: str | None  # only where the style targets depend on the content (colours)
    _style_px: dict[int, torch.Tensor] = field(default_factory=dict)

    def styles_in_use(self) -> list[int]:
        """The styles that make a target: blended in, or a mask region's own."""
        return [i for i, weight in enumerate(self.blend)
                if weight > 0 or i in self.region_styles.values()]  # fmt: skip

    def style_px(self, index: int) -> torch.Tensor:
        """Style ``index`` as (1, 3, H, W) float32 pixels in 0..255, converted on first use."""
        if index not in self._style_px:
            self._style_px[index] = imaging.to_pixels(self.styles[index])[0]
        return self._style_px[index]

    def let_go(self, keep_content: bool) -> None:
        """Drop the full-size pixels a prepared run no longer needs (see PreparedRun)."""
        self._style_px.clear()
        if not keep_content:
            self.content = None

    def style_px_bytes(self) -> int:
        """What the styles in use take as float32 pixels, converted or not."""
        return sum(imaging.PIXEL_BYTES * self.styles[i].shape[0] * self.styles[i].shape[1]
                   for i in self.styles_in_use())  # fmt: skip


def _digest(array: np.ndarray) -> str:
    """An image's key in the Gram cache, taken for every job that sends it. SHA-256, which
    most x86-64 and Arm CPUs compute in hardware: 2.2x blake2b's speed on a 12-megapixel image
    on the development machine (``benchmarks/prepare.py``)."""
    h = hashlib.sha256()
    h.update(str((array.shape, array.dtype.str)).encode())
    h.update(np.ascontiguousarray(array).data)
    return h.hexdigest()


class Engine:
    """A warm VGG19 on one device. Runs are independent and may go on in several threads."""

    def __init__(
        self,
        *,
        device: str | None = None,
        weights: str = "original",
        preprocessing: str | None = None,
        max_pixels: int = 4096 * 4096,
        cache_bytes: int = 256 << 20,
        job_memory_bytes: int | None = None,
        cuda_graphs: bool | None = None,
        capturable_lbfgs: bool | None = None,
        overlap: bool = True,
        graphs_keep_cache: bool = False,
        compile_net: bool = False,
        compile_backend: str | Any = "inductor",
    ) -> None:
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        try:
            self._device = torch.device(device)
            known = self._device.type in ("cpu", "cuda")
        except RuntimeError:  # not a device's name at all
            known = False
        if not known:
            raise EngineError("device", f"{device!r}: impasto runs on cpu, cuda or cuda:N")
        if self._device.type == "cuda":
            if not torch.cuda.is_available():
                raise EngineError("device", f"{device} asked for, but CUDA is not available")
            count = torch.cuda.device_count()
            if (self._device.index or 0) >= count:
                raise EngineError("device", f"{device}: this machine has {count} CUDA devices")
        if cuda_graphs and self._device.type != "cuda":
            raise EngineError("cuda_graphs", f"CUDA graphs need a CUDA device, not {device}")
        # Each batch's pass replayed as a CUDA graph (see graphs.py): by default on a GPU.
        self.cuda_graphs = self._device.type == "cuda" if cuda_graphs is None else cuda_graphs
        # L-BFGS steps with no host value (lbfgs.py, capturable), recorded in the pass's graph:
        # by default wherever the passes are recorded. An H200 ran a 512 px L-BFGS stage at
        # 2.53 and 2.55 ms an iteration with the step in the graph against 2.77 and 2.86
        # without, in two runs (1024 px: 1.01 and 1.03x slower; benchmarks/gpu.py, graphs).
        # Without graphs it only adds work: each step reads the whole history.
        self.capturable_lbfgs = (
            self.cuda_graphs if capturable_lbfgs is None else capturable_lbfgs
        )  # fmt: skip
        # Recordings that leave the allocator's cache as it is (graphs.PassGraphs): off, as
        # torch does it; runs 6 and 7 found no clear gain (benchmarks/gpu.py, server-more).
        self.graphs_keep_cache = graphs_keep_cache
        # Adam runs launch each iteration's pass before the host handles the last one's losses
        # (its events, its divergence check), so that work overlaps the device's (see _iterate).
        self.overlap = overlap
        net = load_feature_net(weights, preprocessing)
        self._cuda = self._device.type == "cuda"
        # Images go through the network in channels_last on a GPU (cuDNN's fast layout); the
        # CPU keeps the default layout (channels_last measured no faster there). Tests switch
        # it on for a CPU engine to exercise the GPU's layout.
        self.channels_last = self._cuda
        # cuDNN's heuristics choose its kernels, not its autotuner (left off:
        # torch.backends.cudnn.benchmark). A server meets new shapes with every image size,
        # stage and batch size, and the autotuner times them on the first job of each: on an
        # H200 the default 512 px job took 8.67 s the first time against 0.97 with heuristics,
        # and 0.95 against 0.89 again (benchmarks/gpu.py, autotune). With it, a job's first
        # iteration at 8192 px came after 239 s (how much of that was autotuning: not measured).
        if self._cuda:
            net = net.to(self._device, memory_format=torch.channels_last)
            # torch loads its CUDA linear algebra on the first call, and that load is not
            # thread-safe (pytorch#90613): L-BFGS jobs starting at once in several threads
            # (--max-running) failed with "lazy wrapper should be called at most once" on an
            # H200. One triangular solve (what the L-BFGS step uses) loads it now.
            one = torch.ones(1, 1, device=self._device)
            torch.linalg.solve_triangular(one, one, upper=True)
        self.net = net
        # The network's passes compiled by torch.compile, each new shape in the background
        # while its passes run eagerly (compiled.py). Off unless asked for (the server's
        # --compile): it pays once a server's shapes are compiled, and costs while they compile.
        self.compiled = CompiledNet(net, backend=compile_backend) if compile_net else None
        self.weights_name = (
            weights
            if weights in ("original", "torchvision")
            else ("file:" + os.path.basename(weights))
        )
        self.device = str(self._device)
        if self._cuda:
            self.supported_precisions: tuple[str, ...] = ("float32", "bfloat16", "float16")
            self.default_precision = "bfloat16" if torch.cuda.is_bf16_supported() else "float32"
        else:
            # oneDNN runs bfloat16 convolutions natively on CPUs with AVX512-BF16 or AMX.
            bf16 = torch.backends.mkldnn.is_available() and _cpu_has_bf16()
            self.supported_precisions = ("float32", "bfloat16") if bf16 else ("float32",)
            # Measured by benchmarks/time_to_quality.py: there, bfloat16 reaches pastiche's
            # quality in 0.16-0.17 of its time, float32 in 0.24-0.30 (Grams and losses float32).
            self.default_precision = "bfloat16" if bf16 else "float32"
        self.max_pixels = max_pixels
        self._cache = GramCache(cache_bytes)
        # Probes run one at a time: requests that arrive together must not add their probes'
        # memory to a running job's on the device.
        self._probe_lock = threading.Lock()
        self._probe_stop = threading.local()  # plan_memory's should_stop, for its probes
        if self.default_precision != "float32":
            # The network's copy in the default precision, made now: the engine's memory, not
            # the first job's (nor its memory probe's).
            self.net.low_precision(self._dtype(self.default_precision))
        # The memory one job may use, read once the weights are on the device (jobs are
        # checked against it before they start; see memory.py); 0 turns the check off.
        if job_memory_bytes is None:
            job_memory_bytes = device_capacity(self._device, cache_bytes)
        self.job_memory_bytes = job_memory_bytes

    # ------------------------------------------------------------------ checks

    def cache_stats(self) -> dict[str, int]:
        return self._cache.stats()

    def output_shape(self, content: np.ndarray, options: StyleOptions) -> tuple[int, int]:
        image = imaging.check_image("content", content)
        return imaging.fit_long_side(image.shape[0], image.shape[1], options.size)

    def stage_shapes(self, content: np.ndarray, options: StyleOptions) -> list[tuple[int, int]]:
        """(h, w) of each coarse-to-fine stage. Stages too small for VGG19 are left out, so is
        a stage the same size as the one before (small sizes clamp several to 16 px), and
        the coarsest ones when there are fewer iterations than stages."""
        height, width = imaging.check_image("content", content).shape[:2]
        return _stage_shapes(height, width, options)

    def batch_key(self, content: np.ndarray, options: StyleOptions) -> tuple:
        """Runs with equal keys can go through ``run_batch`` together."""
        shapes = self.stage_shapes(content, options)
        return _batch_key(shapes, _per_stage(options.iterations, shapes), options)

    def validate(
        self,
        content: np.ndarray,
        styles: Sequence[np.ndarray],
        options: StyleOptions,
        *,
        style_weights: Sequence[float] | None = None,
        mask: np.ndarray | None = None,
        region_styles: Mapping[int, int] | None = None,
        init_image: np.ndarray | None = None,
    ) -> None:
        """Raise EngineError for anything run() would refuse; does no network work."""
        if not isinstance(options, StyleOptions):
            raise EngineError("options", "must be a StyleOptions")
        options.validate()
        if options.precision not in self.supported_precisions:
            raise EngineError(
                "precision",
                f"{options.precision} is not supported on {self.device}; "
                f"choose one of {self.supported_precisions}",
            )
        image = imaging.check_image("content", content)
        height, width = self.output_shape(image, options)
        if min(height, width) < imaging.MIN_SIDE:
            raise EngineError(
                "size",
                f"the result would be {height}x{width}; its short side must be at least "
                f"{imaging.MIN_SIDE} px (raise size or use a less elongated image)",
            )
        if height * width > self.max_pixels:
            raise EngineError(
                "size",
                f"the result would be {height}x{width} = {height * width} pixels, above this "
                f"server's limit of {self.max_pixels}",
            )
        if isinstance(styles, np.ndarray) or not isinstance(styles, Sequence) or not styles:
            raise EngineError("styles", "at least one style image is needed")
        for index, style in enumerate(styles):
            check = imaging.check_image(f"styles[{index}]", style)
            style_h, style_w = imaging.fit_long_side(
                *check.shape[:2], round(max(height, width) * options.style_scale)
            )
            if min(style_h, style_w) < imaging.MIN_SIDE:
                raise EngineError(f"styles[{index}]", "too small or too elongated at this size")
        if style_weights is not None:
            if len(style_weights) != len(styles):
                raise EngineError(
                    "style_weights", f"{len(style_weights)} weights for {len(styles)} styles"
                )
            for index, w in enumerate(style_weights):
                if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w):
                    raise EngineError(f"style_weights[{index}]", f"must be finite, got {w!r}")
                if w < 0:
                    raise EngineError(f"style_weights[{index}]", f"must be >= 0, got {w}")
            if sum(style_weights) <= 0:
                raise EngineError("style_weights", "at least one weight must be > 0")
        self._check_mask(image, styles, mask, region_styles)
        if options.init == "image":
            if init_image is None:
                raise EngineError("init_image", "init 'image' needs an init image")
            imaging.check_image("init_image", init_image)

    @staticmethod
    def _check_mask(
        content: np.ndarray,
        styles: Sequence[np.ndarray],
        mask: np.ndarray | None,
        region_styles: Mapping[int, int] | None,
    ) -> None:
        if mask is None:
            if region_styles:
                raise EngineError("region_styles", "given without a mask")
            return
        if not isinstance(mask, np.ndarray):
            raise EngineError("mask", f"must be a numpy array, got {type(mask).__name__}")
        if mask.ndim == 3 and mask.shape[2] == 1:
            mask = mask[:, :, 0]
        if mask.dtype.kind not in "iub":
            raise EngineError("mask", f"must hold integer labels, got dtype {mask.dtype}")
        if mask.shape != content.shape[:2]:
            raise EngineError(
                "mask", f"shape {mask.shape} does not match the content's {content.shape[:2]}"
            )
        if not region_styles:
            raise EngineError("region_styles", "a mask needs at least one label -> style entry")
        present = set(np.unique(mask).tolist())
        for label, index in region_styles.items():
            if not isinstance(index, (int, np.integer)) or not 0 <= index < len(styles):
                raise EngineError(
                    "region_styles", f"label {label} names style {index}; there are {len(styles)}"
                )
            if label not in present:
                # which do: a bilevel mask read as 0/255 (a 1-bit PNG, a boolean image) says so
                some = sorted(present)
                listed = ", ".join(map(str, some[:10])) + (", ..." if len(some) > 10 else "")
                raise EngineError(
                    "region_styles",
                    f"label {label} does not occur in the mask (its labels: {listed})",
                )

    # ------------------------------------------------------------------ the run

    def prepare(
        self,
        content: np.ndarray,
        styles: Sequence[np.ndarray],
        options: StyleOptions,
        *,
        style_weights: Sequence[float] | None = None,
        mask: np.ndarray | None = None,
        region_styles: Mapping[int, int] | None = None,
        init_image: np.ndarray | None = None,
        preview_every: int = 0,
        preview_size: int = 0,
        should_stop: Callable[[], bool] | None = None,
        memory: MemoryPlan | None = None,
    ) -> PreparedRun:
        """Validate a run (raising EngineError) and hold it ready for ``run_batch``. Unless
        ``memory`` (from ``plan_memory``) is given, the run is planned against
        ``job_memory_bytes`` here (raising InsufficientMemory). The run reads the style
        arrays again where it needs their pixels: they must not change until it ends."""
        self.validate(
            content, styles, options, style_weights=style_weights, mask=mask,
            region_styles=region_styles, init_image=init_image,
        )  # fmt: skip
        if options.seed is None:
            options = options.replace(seed=secrets.randbelow(2**63))
        inputs = self._inputs(content, styles, options, style_weights, mask, region_styles,
                              init_image)  # fmt: skip
        shapes = self.stage_shapes(content, options)
        if memory is None:
            memory = self._plan(lambda: inputs, options, shapes, self.job_memory_bytes,
                                1 + len(inputs.region_styles))  # fmt: skip
        return PreparedRun(
            self, inputs, options, shapes, max(0, preview_every), max(0, preview_size),
            should_stop or (lambda: False), pairs=memory.pairs,
        )  # fmt: skip

    # ------------------------------------------------------------------ memory

    def plan_memory(
        self,
        content: np.ndarray,
        styles: Sequence[np.ndarray],
        options: StyleOptions,
        *,
        capacity: int | None = None,
        style_weights: Sequence[float] | None = None,
        mask: np.ndarray | None = None,
        region_styles: Mapping[int, int] | None = None,
        init_image: np.ndarray | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> MemoryPlan:
        """Check a validated run against ``capacity`` bytes (default ``job_memory_bytes``;
        0: no check): raise InsufficientMemory if it cannot fit, else return the plan to pass
        to ``prepare``, which may keep fewer L-BFGS pairs than usual. Small runs are passed at
        once; others are measured by running them briefly at two small sizes (see memory.py),
        which raises Cancelled once ``should_stop()`` is true (the caller is gone)."""
        self._probe_stop.value = should_stop or (lambda: False)
        try:
            return self._plan(
                lambda: self._inputs(content, styles, options, style_weights, mask,
                                     region_styles, init_image),
                options, self.stage_shapes(content, options),
                self.job_memory_bytes if capacity is None else capacity,
                1 + len(region_styles or {}),
            )  # fmt: skip
        finally:
            self._probe_stop.value = None

    def _plan(
        self, inputs: Callable[[], _Inputs], options: StyleOptions,
        shapes: list[tuple[int, int]], capacity: int, regions: int,
        probes: dict[tuple[int, int], int] | None = None, name_largest: bool = True,
    ) -> MemoryPlan:  # fmt: skip
        default = _default_pairs(shapes, options)
        pixels = max(h * w for h, w in shapes)
        if not capacity:
            return MemoryPlan(None, None, default)
        quick = quick_bound(pixels, regions, options.style_scale)
        if quick <= capacity:
            return MemoryPlan(None, capacity, default, quick=quick)
        run_inputs = inputs()
        probes = {} if probes is None else probes
        footprint = self._footprint(run_inputs, options, shapes[-1], probes, capacity)
        if footprint is None:
            return MemoryPlan(None, capacity, default, quick=quick)
        # A probe's style targets are not cached; a run's stay in the cache, each stage's. On
        # a CPU the job's input images (float32, full size, held for the whole run) and its
        # content at each stage's size share the memory too; on a GPU they stay in host memory.
        extra = len(shapes) * self._target_bytes(run_inputs, options)
        if not self._cuda:
            extra += sum(t.nbytes for t in (run_inputs.content, run_inputs.init) if t is not None)
            extra += run_inputs.style_px_bytes()
            extra += sum(imaging.PIXEL_BYTES * h * w for h, w in shapes)
        footprint = dataclasses.replace(footprint, fixed=footprint.fixed + extra)
        wanted = default or (0,) * len(shapes)
        least = [min(want, MIN_PAIRS) for want in wanted]
        needed = max(footprint.stage(h * w, n) for (h, w), n in zip(shapes, least, strict=True))
        if needed > capacity:
            largest = None
            if name_largest:
                height, width = run_inputs.content.shape[-2:]
                guess = footprint.largest(height / width, least[-1], capacity)
                if guess is not None:
                    largest = self._largest(run_inputs, options, max(guess), capacity, probes)
            raise InsufficientMemory(needed, capacity, largest)
        if default is None:
            return MemoryPlan(needed, capacity)
        pairs = tuple(
            min(want, footprint.pairs_that_fit(h * w, capacity))
            for (h, w), want in zip(shapes, default, strict=True)
        )
        needed = max(footprint.stage(h * w, n) for (h, w), n in zip(shapes, pairs, strict=True))
        return MemoryPlan(needed, capacity, pairs, reduced=pairs != default)

    def _largest(
        self, inputs: _Inputs, options: StyleOptions, long_side: int, capacity: int,
        probes: dict[tuple[int, int], int],
    ) -> tuple[int, int] | None:  # fmt: skip
        """The result's (h, w) at the largest size from ``long_side`` down that passes the same
        check (the line bends at small sizes, so a candidate below the probes' sizes is
        measured at its own), or None. ``probes``: peaks already measured, by probe shape."""
        height, width = inputs.content.shape[-2:]
        regions = 1 + len(inputs.region_styles)
        for _ in range(8):
            smaller = options.replace(size=long_side)
            shapes = _stage_shapes(height, width, smaller)
            if long_side < SIZE_RANGE[0] or min(shapes[-1]) < imaging.MIN_SIDE:
                return None
            try:
                self._plan(lambda: inputs, smaller, shapes, capacity, regions, probes, False)
            except InsufficientMemory:
                long_side = math.floor(long_side * 0.95)
            else:
                return shapes[-1]
        return None

    def _target_bytes(self, inputs: _Inputs, options: StyleOptions) -> int:
        """Bytes of one stage's style Grams (float32, one set per style in use)."""
        convs = self.net.features
        per_style = sum(4 * convs[CONV_INDEX[name]].out_channels ** 2
                        for name in options.style_layers)  # fmt: skip
        return per_style * len(inputs.styles_in_use())

    def _footprint(
        self, inputs: _Inputs, options: StyleOptions, shape: tuple[int, int],
        probes: dict[tuple[int, int], int], capacity: int,
    ) -> Footprint | None:  # fmt: skip
        """The peak memory line of one stage of ``inputs`` under ``options``, from two
        two-iteration runs (tensors counted, L-BFGS pairs left out): at PROBE_PIXELS with the
        content's aspect ratio, or at ``shape`` itself and half its pixels when it is smaller
        (the line bends below them). None, logged, if a probe fails. ``probes`` keeps the peaks
        measured, by probe shape, for later calls on the same inputs and options. A probe is
        no larger than the run: one that needs more than PROBE_BUDGET times ``capacity`` is the
        run's refusal (InsufficientMemory, naming no size), stopped there rather than measured
        to its end (below that, the line through two probes names the largest size that
        fits)."""
        pixels = shape[0] * shape[1]
        targets = PROBE_PIXELS if pixels > PROBE_PIXELS[-1] else (pixels / 2, pixels)
        if pixels > PROBE_PIXELS[-1]:
            shape = tuple(inputs.content.shape[-2:])  # the same probes for every size of it
            pixels = shape[0] * shape[1]
        points = []
        try:
            for target in targets:
                scale = math.sqrt(target / pixels)
                height = max(imaging.MIN_SIDE, round(shape[0] * scale))
                width = max(imaging.MIN_SIDE, round(shape[1] * scale))
                if (height, width) not in probes:
                    with self._probe_lock:
                        probes[height, width] = self._probe(
                            inputs, options, height, width, capacity
                        )
                points.append((height * width, probes[height, width]))
        except (InsufficientMemory, Cancelled):
            raise
        except Exception:  # logged: the job then runs unchecked, as before
            log.warning("could not measure a job's memory; it runs unchecked", exc_info=True)
            return None
        return Footprint.fit(points)

    def _probe(
        self, inputs: _Inputs, options: StyleOptions, height: int, width: int, capacity: int
    ) -> int:
        """Peak bytes counted in two iterations of one ``height`` x ``width`` stage, less its
        one L-BFGS pair; InsufficientMemory past PROBE_BUDGET x ``capacity`` (plus that
        pair)."""
        lbfgs = options.optimizer == "lbfgs"
        pair = PAIR_BYTES_PER_PIXEL * height * width if lbfgs else 0
        stop = getattr(self._probe_stop, "value", None) or (lambda: False)
        probe = PreparedRun(
            self, inputs, options.replace(iterations=2, size=max(height, width)),
            [(height, width)], 0, 0, stop, pairs=(1,) if lbfgs else None, cache=False,
        )  # fmt: skip
        counter = MemoryBudget(PROBE_BUDGET * capacity + pair)
        with counter:
            for _, event in self._drive([probe]):
                if isinstance(event, torch.OutOfMemoryError) and counter.peak > counter.limit:
                    raise InsufficientMemory(counter.peak - pair, capacity, None) from event
                if isinstance(event, BaseException):
                    raise event
        return counter.peak - pair

    def run(
        self,
        content: np.ndarray,
        styles: Sequence[np.ndarray],
        options: StyleOptions,
        **kwargs: Any,
    ) -> Iterator[Progress | Result]:
        """Optimise; yield a Progress per iteration and finally the Result. Takes ``prepare``'s
        keywords. Raises EngineError at once for a bad request, InsufficientMemory for one that
        cannot fit ``job_memory_bytes``, and Cancelled (between iterations) once
        ``should_stop()`` is true."""
        prepared = self.prepare(content, styles, options, **kwargs)

        def events() -> Iterator[Progress | Result]:
            for _, event in self.run_batch([prepared]):
                if isinstance(event, BaseException):
                    raise event
                yield event

        return events()

    def run_batch(
        self, runs: Sequence[PreparedRun]
    ) -> Iterator[tuple[int, Progress | Result | Exception]]:
        """Run prepared runs that share one ``batch_key`` together: each iteration is one
        forward and backward pass over all of them stacked along the batch axis, and each run
        keeps its own optimiser, so every run's result is what it would be alone (within
        float tolerance). Yields (index into ``runs``, event): a Progress per iteration, then
        the Result, or the exception that ended that run alone (Cancelled when its
        ``should_stop`` turned true, EngineError when it diverged, or an error of the shared
        pass, which ends every run still going)."""
        if len({run.batch_key for run in runs}) > 1:
            raise ValueError("runs of one batch must share their batch_key")
        return self._drive(list(runs))

    def _drive(self, runs: list[PreparedRun]) -> Iterator[tuple[int, Any]]:
        if not runs:
            return
        graphs = PassGraphs(self._device, self.graphs_keep_cache) if self.cuda_graphs else None
        try:
            for i, event in self._iterate(runs, graphs):
                if not isinstance(event, Progress):
                    # That run has ended (its result made, or stopped): what it holds goes
                    # now, not when the whole batch ends.
                    runs[i].release()
                yield i, event
        finally:
            if graphs is not None:  # its graph freed inside the gate, not wherever GC runs
                with using_gpu():
                    graphs.release()

    def _iterate(
        self, runs: list[PreparedRun], graphs: PassGraphs | None
    ) -> Iterator[tuple[int, Any]]:
        # Every use of the GPU is inside using_gpu() (see graphs.py), and none spans a yield:
        # a consumer that stops between events must not keep a recording waiting.
        started = time.perf_counter()
        live = list(enumerate(runs))
        first = runs[0]
        # Set when a shared pass runs out of memory: the runs then go on one pass each, from
        # where they are (the failed pass stepped no optimiser).
        split = False
        for index, stage_iterations in enumerate(first.per_stage):
            going = []
            for i, run in live:
                if run.should_stop():
                    yield i, Cancelled()
                else:
                    going.append((i, run))
            starts = None
            if going:
                try:
                    with using_gpu():
                        starts = self._stage_starts([run for _, run in going], index)
                except Exception:  # each run starts alone below: its error its own
                    log.debug("a batch's stage start failed; its runs start one by one",
                              exc_info=True)  # fmt: skip
            staged = []
            for k, (i, run) in enumerate(going):
                try:
                    with using_gpu():
                        run.begin_stage(index, None if starts is None else starts[k])
                except Exception as exc:  # noqa: BLE001 - it ends that run alone, reported
                    yield i, exc
                else:
                    staged.append((i, run))
            starts = None
            live = staged
            # With ``overlap``, an Adam iteration's pass is launched, then the host reports the
            # iteration before it (read its losses, check them, make its events), while the
            # device runs the pass, then the steps are launched: ``behind`` holds the runs
            # whose report waits, and the read of their losses.
            behind: tuple[list[tuple[int, PreparedRun]], _Read] | None = None
            for _ in range(stage_iterations):
                stopped = [(i, run) for i, run in live if run.should_stop()]
                for i, _run in stopped:
                    yield i, Cancelled()
                live = [(i, run) for i, run in live if (i, run) not in stopped]
                if not live:
                    return
                errors: dict[int, BaseException] = {}
                overlap = (
                    self.overlap and not split
                    and all(run.stage.adam is not None and run.stage.scale for _, run in live)
                )  # fmt: skip
                read = None
                if not split:
                    try:
                        with using_gpu():
                            stages = [run.stage for _, run in live]
                            if overlap:
                                read = _Read(self._launch(stages, graphs))
                            else:
                                self._evaluate(stages, graphs)
                    except Exception as exc:  # noqa: BLE001 - the shared pass failed
                        if not (len(live) > 1 and is_out_of_memory(exc)):
                            for i, _run in live:
                                yield i, exc
                            return
                        split = True
                    if behind is not None:  # while the device runs this iteration's pass
                        live = yield from self._report(*behind, live, index, started)
                        behind = None
                        if not live:
                            return
                    if split:  # outside the handler, so the failed pass's tensors are gone
                        log.warning(
                            "a batch of %d runs ran out of memory; it goes on with one pass "
                            "per run", len(live),
                        )  # fmt: skip
                        with using_gpu():
                            for _, run in live:
                                run.stage.shared = None  # the batch's stacked targets
                            if graphs is not None:
                                graphs.release()
                        graphs = None
                        self._free_memory()
                if read is not None:
                    with using_gpu():
                        _adam_together([run.stage for _, run in live])
                        for _, run in live:
                            run.stage.advance()
                    behind = (list(live), read)
                    continue
                with using_gpu():
                    if split:
                        for i, run in live:
                            try:
                                self._evaluate([run.stage])
                            except Exception as exc:  # noqa: BLE001 - it ends that run alone
                                errors[i] = exc
                    else:
                        _adam_together([run.stage for _, run in live])
                stepped = []
                for i, run in live:
                    if i in errors:
                        yield i, errors.pop(i)
                        continue
                    try:
                        with using_gpu():
                            event = run.step(index, started)
                    except Exception as exc:  # noqa: BLE001 - it ends that run alone, reported
                        yield i, exc
                    else:
                        stepped.append((i, run))
                        yield i, event
                live = stepped
            if behind is not None:
                live = yield from self._report(*behind, live, index, started)
            with using_gpu():
                for _, run in live:
                    run.end_stage()
        # The results of the runs that end together: their images come to the host in one
        # copy (one wait for the device, not one a run), and every result is made before any
        # is handed on, so the threads that send them do not compete with the making of the
        # next ones for the interpreter.
        with using_gpu():
            images = self._download([run.x for _, run in live])
        results = [(i, run.result(started, image))
                   for (i, run), image in zip(live, images, strict=True)]  # fmt: skip
        yield from results

    def _free_memory(self) -> None:
        gc.collect()  # a failed pass's tensors can sit in reference cycles of its traceback
        if self._cuda:
            empty_cache()

    def _pass(self, stages: Sequence[_Stage]) -> torch.Tensor:
        """One forward and backward pass over every stage's image at once; leaves each image's
        gradient of its own (scaled) objective in ``x.grad`` and returns the stages' loss
        terms, (N, 4) in ``shared.TERMS`` order."""
        lead = stages[0]
        for stage in stages:
            stage.x.grad = None
        x = lead.x if len(stages) == 1 else torch.cat([stage.x for stage in stages])
        layers = tuple(dict.fromkeys(layer for stage in stages for layer in stage.layers))
        net = self.net if self.compiled is None else self.compiled
        feats = net(x, layers, lead.options.pooling, self._dtype(lead.options.precision))
        if all(shared.qualifies(stage) for stage in stages):
            # Every term for the whole batch at once (see shared.py); a run alone is a batch
            # of one (fewer operations than its own objective's scalar arithmetic).
            objective, terms = shared.objective(stages, x, feats)
        else:
            objective = x.new_zeros((), dtype=torch.float32)
            for b, stage in enumerate(stages):
                own = feats if len(stages) == 1 else {k: v[b : b + 1] for k, v in feats.items()}
                objective = objective + stage.objective(own)
            terms = torch.stack([torch.stack(list(stage.terms.values())) for stage in stages])
        # The images are independent along the batch axis (VGG19 has no batch statistics),
        # so the gradient of the sum with respect to each image is that of its own objective.
        objective.backward()
        return terms

    def _report(
        self, reported: list[tuple[int, PreparedRun]], read: _Read,
        live: list[tuple[int, PreparedRun]], index: int, started: float,
    ) -> Iterator[tuple[int, Any]]:  # fmt: skip
        """The events of an iteration whose steps were launched before its losses were read
        (see _iterate): each run of ``reported`` still in ``live`` gets its Progress, or the
        error that ends it (a loss that is not finite: its last step, already launched, is
        lost with it). Returns the runs of ``live`` that go on."""
        with using_gpu():
            values = read.values()
        stages = [run.stage for _, run in reported]
        self._take(stages, values)
        ended: set[int] = set()
        going = {i for i, _ in live}
        for i, run in reported:
            if i not in going:
                continue  # stopped meanwhile
            try:
                with using_gpu():
                    event = run.report(index, started)
            except Exception as exc:  # noqa: BLE001 - it ends that run alone, reported
                ended.add(i)
                yield i, exc
            else:
                yield i, event
        return [(i, run) for i, run in live if i not in ended]

    def _launch(self, stages: list[_Stage], graphs: PassGraphs | None = None) -> torch.Tensor:
        """The pass of ``_pass``, replayed from ``graphs`` once the stages' objectives are
        fixed; returns the stages' loss terms on the device (in a graph's memory, which its
        next replay writes again)."""
        terms = None
        if graphs is not None:
            if all(stage.steps >= 2 for stage in stages):  # each scale known (see graphs.py)
                graphed = [s for s in stages if s.lbfgs is not None and s.lbfgs.capturable]

                def steps(_: Sequence[_Stage]) -> None:  # recorded after the pass, in its graph
                    for stage in graphed:
                        stage.lbfgs.step()

                terms = graphs.run(stages, self._pass, steps if graphed else None)
                if terms is not None:
                    for stage in graphed:
                        stage.lbfgs_stepped = True  # in the replay, after the pass
            else:
                graphs.release()
        if terms is None:
            terms = self._pass(stages)
        for stage, row in zip(stages, terms, strict=True):
            stage.terms = dict(zip(shared.TERMS, row, strict=True))
        return terms

    def _evaluate(self, stages: list[_Stage], graphs: PassGraphs | None = None) -> None:
        """``_launch``, then the one read of its results for the host."""
        terms = self._launch(stages, graphs)
        # One read from the device for the whole pass: every stage's loss terms, and what each
        # L-BFGS step needs to know on the host (the curvature of its new pair).
        pending = [stage.pending_read() for stage in stages]
        values = torch.cat([terms.reshape(-1), *(p for p in pending if p is not None)]).tolist()
        self._take(stages, values, pending)

    @staticmethod
    def _take(
        stages: list[_Stage | None], values: list[float],
        pending: Sequence[torch.Tensor | None] | None = None,
    ) -> None:  # fmt: skip
        """Each stage's losses (and what its ``pending_read`` asked for) from the values read
        for the pass."""
        count = len(shared.TERMS)
        rows, values = values[: count * len(stages)], values[count * len(stages) :]
        for i, stage in enumerate(stages):
            read = pending[i] if pending is not None else None
            own = None
            if read is not None:
                own, values = values[: len(read)], values[len(read) :]
            if stage is None:  # a run stopped since the pass was launched: let go already
                continue
            stage.losses = dict(zip(shared.TERMS, rows[i * count : (i + 1) * count], strict=True))
            if stage.scale:
                stage.curvature = own
            else:
                stage.gradient_mean = own[0] if own else None

    def _inputs(self, content, styles, options, style_weights, mask, region_styles, init_image):
        rgb, alpha, source = imaging.to_pixels(imaging.check_image("content", content))
        style_arrays = [imaging.check_image("style", style) for style in styles]
        blend = list(style_weights) if style_weights is not None else [1.0] * len(styles)
        top = float(max(blend))  # over the largest first: finite weights may sum past a float's
        blend = [w / top for w in blend]
        total = float(sum(blend))
        labels = None
        if mask is not None:
            labels = mask[:, :, 0] if mask.ndim == 3 else mask
        init = None
        if options.init == "image":
            init = imaging.to_pixels(imaging.check_image("init_image", init_image))[0]
        return _Inputs(
            content=rgb, alpha=alpha, source=source, styles=style_arrays,
            style_keys=[_digest(style) for style in style_arrays],
            blend=[w / total for w in blend], labels=labels,
            region_styles={int(k): int(v) for k, v in (region_styles or {}).items()},
            init=init,
            content_key=_digest(content) if options.color_preservation != "none" else None,
        )  # fmt: skip

    @staticmethod
    def _dtype(precision: str) -> torch.dtype:
        """The network's precision for a job (Gram matrices and losses are float32 always)."""
        return {"float32": torch.float32, "bfloat16": torch.bfloat16}.get(precision, torch.float16)

    def _to_device(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self._device)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def _upload(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` on the device, in its layout, without waiting: on a GPU, a copy from pinned
        memory queued on the stream (a copy from ordinary memory waits for the device's queue
        to drain first). Up to PINNED_UPLOAD bytes: torch keeps the pinned memory it made for
        later copies, and a large job's device work dwarfs the wait."""
        if self._cuda and x.numel() * x.element_size() <= PINNED_UPLOAD:
            return x.pin_memory().to(self._device, non_blocking=True)
        return x.to(self._device)

    def _download(self, images: Sequence[torch.Tensor | None]) -> list[torch.Tensor]:
        """Images of one shape, (1, 3, h, w) each, on the host in float32: one copy from the
        device for all of them (a copy to the host waits for the device's queue to drain)."""
        if len(images) < 2:
            return [x.detach().float().cpu() for x in images]  # type: ignore[union-attr]
        host = torch.cat([x.detach() for x in images]).float().cpu()  # type: ignore[union-attr]
        return list(host.split(1))

    def _stage_starts(
        self, runs: Sequence[PreparedRun], index: int
    ) -> list[tuple[torch.Tensor, Targets]]:
        """Each run's start image and content targets for its stage ``index`` (a batch's runs,
        stage shapes alike), the device work shared: their content pixels go to the device in
        one copy and through the network in one forward pass (one per set of content layers),
        and their images of the stage before are resized to this stage's size on the device,
        together (not each copied to the host, resized there and copied back). Every tensor
        returned is the run's own, not a view of the batch's."""
        shape = runs[0].shapes[index]
        content = self._to_device(self._upload(torch.cat([run.content_px[index] for run in runs])))
        starts: list[torch.Tensor | None] = [None] * len(runs)
        going = [b for b, run in enumerate(runs) if run.x is not None]
        if going:
            before = torch.cat([runs[b].x.detach() for b in going])  # type: ignore[union-attr]
            resized = imaging.resize(before, shape)
            for k, b in enumerate(going):
                starts[b] = resized[k : k + 1]
        fresh = [b for b, start in enumerate(starts) if start is None]
        made = [b for b in fresh if runs[b].options.init != "content"]
        if made:  # noise, or an image of the client's: made on the host
            host = [self._initial(runs[b].inputs, runs[b].options, shape) for b in made]
            uploaded = self._upload(torch.cat(host))
            for k, b in enumerate(made):
                starts[b] = uploaded[k : k + 1]
        for b in fresh:
            if starts[b] is None:  # from the content (its luminance, for luminance transfer)
                starts[b] = content[b : b + 1]
        layout = torch.channels_last if self.channels_last else torch.contiguous_format
        targets: list[Targets] = [{} for _ in runs]
        groups: dict[tuple[str, ...], list[int]] = {}
        for b, run in enumerate(runs):
            groups.setdefault(tuple(run.options.content_layers), []).append(b)
        options = runs[0].options  # pooling and precision are the batch's (its batch_key)
        for layers, members in groups.items():
            pixels = content if len(members) == len(runs) else content[members]
            with torch.no_grad():
                feats = self.net(pixels, layers, options.pooling, self._dtype(options.precision))
            for k, b in enumerate(members):
                targets[b] = {
                    name: f[k : k + 1].to(torch.float32, copy=True) for name, f in feats.items()
                }
        return [
            (start.clone(memory_format=layout), own)  # type: ignore[union-attr]
            for start, own in zip(starts, targets, strict=True)
        ]

    def _style_size(self, inputs: _Inputs, index: int, content_px: torch.Tensor,
                    options: StyleOptions) -> tuple[int, int]:  # fmt: skip
        """A style's size beside one stage's content."""
        h, w = content_px.shape[-2:]
        style_h, style_w = inputs.styles[index].shape[:2]
        return imaging.fit_long_side(style_h, style_w, round(max(h, w) * options.style_scale))

    def _style_key(self, inputs: _Inputs, index: int, size: tuple[int, int],
                   content_px: torch.Tensor, options: StyleOptions) -> tuple:  # fmt: skip
        mode = options.color_preservation
        return (
            self.weights_name, inputs.style_keys[index], size, options.pooling,
            tuple(sorted(options.style_layers)), mode, options.precision,
            # Colour handling makes the style depend on the content too.
            inputs.content_key if mode != "none" else None,
            tuple(content_px.shape) if mode != "none" else None,
        )  # fmt: skip

    def _styles_ahead(
        self, inputs: _Inputs, options: StyleOptions, content_stages: Sequence[torch.Tensor]
    ) -> dict[tuple[int, tuple[int, int]], torch.Tensor]:
        """Each style in use resized to each stage's size, where the cache does not hold its
        Grams yet: made when a job is prepared (ahead, on a server) instead of where its stage
        begins, while the device waits. The same pixels either way."""
        ahead: dict[tuple[int, tuple[int, int]], torch.Tensor] = {}
        for content_px in content_stages:
            for index in inputs.styles_in_use():
                size = self._style_size(inputs, index, content_px, options)
                key = self._style_key(inputs, index, size, content_px, options)
                if (index, size) not in ahead and key not in self._cache:
                    ahead[index, size] = imaging.resize(inputs.style_px(index), size)
        return ahead

    def _style_grams(
        self, inputs: _Inputs, index: int, content_px: torch.Tensor, options: StyleOptions,
        cache: bool = True, ahead: dict[tuple[int, tuple[int, int]], torch.Tensor] | None = None,
    ) -> Targets:  # fmt: skip
        """Whole-image Grams of one style at one size, from the cache when seen before. A style
        resized ahead (``_styles_ahead``) is taken out of ``ahead``."""
        size = self._style_size(inputs, index, content_px, options)
        mode = options.color_preservation
        key = self._style_key(inputs, index, size, content_px, options)
        resized = ahead.pop((index, size), None) if ahead is not None else None

        def compute() -> Targets:
            px = resized if resized is not None else imaging.resize(inputs.style_px(index), size)
            if mode == "luminance":
                px = imaging.match_luminance(px, content_px.cpu())
            elif mode == "color_statistics":
                px = imaging.match_color_statistics(px, content_px.cpu())
            with torch.no_grad():
                feats = self.net(
                    self._to_device(px), tuple(options.style_layers), options.pooling,
                    self._dtype(options.precision),
                )  # fmt: skip
            return {name: gram(f) for name, f in feats.items()}

        return self._cache.get_or_compute(key, compute) if cache else compute()

    def _regions(
        self, inputs: _Inputs, content_px: torch.Tensor, options: StyleOptions,
        cache: bool = True, ahead: dict[tuple[int, tuple[int, int]], torch.Tensor] | None = None,
    ) -> list[_Region]:  # fmt: skip
        h, w = content_px.shape[-2:]
        per_style = {
            i: self._style_grams(inputs, i, content_px, options, cache, ahead)
            for i in inputs.styles_in_use()
        }
        if len(per_style) == 1 and inputs.blend[next(iter(per_style))] == 1.0:
            blended = dict(next(iter(per_style.values())))  # one style: its Grams as they are
        else:
            blended = {
                layer: sum(inputs.blend[i] * grams[layer] for i, grams in per_style.items())
                for layer in options.style_layers
            }
        if inputs.labels is None:
            return [_Region(None, blended, 1.0)]
        labels = torch.from_numpy(inputs.labels.astype(np.int64))[None, None].float()
        labels = F.interpolate(labels, size=(h, w), mode="nearest")[0, 0].long()
        regions = []
        assigned = torch.zeros_like(labels, dtype=torch.bool)
        for label, index in sorted(inputs.region_styles.items()):
            region = labels == label
            assigned |= region
            regions.append((region, per_style[index]))
        regions.append((~assigned, blended))
        out = []
        for region, targets in regions:
            area = region.float().mean().item()
            if area > 0:
                mask = self._to_device(region.float()[None, None])
                out.append(_Region(mask, targets, area))
        return out

    @staticmethod
    def _initial(inputs: _Inputs, options: StyleOptions, shape: tuple[int, int]) -> torch.Tensor:
        """The first stage's start on the host, for init "noise" or "image" (a start from the
        content is the content's pixels on the device: ``_stage_starts``)."""
        if options.init == "image":
            assert inputs.init is not None
            start = imaging.resize(inputs.init, shape)
            if options.color_preservation == "luminance":
                start = imaging.luminance_rgb(start)
            return start
        generator = torch.Generator().manual_seed(int(options.seed or 0))
        noise = torch.randn((1, 3, *shape), generator=generator) * 32.0 + 127.5
        return noise

    def _finish(self, x: torch.Tensor, inputs: _Inputs, options: StyleOptions,
                long_side: int = 0) -> np.ndarray:  # fmt: skip
        """The optimised pixels in the content's own form (dtype, channels, colours)."""
        x = x.detach().float().cpu()
        if options.color_preservation == "luminance":
            assert inputs.content is not None
            x = imaging.with_chroma_of(x, imaging.resize(inputs.content, x.shape[-2:]))
        if long_side:
            x = imaging.resize(x, imaging.fit_long_side(*x.shape[-2:], long_side))
        return imaging.from_pixels(x, inputs.alpha, inputs.source)


# A memory probe that counts more than this many times the memory one job may use stops there
# and refuses the job: the mask regions (each its own copies of the features) and the style
# scale can make even a small probe need gigabytes, measured in the request's thread.
PROBE_BUDGET = 4

# The largest copy to a GPU made from pinned memory (Engine._upload): eight 512 px images.
PINNED_UPLOAD = 32 << 20

# torch's default, and the classic implementations' (neural-style's nCorrection).
LBFGS_HISTORY = 100
# How much the coarse-to-fine schedule favours its cheaper, coarser stages: a stage's share of
# the iterations goes as (its pixels / the result's pixels) ** -COARSE_BIAS. 0 splits evenly;
# 0.25 (with stages sqrt(2) apart, about 1.19x the next finer stage's share) reached pastiche's
# quality in 0.85 (bfloat16) and 0.84 (float32) of the even split's time in
# benchmarks/stage_split.py; 0.5 was about as fast, but its content distance came within 1-3%
# of pastiche's (and above it at 130 iterations): too little margin.
COARSE_BIAS = 0.25


def _per_stage(iterations: int, shapes: list[tuple[int, int]]) -> list[int]:
    """Iterations of each stage (one at least each; ``shapes`` are never more than the
    iterations), in proportion to COARSE_BIAS's weights; the remainder goes to the last."""
    final = shapes[-1][0] * shapes[-1][1]
    weights = [(h * w / final) ** -COARSE_BIAS for h, w in shapes]
    rest = iterations - len(shapes)
    per_stage = [1 + int(rest * w / sum(weights)) for w in weights]
    per_stage[-1] += iterations - sum(per_stage)
    return per_stage


def _stage_shapes(height: int, width: int, options: StyleOptions) -> list[tuple[int, int]]:
    shapes = [imaging.fit_long_side(height, width, s) for s in options.schedule()]
    *coarse, final = shapes
    kept: list[tuple[int, int]] = []
    for shape in coarse:
        if min(shape) >= imaging.MIN_SIDE and shape not in (*kept, final):
            kept.append(shape)
    kept.append(final)
    return kept[-options.iterations :]


def _as_run(options: StyleOptions, shapes: list[tuple[int, int]]) -> StyleOptions:
    """``options`` with the stages that ran (a stage too small for the network or beyond one
    iteration each is left out): their number, and their long sides where ``scales`` named
    them, so that the settings sent again make the same stages."""
    if options.scales:
        return options.replace(num_scales=len(shapes), scales=tuple(max(s) for s in shapes))
    return options.replace(num_scales=len(shapes))


def _default_pairs(shapes: list[tuple[int, int]], options: StyleOptions) -> tuple[int, ...] | None:
    """L-BFGS pairs of each stage with memory to spare: torch's 100, but no more than the
    stage has steps to fill (None for Adam)."""
    if options.optimizer != "lbfgs":
        return None
    per_stage = _per_stage(options.iterations, shapes)
    return tuple(max(1, min(LBFGS_HISTORY, n - 1)) for n in per_stage)


def _batch_key(shapes: list[tuple[int, int]], per_stage: list[int], options: StyleOptions) -> tuple:
    """What runs must share to share passes: stage shapes and iterations (so they move from
    stage to stage together), pooling and precision (so one network call serves all)."""
    return (tuple(shapes), tuple(per_stage), options.pooling, options.precision)


class _Read:
    """A pass's loss terms on their way to the host: copied without waiting (into pinned
    memory, on a GPU, behind the pass on its stream), and read when ``values`` is called."""

    def __init__(self, terms: torch.Tensor) -> None:
        flat = terms.detach().reshape(-1)
        self._host, self._done = flat, None
        if terms.is_cuda:
            self._host = torch.empty(flat.shape, dtype=flat.dtype, pin_memory=True)
            self._host.copy_(flat, non_blocking=True)
            self._done = torch.cuda.Event()
            self._done.record()

    def values(self) -> list[float]:
        if self._done is not None:
            self._done.synchronize()
        return self._host.tolist()


class PreparedRun:
    """One validated run and its progress through the coarse-to-fine schedule. Runs with equal
    ``batch_key`` (same stage shapes and iterations, pooling and precision) can share passes."""

    def __init__(
        self, engine: Engine, inputs: _Inputs, options: StyleOptions,
        shapes: list[tuple[int, int]], preview_every: int, preview_size: int,
        should_stop: Callable[[], bool], *, pairs: Sequence[int] | None = None,
        cache: bool = True,
    ) -> None:  # fmt: skip
        self.engine = engine
        self.inputs = inputs
        self.options = options
        self.shapes = shapes
        self.preview_every = preview_every
        # Previews no larger than the result: larger would be upsampled pixels only, sent and
        # held past the server's pixel and memory checks.
        self.preview_size = min(preview_size, max(shapes[-1])) if preview_size else 0
        self.should_stop = should_stop
        self.per_stage = per_stage = _per_stage(options.iterations, shapes)
        # L-BFGS pairs of each stage (memory may have cut them short of the default).
        self.default_pairs = _default_pairs(shapes, options)
        self.pairs = tuple(pairs) if pairs is not None else self.default_pairs
        self.cache = cache  # whether style targets go through the engine's cache
        self.batch_key = _batch_key(shapes, per_stage, options)
        # Each stage's content pixels, resized here rather than where the stage begins: a
        # server prepares waiting jobs ahead, while the device runs others.
        self.content_px = self._content_stages()
        # Likewise each style at each stage's size, where the cache lacks its Grams.
        self.styles_px = engine._styles_ahead(inputs, options, self.content_px) if cache else {}
        # Past here a run needs a style's full-size pixels only where the cache lets its Grams go
        # before its stage begins (converted again then), and the full-size content only to take
        # its colours at the end (luminance transfer): neither is held meanwhile, so a job that
        # waits or runs holds its images at its stages' sizes alone.
        if cache:
            inputs.let_go(keep_content=options.color_preservation == "luminance")
        self.total_cost = sum(n * h * w for n, (h, w) in zip(per_stage, shapes))
        self.done_cost = 0
        self.iteration = 0
        self.x: torch.Tensor | None = None
        self.stage: _Stage | None = None
        self.losses: dict[str, float] = {}

    def _content_stages(self) -> list[torch.Tensor]:
        """Each stage's content pixels. The last, finest stage's come from the content itself;
        where the content is larger, the coarser stages' come from the finest stage's: a
        photograph many times the result's size is resized once, not once per stage."""
        content, finest = self.inputs.content, self.shapes[-1]
        assert content is not None
        last = imaging.resize(content, finest)
        source = last if finest[0] * finest[1] < content.shape[-2] * content.shape[-1] else content
        stages = [last if shape == finest else imaging.resize(source, shape)
                  for shape in self.shapes]  # fmt: skip
        if self.options.color_preservation == "luminance":
            stages = [imaging.luminance_rgb(px) for px in stages]
        return stages

    def begin_stage(self, index: int, start: tuple[torch.Tensor, Targets] | None = None) -> None:
        """Stage ``index`` begins: ``start`` is its start image and content targets on the
        device, as ``Engine._stage_starts`` made them for the batch (made for this run alone
        where not given)."""
        engine, inputs, options = self.engine, self.inputs, self.options
        if start is None:
            start = engine._stage_starts([self], index)[0]
        x, content_targets = start
        content_px = self.content_px[index]
        regions = engine._regions(inputs, content_px, options, self.cache, self.styles_px)
        history = self.pairs[index] if self.pairs else 0
        self.stage = _Stage(engine, options, x, content_targets, regions, history)

    def step(self, index: int, started: float) -> Progress:
        """After the shared pass: this run's optimiser step, and its Progress."""
        assert self.stage is not None
        self.losses = self.stage.step()
        return self._progress(index, started)

    def report(self, index: int, started: float) -> Progress:
        """The Progress of the pass whose losses were just read, its step launched already
        or to come (Engine._report); raises EngineError if a loss is not finite."""
        assert self.stage is not None
        self.stage.check()
        self.losses = dict(self.stage.losses)
        return self._progress(index, started)

    def _progress(self, index: int, started: float) -> Progress:
        assert self.stage is not None
        self.iteration += 1
        shape = self.shapes[index]
        self.done_cost += shape[0] * shape[1]
        elapsed = time.perf_counter() - started
        preview = None
        if self.preview_every and self.iteration % self.preview_every == 0:
            preview = self.engine._finish(
                self.stage.x, self.inputs, self.options, self.preview_size
            )
        return Progress(
            iteration=self.iteration, total=self.options.iterations, losses=self.losses,
            elapsed=elapsed, eta=elapsed / self.done_cost * (self.total_cost - self.done_cost),
            scale_index=index, scale_count=len(self.shapes), height=shape[0], width=shape[1],
            preview=preview,
        )  # fmt: skip

    def end_stage(self) -> None:
        assert self.stage is not None
        self.x = self.stage.x.detach()
        self.stage = None  # free the stage's graph, targets and optimiser state before the next

    def release(self) -> None:
        """Let go of the run's tensors once it has ended (its image, stage, optimiser state and
        targets, its stages' pixels): the batch it ran in goes on with its other runs, and
        whoever holds the run (the batch's lists) until then holds no memory through it."""
        self.stage = None
        self.x = None
        self.content_px = []
        self.styles_px = {}

    def result(self, started: float, pixels: torch.Tensor | None = None) -> Result:
        """The run's Result, from its image's ``pixels`` on the host where the batch copied
        them there (``Engine._download``), else from its own image."""
        assert self.x is not None
        image = self.engine._finish(self.x if pixels is None else pixels, self.inputs,
                                    self.options)  # fmt: skip
        return Result(
            image=image, settings=_as_run(self.options, self.shapes), losses=self.losses,
            elapsed=time.perf_counter() - started, iterations=self.iteration,
        )  # fmt: skip


def _adam_together(stages: list[_Stage]) -> None:
    """The Adam steps of a batch's runs that share their settings as one fused step (one
    kernel on a GPU for all of them, not one or two for each): a temporary optimiser over their
    images that works on each run's own state (made by it in a stage's first step, then handed
    to the run's optimiser), so every run's step is the one its own optimiser would take. A run
    in its stage's first pass has its gradient scaled first, as its own step would. Runs with a
    loss that is not finite (``step`` ends them) or alone in their settings step alone. Marks
    the runs it stepped."""
    groups: dict[tuple, list[_Stage]] = {}
    for stage in stages:
        adam = stage.adam
        if adam is None or stage.x.grad is None:
            continue
        if not all(math.isfinite(v) for v in stage.losses.values()):
            continue
        group = adam.param_groups[0]
        groups.setdefault((group["lr"], group["betas"], group["eps"]), []).append(stage)
    for (lr, betas, eps), members in groups.items():
        if len(members) < 2:
            continue
        together = torch.optim.Adam(
            [stage.x for stage in members], lr=lr, betas=betas, eps=eps, fused=True
        )
        for stage in members:
            assert stage.adam is not None
            stage.scale_gradient()
            if stage.x in stage.adam.state:
                together.state[stage.x] = stage.adam.state[stage.x]  # the same tensors, updated
        together.step()
        for stage in members:
            assert stage.adam is not None
            stage.adam.state[stage.x] = together.state[stage.x]
            stage.adam_stepped = True


class _Stage:
    """One size of the coarse-to-fine schedule: the image being optimised, its targets, its
    optimiser. An iteration is ``objective`` on the features of a (maybe shared) forward pass,
    the backward pass, then ``step``."""

    def __init__(
        self, engine: Engine, options: StyleOptions, start: torch.Tensor,
        content_targets: Targets, regions: list[_Region], history: int,
    ) -> None:  # fmt: skip
        """``start``: the image on the device (the stage's own tensor, optimised in place);
        ``content_targets``: the content's features at the content layers, float32."""
        self.engine = engine
        self.options = options
        self.regions = regions
        self.content_layers = tuple(options.content_layers)
        self.layers = tuple(dict.fromkeys((*self.content_layers, *options.style_layers)))
        self.content_targets = content_targets
        self.layer_masks: dict[tuple[int, str], torch.Tensor] = {}
        self.x = start.requires_grad_(True)
        self.scale = 0.0
        self.losses: dict[str, float] = {}
        self.terms: dict[str, torch.Tensor] = {}
        # Kept by a batch's first stage: the batch's stacked targets (see shared.py).
        self.shared: shared.SharedTargets | None = None
        self.lbfgs: LBFGS | None = None
        self.adam: torch.optim.Adam | None = None
        if options.optimizer == "lbfgs":
            # torch's L-BFGS settings (no line search) with the history the run's plan gives
            # this stage (see _default_pairs): it is allocated now, in full.
            self.lbfgs = LBFGS(self.x, history=history, capturable=engine.capturable_lbfgs)
        else:
            self.adam = torch.optim.Adam([self.x], lr=options.learning_rate, fused=True)
        self.curvature: list[float] | None = None  # read back with the loss terms
        self.gradient_mean: float | None = None  # likewise, in the stage's first pass
        self.adam_stepped = False
        self.lbfgs_stepped = False  # by the replay of the pass's CUDA graph
        self.steps = 0  # optimiser steps taken

    def pending_read(self) -> torch.Tensor | None:
        """After the backward pass: device values this stage's step needs on the host, read
        back by the caller with the loss terms: in the stage's first pass its gradient's mean
        size (into ``gradient_mean``: the scale, see ``advance``), after that an L-BFGS step's
        curvature (into ``curvature``)."""
        if not self.scale:
            return self._gradient_size().reshape(1)
        if self.lbfgs is None:
            return None
        return self.lbfgs.curvature()

    def step(self) -> dict[str, float]:
        """The optimiser's step, once ``objective`` was evaluated and its gradient is in x.grad."""
        self.check()
        self.advance()
        return dict(self.losses)

    def check(self) -> None:
        """Raise EngineError where a loss of the last pass read is not finite."""
        if not all(math.isfinite(v) for v in self.losses.values()):
            raise EngineError(
                "options",
                "the optimisation diverged (a loss is not finite); lower learning_rate or the "
                "loss weights",
            )

    def advance(self) -> None:
        """The optimiser's step alone (``step`` less ``check``)."""
        assert self.x.grad is not None and self.terms
        self.scale_gradient()
        if self.lbfgs_stepped:  # recorded with the pass (see Engine._evaluate)
            self.lbfgs_stepped = False
        elif self.lbfgs is not None:
            # Without a line search L-BFGS evaluates once per step, at the current point:
            # the pass that was just made (maybe shared with other runs).
            self.lbfgs.step(self.curvature)
        elif self.adam_stepped:  # with the batch's (see _adam_together)
            self.adam_stepped = False
        else:
            assert self.adam is not None
            self.adam.step()
        self.steps += 1

    def scale_gradient(self) -> None:
        """In the stage's first pass, before its step: the scale, and the gradient divided by
        it (after that, the pass divides the objective by it).

        The paper's losses reach 1e12 on 0..255 pixels. L-BFGS without a line search is not
        scale-free: its first step and its curvature check use absolute sizes, and at that
        scale it either explodes or never moves. So the optimiser sees the objective divided by
        the stage's first mean absolute gradient (read with the pass's losses, else now), which
        puts gradients near 1 per pixel whatever the weights, sizes and layers. Adam is
        unaffected (it is scale-free)."""
        if self.scale:
            return
        mean = self.gradient_mean
        if mean is None:
            mean = self._gradient_size().item()
        self.scale = max(mean, 1e-20)
        self.x.grad.div_(self.scale)  # type: ignore[union-attr]

    def _gradient_size(self) -> torch.Tensor:
        """The gradient's mean absolute value, on the device (the stage's scale)."""
        assert self.x.grad is not None
        return self.x.grad.abs().mean()

    def _mask(self, region: int, layer: str, features: torch.Tensor) -> torch.Tensor | None:
        mask = self.regions[region].mask
        if mask is None:
            return None
        key = (region, layer)
        if key not in self.layer_masks:
            self.layer_masks[key] = F.interpolate(mask, size=features.shape[-2:], mode="area")
        return self.layer_masks[key]

    def objective(self, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        """This stage's loss from the features of its image; records the terms and returns
        the objective the optimiser sees (scaled once the scale is known)."""
        options, x = self.options, self.x
        content = x.new_zeros((), dtype=torch.float32)
        for layer, weight in options.content_layers.items():
            if weight:
                content = content + weight * content_layer_loss(
                    feats[layer], self.content_targets[layer]
                )
        style = x.new_zeros((), dtype=torch.float32)
        for r, region in enumerate(self.regions):
            for layer, weight in options.style_layers.items():
                if not weight:
                    continue
                mask = self._mask(r, layer, feats[layer])
                if mask is None:
                    loss = style_layer_losses(feats[layer], region.targets[layer][None])[0]
                else:
                    loss = style_layer_loss(gram(feats[layer], mask), region.targets[layer])
                style = style + weight * region.area * loss
        terms = {
            "content": options.content_weight * content,
            "style": options.style_weight * style,
        }
        if options.tv_weight:
            terms["tv"] = options.tv_weight * tv_loss(x)
        total = sum(terms.values())
        terms.setdefault("tv", total.new_zeros(()))
        terms["total"] = total
        assert tuple(terms) == shared.TERMS
        # Read back (one device sync) by the caller for all stages of a pass at once. Only
        # detached values are kept: a pass that fails must leave no graph behind.
        self.terms = {k: v.detach() for k, v in terms.items()}
        return total / self.scale if self.scale else total
