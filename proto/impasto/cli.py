"""The ``impasto`` command: ``impasto stylize`` and ``impasto info``.

With ``--server ADDRESS`` it talks to a running server; without, it starts a local server for
the run (a child process, so this command never imports torch).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

# gRPC's core writes each failed TLS handshake to stderr as INFO lines, and reads its verbosity
# when grpc is imported: the command says what failed in one line of its own.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

import grpc
import numpy as np

from impasto import images, wire
from impasto.client import (
    Client,
    ImpastoError,
    Progress,
    Queued,
    Result,
    Started,
    accepts_connections,
)

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class UsageError(Exception):
    """A command-line mistake: printed as one line, exit code 2."""


# ---------------------------------------------------------------- parsing helpers


def _layer_weights(text: str) -> dict[str, float]:
    """``conv1_1,conv2_1:0.5`` -> {"conv1_1": 1.0, "conv2_1": 0.5}."""
    layers: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, weight = part.partition(":")
        try:
            layers[name] = float(weight) if weight else 1.0
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"bad layer weight in {part!r}") from exc
    return layers


def _floats(text: str) -> list[float]:
    try:
        return [float(p) for p in text.split(",") if p.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers: {text!r}") from exc


def _ints(text: str) -> list[int]:
    try:
        return [int(p) for p in text.split(",") if p.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers: {text!r}") from exc


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected seconds: {text!r}") from exc
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number of seconds above 0, got {text!r}")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected a whole number: {text!r}") from exc
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _region(text: str) -> tuple[int, int]:
    label, sep, index = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected LABEL=STYLE_INDEX, got {text!r}")
    try:
        return int(label), int(index)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected integers in {text!r}") from exc


def _connection_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--server",
        help="server address host[:port] (port 50051 when left out; several comma-separated "
        "for round-robin, or dns:///name:port); without it a local server runs for this command",
    )
    p.add_argument("--token", help="bearer token (or set IMPASTO_TOKEN)")
    p.add_argument(
        "--token-file", help="file holding the bearer token (its first line; # comments skipped)"
    )
    p.add_argument("--tls", action="store_true", help="connect with TLS")
    p.add_argument("--ca", help="PEM root certificates for TLS (default: the system's)")
    p.add_argument("--cert", help="PEM client certificate chain for mutual TLS")
    p.add_argument("--key", help="PEM client private key for mutual TLS")
    p.add_argument("--device", help="device of the local server (cpu, cuda, cuda:N)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="impasto", description="Neural style transfer through an impasto gRPC server."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    s = sub.add_parser("stylize", help="stylize an image", description="Stylize CONTENT.")
    s.add_argument(
        "content", nargs="?", help="content image (PNG, JPEG, TIFF, HEIC, WebP, AVIF... or .npy)"
    )
    s.add_argument("styles", nargs="*", metavar="style", help="one or more style images")
    s.add_argument("--sample", action="store_true", help="use the bundled sample images")
    s.add_argument(
        "-o", "--output", default="stylized.png", help="result file (.png/.tif/.jpg/.npy)"
    )
    s.add_argument("--preset", choices=list(wire.PRESETS))
    s.add_argument("--size", type=int, help="long side of the result in pixels")
    s.add_argument("--iterations", type=int, help="iterations over all scales")
    s.add_argument("--content-weight", type=float, help="alpha")
    s.add_argument("--style-weight", type=float, help="beta")
    s.add_argument(
        "--tv-weight",
        type=float,
        help="total-variation smoothing (at the default weights 1e13 smooths visibly, 1e14 "
        "strongly)",
    )
    s.add_argument("--content-layers", type=_layer_weights, help="e.g. conv4_2 or conv4_2:1")
    s.add_argument("--style-layers", type=_layer_weights, help="e.g. conv1_1,conv2_1:0.5")
    s.add_argument("--style-weights", type=_floats, help="blend weight per style, e.g. 0.7,0.3")
    s.add_argument("--style-scale", type=float, help="style size relative to the content")
    s.add_argument("--init", choices=list(wire.INITS))
    s.add_argument("--init-image", help="start image (implies --init image)")
    s.add_argument("--optimizer", choices=list(wire.OPTIMIZERS))
    s.add_argument("--learning-rate", type=float, help="Adam step size")
    s.add_argument("--pooling", choices=list(wire.POOLINGS))
    s.add_argument("--seed", type=int)
    s.add_argument("--color-preservation", choices=list(wire.COLOR_PRESERVATIONS))
    s.add_argument("--num-scales", type=int, help="coarse-to-fine stages")
    s.add_argument("--scales", type=_ints, help="explicit stage sizes, e.g. 128,256")
    s.add_argument("--precision", choices=list(wire.PRECISIONS))
    s.add_argument(
        "--mask", help="label image (8/16-bit grayscale or palette PNG/TIFF, or .npy) for regions"
    )
    s.add_argument(
        "--region", type=_region, action="append", default=[], metavar="LABEL=STYLE_INDEX",
        help="give mask label LABEL the style number STYLE_INDEX (0-based); repeatable",
    )  # fmt: skip
    s.add_argument("--save-previews", metavar="DIR", help="write preview images into DIR")
    s.add_argument(
        "--preview-interval", type=_count, default=0,
        help="iterations between previews (default 10 with --save-previews)",
    )  # fmt: skip
    s.add_argument("--timeout", type=_seconds, help="deadline for the whole job in seconds")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    _connection_args(s)

    i = sub.add_parser("info", help="describe the server")
    _connection_args(i)
    return parser


# ---------------------------------------------------------------- files


def read_image(path: str, field: str) -> Any:
    """A .npy array, or the file's bytes (the server decodes PNG/JPEG/TIFF), or the pixels of
    another format Pillow reads."""
    file = Path(path)
    if file.is_dir():
        raise UsageError(f"{field}: {path} is a folder; give an image file")
    if not file.is_file():
        raise UsageError(f"{field}: no such file: {path}")
    if file.suffix.lower() == ".npy":
        try:
            return np.load(file, allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:  # not an array file, or one of objects
            raise UsageError(f"{field}: cannot read {path} as a numpy array: {exc}") from exc
    data = file.read_bytes()
    if not data:
        raise UsageError(f"{field}: {path} is empty")
    try:
        images.decode(data, field=field)  # fail here, with the file's name, not on the server
    except images.ImageError:
        # a format the wire does not carry (WebP, AVIF, HEIC, BMP, GIF...) travels as its
        # pixels
        if data[4:8] == b"ftyp":  # an ISO media file: HEIF (phones' photographs) or AVIF
            _read_heif()
        try:
            return images.decode(data, field=field, formats=None)
        except images.ImageError as exc:
            named = field if path in field else f"{field} {path}"
            raise UsageError(f"{named}: {exc.message}") from exc
    return data


def _read_heif() -> None:
    """Let Pillow read HEIF/HEIC files, an iPhone's photographs by default (pillow-heif; its
    images come upright, their orientation already applied and reset in their EXIF)."""
    try:
        from pillow_heif import register_heif_opener
    except ImportError:  # installed without its dependencies: the file is refused as unknown
        return
    register_heif_opener()  # again is harmless


def read_mask(path: str) -> np.ndarray:
    data = read_image(path, "mask")
    if not isinstance(data, np.ndarray):
        data = images.decode(data, field="mask", labels=True)
    if data.ndim != 2 and not (data.ndim == 3 and data.shape[2] == 1):
        raise UsageError(
            f"mask {path}: shape {data.shape}, not one channel: a mask is a label image "
            "(8/16-bit grayscale or palette PNG/TIFF, or a 2D .npy array of labels)"
        )
    return data


def save_image(array: np.ndarray, path: str | Path) -> None:
    path = Path(path)
    form = _check_suffix(path)
    if form == "npy":
        np.save(path, array)
    else:
        path.write_bytes(images.encode(array, form))


_FORMS = {
    ".png": "png",
    ".tif": "tiff",
    ".tiff": "tiff",
    ".jpg": "jpeg",
    ".jpeg": "jpeg",
    ".npy": "npy",
}


#: The result's form on the wire for each output file's form (otherwise the server's default).
_WIRE_FORMS = {"tiff": "tiff", "npy": "raw"}


def _check_suffix(path: Path) -> str:
    form = _FORMS.get(path.suffix.lower())
    if form is None:
        raise UsageError(f"cannot write {path.name}: use .png, .tif, .jpg or .npy")
    return form


def prepare_output(path: Path) -> None:
    """Before the job: refuse an output the result could not be written to, so that a long
    run's result is not lost at the end. Missing folders are made (as for previews)."""
    if path.is_dir():
        raise UsageError(f"cannot write {path}: it is a folder; give a file name")
    _check_suffix(path)
    existed = path.exists()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Opened to append, which changes nothing, and closed: what access() allows (root may
        # write anywhere) can still be refused by the file system (/proc, a read-only mount).
        with open(path, "ab"):
            pass
        if not existed:
            path.unlink()
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror or exc}") from exc


def refuse_an_input(path: Path, inputs: Sequence[tuple[str, str | None]]) -> None:
    """Refuse an output that is one of the job's input files: the result would replace it."""
    for field, name in inputs:
        try:
            same = name is not None and os.path.samefile(path, name)
        except OSError:  # either is missing: not the same file
            same = False
        if same:
            raise UsageError(
                f"cannot write {path}: it is the {field}, which the result would replace; "
                "give another file name"
            )


class ResultMoved(Exception):
    """The result was written, but not where it was asked for: exit code 1."""


def save_result(array: np.ndarray, path: Path) -> None:
    """Write the result; should that fail now (a full disk, a folder removed during the run),
    write it to the temporary folder instead and raise ``ResultMoved`` saying where."""
    try:
        save_image(array, path)
    except OSError as exc:
        spare = Path(tempfile.gettempdir()) / f"{path.stem}-{os.getpid()}{path.suffix}"
        try:
            save_image(array, spare)
        except OSError:
            raise exc from None
        raise ResultMoved(
            f"cannot write {path} ({exc.strerror or exc}); the result is saved as {spare} instead"
        ) from exc


# ---------------------------------------------------------------- connection


def _read_token(path: str) -> str:
    """The token of a file: its first line that is not blank or a # comment, up to the first
    space, so a server's token file (``token [expires=...]`` lines) serves too."""
    for line in Path(path).read_text().splitlines():
        if line.strip() and not line.strip().startswith("#"):
            return line.split()[0]
    raise UsageError(f"--token-file {path} holds no token")


@contextlib.contextmanager
def connect(args: argparse.Namespace) -> Iterator[Client]:
    token = args.token or os.environ.get("IMPASTO_TOKEN")
    if args.token_file:
        token = _read_token(args.token_file)
    if token and not all(" " <= c <= "~" for c in token):
        raise UsageError("the token holds characters a gRPC header cannot carry")
    if bool(args.cert) != bool(args.key):
        raise UsageError("--cert and --key go together (mutual TLS)")
    tls_files = {
        name: Path(value).read_bytes() if value else None
        for name, value in (("ca", args.ca), ("cert", args.cert), ("key", args.key))
    }
    kwargs: dict[str, Any] = {
        "token": token,
        "tls": args.tls,
        "root_certificates": tls_files["ca"],
        "certificate_chain": tls_files["cert"],
        "private_key": tls_files["key"],
    }
    if args.server:
        target: str | list[str] = args.server
        if "," in args.server and not args.server.startswith(("ipv4:", "ipv6:")):
            target = [a.strip() for a in args.server.split(",") if a.strip()]
        with Client(target, **kwargs) as client:
            yield client
        return
    from impasto.local import LocalServer

    local = LocalServer(device=args.device)
    local.check()  # before saying that it starts
    print("starting a local impasto server ...", file=sys.stderr)
    with local as server, Client(server.address) as client:
        yield client


# ---------------------------------------------------------------- commands


def stylize(args: argparse.Namespace) -> int:
    if args.sample or args.content is None:
        if args.content is not None:
            raise UsageError("give CONTENT and STYLE files, or --sample, not both")
        from impasto import samples

        content: Any = samples.content()
        styles: list[Any] = [samples.style()]
    else:
        if not args.styles:
            raise UsageError("give at least one STYLE image after CONTENT")
        content = read_image(args.content, "content")
        styles = [read_image(path, f"style {path}") for path in args.styles]
    if args.device and args.server:
        raise UsageError("--device chooses the local server's device; --server's picks its own")
    output = Path(args.output)
    styles_named = [(f"style image {path}", path) for path in args.styles]
    inputs = [("content image", args.content), *styles_named]
    refuse_an_input(output, [*inputs, ("init image", args.init_image), ("mask", args.mask)])
    prepare_output(output)
    previews = Path(args.save_previews) if args.save_previews else None
    if previews is not None:
        if previews.exists() and not previews.is_dir():
            raise UsageError(f"--save-previews: {previews} is a file, not a folder")
        try:
            previews.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UsageError(f"--save-previews: cannot make {previews}: {exc.strerror}") from exc
    options = {
        name: getattr(args, name)
        for name in wire.OPTION_NAMES
        if getattr(args, name, None) is not None
    }
    mask = read_mask(args.mask) if args.mask else None
    if args.region and mask is None:
        raise UsageError("--region needs --mask")
    if args.init_image and options.get("init", "image") != "image":
        raise UsageError(f"--init-image is the start of --init image, not of --init {args.init}")
    if options.get("init") == "image" and not args.init_image:
        raise UsageError("--init image needs --init-image FILE")
    init_image = read_image(args.init_image, "init image") if args.init_image else None
    if init_image is not None:
        options["init"] = "image"  # --init-image alone means it
    interval = args.preview_interval or (10 if previews is not None else 0)

    with connect(args) as client:
        job = client.stylize(
            content,
            styles,
            style_weights=args.style_weights,
            mask=mask,
            region_styles=dict(args.region) if args.region else None,
            init_image=init_image,
            preview_interval=interval if previews is not None else 0,
            # TIFF and .npy keep every dtype (float too); the server's PNG would make it 16-bit
            output_format=_WIRE_FORMS.get(_check_suffix(output)),
            timeout=args.timeout,
            **options,
        )
        result = _follow(job, previews, quiet=args.quiet)
    save_result(result.image, output)
    h, w = result.image.shape[:2]
    print(
        f"wrote {output} ({w}x{h}, {result.iterations} iterations in "
        f"{result.elapsed_seconds:.1f} s, seed {result.settings.get('seed')})",
        file=sys.stderr,
    )
    return EXIT_OK


def _follow(job: Any, previews: Path | None, *, quiet: bool) -> Result:
    from tqdm import tqdm

    bar = None
    try:
        for event in job:
            if isinstance(event, Queued):
                if not quiet:
                    print(
                        f"queued: position {event.position} of {event.queue_length}",
                        file=sys.stderr,
                    )
            elif isinstance(event, Started):
                bar = tqdm(
                    total=event.total_iterations,
                    unit="it",
                    desc=f"{event.width}x{event.height} on {event.device}"
                    + (f" (batch of {event.batch_size})" if event.batch_size > 1 else ""),
                    disable=quiet,
                    file=sys.stderr,
                )
            elif isinstance(event, Progress):
                if bar is not None:
                    bar.update(event.iteration - bar.n)
                    bar.set_postfix(
                        loss=f"{event.losses.get('total', 0):.3g}",
                        style=f"{event.losses.get('style', 0):.3g}",
                        content=f"{event.losses.get('content', 0):.3g}",
                        eta=f"{event.eta_seconds:.0f}s",
                        refresh=False,
                    )
                if previews is not None and event.preview is not None:
                    try:
                        save_image(event.preview, previews / f"preview_{event.iteration:05d}.png")
                    except OSError as exc:  # the job itself goes on
                        print(
                            f"impasto: warning: cannot write previews ({exc}); "
                            "the job goes on without them",
                            file=sys.stderr,
                        )
                        previews = None
            elif isinstance(event, Result) and bar is not None:
                bar.update(bar.total - bar.n)
        return job.result()
    except KeyboardInterrupt:
        job.cancel()  # the server stops the job within one iteration
        raise
    finally:
        if bar is not None:
            bar.close()


#: ServerInfo.token in the words of `impasto info`.
TOKEN_WORDS = {
    "missing": "none sent (--token, --token-file or IMPASTO_TOKEN)",
    "accepted": "accepted",
    "invalid": "not valid",
    "expired": "expired",
}


def info(args: argparse.Namespace) -> int:
    with connect(args) as client:
        details = client.server_info()
        health = client.health()
    print(f"impasto server {details.version} ({health})")
    graphs = ", CUDA graphs" if details.cuda_graphs else ""
    graphs += ", torch.compile" if details.compiled_network else ""
    print(f"  device     {details.device} ({details.precision}{graphs}), weights {details.weights}")
    print(f"  load       {details.running_jobs} running, {details.queued_jobs} queued")
    auth = "bearer token required" if details.auth_required else "open"
    if details.auth_required and details.token:
        auth += f"; yours: {TOKEN_WORDS.get(details.token, details.token)}"
    print(f"  auth       {auth}")
    for name, value in details.limits.items():
        print(f"  limit      {name} = {value}")
    for name, value in details.defaults.items():
        print(f"  default    {name} = {value}")
    for name, value in details.allowed.items():
        print(f"  allowed    {name}: {value}")
    return EXIT_OK


def _explained(error: ImpastoError, server: str | None, tls: bool = False) -> str:
    """gRPC's words, with the address and what to check where the server was not reached."""
    if server is None:  # a local server of this command's own: its failures say why
        return str(error)
    # a call that never reached a server has no reason; a job that lost it says so already
    if (
        error.code == grpc.StatusCode.UNAVAILABLE
        and error.reason is None
        and not error.message.startswith("lost the connection")
    ):
        # gRPC names only the last address it tried (localhost's IPv6 one, say): a plain
        # connection tells a missing server from a TLS mismatch
        listening = accepts_connections(server)
        if listening and tls:
            return (
                f"{server} accepts connections, but TLS with it failed ({error.message}); "
                "check --ca (the CA that signed the server's certificate) and that the "
                "server uses TLS"
            )
        if listening:
            return (
                f"{server} accepts connections, but not gRPC without TLS ({error.message}); "
                "if the server uses TLS, add --tls"
            )
        if listening is False:
            return (
                f"cannot reach the server at {server}: nothing accepts connections there "
                f"({error.message}); check that it runs, and the address and port"
            )
        return (
            f"cannot reach the server at {server} ({error.message}); check that it runs, the "
            "address and port, and --tls"
        )
    if error.code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return f"{error} (server {server})"
    return str(error)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    command = {"stylize": stylize, "info": info}[args.command]
    try:
        return command(args)
    except KeyboardInterrupt:
        print("\ncancelled", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # stdout's reader went away (``impasto info | head``): end quietly, and keep Python's
        # last flush of stdout at exit from failing again
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILED
    except ImpastoError as exc:
        print(f"impasto: error: {_explained(exc, args.server, args.tls)}", file=sys.stderr)
        return EXIT_FAILED
    except ResultMoved as exc:
        print(f"impasto: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except (UsageError, images.ImageError, wire.OptionError, ValueError, OSError) as exc:
        print(f"impasto: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except RuntimeError as exc:  # the local server did not start
        print(f"impasto: error: {exc}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
