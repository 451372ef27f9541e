"""The Node.js client (examples/clients/node) against a real server on 127.0.0.1."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from certificates import make_pki
from PIL import Image

NODE_DIR = Path(__file__).resolve().parents[2] / "examples" / "clients" / "node"
NODE = shutil.which("node")

pytestmark = [
    pytest.mark.skipif(NODE is None, reason="node is not installed (the Node.js client needs it)"),
    pytest.mark.skipif(
        not (NODE_DIR / "node_modules" / "@grpc" / "grpc-js").is_dir(),
        reason=f"the Node.js client's packages are not installed: run `npm ci` in {NODE_DIR}",
    ),
]


@pytest.fixture
def image_files(tmp_path: Path, tiny_content: np.ndarray, tiny_style: np.ndarray) -> list[Path]:
    """A 40x48 content PNG, a stripe style PNG and a second style as JPEG."""
    content, style, second = tmp_path / "content.png", tmp_path / "style.png", tmp_path / "s2.jpg"
    Image.fromarray(tiny_content).save(content)
    Image.fromarray(tiny_style).save(style)
    Image.fromarray(255 - tiny_style).save(second, quality=95)
    return [content, style, second]


def run_node(
    *args: str | Path, timeout: float = 60, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    assert NODE is not None
    return subprocess.run(
        [NODE, "stylize.js", *map(str, args)],
        cwd=NODE_DIR,
        env={**os.environ, **(env or {})},
        check=False,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def test_stylizes_with_two_styles_and_streams_progress(
    server: Any, image_files: list[Path], tmp_path: Path
) -> None:
    out = tmp_path / "out.png"
    done = run_node(
        *image_files, "-o", out, "--server", server.address,
        "--size", "32", "--iterations", "3", "--style-weights", "0.7,0.3", "--preview", "2",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    progress = [line for line in lines if line.startswith("progress: ")]
    # One line per iteration, in order, each with its losses.
    assert [re.match(r"progress: (\d+)/3 ", p).group(1) for p in progress] == ["1", "2", "3"]
    assert all("total=" in p and "eta " in p for p in progress)
    assert "preview " in progress[1]  # iteration 2 of --preview 2 carried a preview image
    assert any(line.startswith("started: ") and "32x27" in line for line in lines)
    assert lines[-1] == f"wrote {out} (32x27)"
    # The content is 48 wide and 40 high; size 32 is its long side.
    with Image.open(out) as result:
        assert result.format == "PNG"
        assert result.size == (32, 27)
        pixels = np.asarray(result.convert("RGB"))
    assert pixels.std() > 0  # an image, not a blank


def test_refused_request_names_the_field(
    server: Any, image_files: list[Path], tmp_path: Path
) -> None:
    out = tmp_path / "out.png"
    done = run_node(*image_files[:2], "-o", out, "--server", server.address, "--size", "100000")
    assert done.returncode == 1
    assert "INVALID_ARGUMENT" in done.stderr and "options.size" in done.stderr
    assert not out.exists()


def test_a_job_too_large_for_memory_gets_the_reason_and_the_size_that_fits(
    make_server: Callable[..., Any], image_files: list[Path], tmp_path: Path
) -> None:
    server = make_server(simulated_memory_mb=64)
    out = tmp_path / "out.png"
    common = [*image_files[:2], "-o", out, "--server", server.address, "--iterations", "3"]
    done = run_node(*common, "--size", "256")
    assert done.returncode == 1 and not out.exists()
    assert (
        "RESOURCE_EXHAUSTED" in done.stderr and "too large for this server's memory" in done.stderr
    )
    match = re.search(
        r"reason TOO_LARGE \(.*largest_height=(\d+), largest_width=(\d+)", done.stderr
    )
    assert match, done.stderr
    assert "available_bytes=67108864" in done.stderr
    # The size it names runs.
    again = run_node(*common, "--size", match.group(2))
    assert again.returncode == 0, again.stderr


def test_an_input_the_server_cannot_read_is_refused_before_sending(
    image_files: list[Path], tmp_path: Path
) -> None:
    content, style = image_files[:2]
    script = tmp_path / "script.py"
    script.write_text("print('not an image')\n")
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not an image at all")
    webp = tmp_path / "style.webp"
    Image.open(style).save(webp, format="WEBP")
    gif = tmp_path / "style.gif"
    Image.open(style).save(gif, format="GIF")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    out = tmp_path / "out.png"
    for inputs, text in [
        (
            [script, style],
            (
                f"content {script}: not a PNG, JPEG or TIFF file, the formats the server "
                "reads; convert it to PNG first"
            ),
        ),
        ([content, junk], f"style {junk}: not a PNG, JPEG or TIFF file"),
        ([content, webp], f"style {webp}: a WebP image, not a PNG, JPEG or TIFF file"),
        ([content, style, gif], f"style {gif}: a GIF image, not a PNG, JPEG or TIFF file"),
        ([content, empty], f"style {empty}: the file is empty"),
        ([tmp_path, style], f"cannot read the content image {tmp_path}: it is a folder"),
    ]:
        # refused before connecting: no server listens at that address
        done = run_node(*inputs, "-o", out, "--server", "127.0.0.1:9", timeout=20)
        assert done.returncode == 2 and text in done.stderr, done.stderr
        assert done.stderr.startswith("error: ") and len(done.stderr.splitlines()) == 1
        assert not out.exists()


def test_image_signatures_the_client_sends(tmp_path: Path) -> None:
    """PNG, JPEG, TIFF and BigTIFF (either byte order) go to the server as they are."""
    heads = {
        "png": b"\x89PNG\r\n\x1a\n",
        "jpeg": b"\xff\xd8\xff\xe0",
        "tiff-ii": b"II*\0",
        "tiff-mm": b"MM\0*",
        "bigtiff-ii": b"II+\0",
        "bigtiff-mm": b"MM\0+",
        "bmp": b"BM" + b"\0" * 12 + (40).to_bytes(4, "little"),  # a BITMAPINFOHEADER follows
        "heic": b"\0\0\0\x18ftypheic",
        "npy": b"\x93NUMPY",
        "text": b"BMW and other words",
    }
    for name, head in heads.items():
        (tmp_path / name).write_bytes(head + b"\0" * 32)
    script = (
        "const { readImage } = require('./stylize.js');"
        "const [dir, ...names] = process.argv.slice(1);"
        "const seen = {};"
        "for (const n of names) {"
        "  try { readImage(`${dir}/${n}`, 'content'); seen[n] = 'sent'; }"
        "  catch (e) { seen[n] = e.constructor.name + ': ' + e.message; }"
        "}"
        "console.log(JSON.stringify(seen));"
    )
    assert NODE is not None
    done = subprocess.run(
        [NODE, "-e", script, str(tmp_path), *heads],
        cwd=NODE_DIR, check=True, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    seen = json.loads(done.stdout)
    for name in ["png", "jpeg", "tiff-ii", "tiff-mm", "bigtiff-ii", "bigtiff-mm"]:
        assert seen[name] == "sent", seen
    for name, what in [
        ("bmp", "a BMP image, not"),
        ("heic", "a HEIF (HEIC) image, not"),
        ("npy", "a numpy array, not"),
        ("text", "not"),
    ]:
        assert seen[name].startswith(f"UsageError: content {tmp_path / name}: {what}"), seen
        assert seen[name].endswith("convert it to PNG first"), seen


def test_a_tiff_content_is_sent_as_it_is(
    server: Any, image_files: list[Path], tmp_path: Path
) -> None:
    content = tmp_path / "content.tif"
    Image.open(image_files[0]).save(content, format="TIFF")
    out = tmp_path / "out.png"
    done = run_node(
        content, image_files[1], "-o", out, "--server", server.address,
        "--size", "32", "--iterations", "2",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    with Image.open(out) as result:
        assert result.size == (32, 27)


def test_bad_command_line_is_a_usage_error(image_files: list[Path], tmp_path: Path) -> None:
    images = [*image_files[:2], "-o", tmp_path / "out.png", "--server", "127.0.0.1:9"]
    for argv, text in [
        (
            [tmp_path / "missing.png", tmp_path / "also-missing.png", "-o", "x.png"],
            f"cannot read the content image {tmp_path / 'missing.png'}: no such file",
        ),
        ([image_files[0], tmp_path / "gone.png", "-o", "x.png"], "cannot read the style image"),
        (["a.png", "b.png", "-o", "x.png", "--iterations", "zero"], "--iterations must be a"),
        # numbers past their field's range would reach the server as other numbers
        (["a.png", "b.png", "-o", "x.png", "--size", str(2**32)], "below 2^32"),
        (["a.png", "b.png", "-o", "x.png", "--seed", str(2**64)], "[0, 2^64)"),
        (["a.png", "b.png", "-o", "x.png", "--preset", "fast"], "--preset must be"),
        (["a.png", "b.png", "-o", "x.png", "--timeout", "soon"], "--timeout must be"),
        (["a.png", "b.png", "-o", "x.png", "--style-weights", "x"], "is not a weight"),
        (["a.png", "b.png", "-o", "x.png", "--style-weights", "1,2"], "2 weights for 1 styles"),
        (["a.png", "b.png", "-o", "x.png", "--cert", "c.pem"], "--cert and --key go together"),
        (["a.png", "b.png", "-o", "x.png", "--bogus"], "unknown option --bogus"),
        (["a.png", "b.png", "-o"], "-o needs a value"),
        (["a.png", "-o", "x.png"], "give a content image and at least one style"),
        (["a.png", "b.png"], "give the output file"),
        ([*images, "--server", ""], "--server: no address given"),
        ([*images, "--server", "127.0.0.1:65536"], "the port must lie in [1, 65535]"),
        ([*images, "--server", "a.example,b.example"], "for host names use one dns:///"),
    ]:
        done = run_node(*argv, timeout=20)
        assert done.returncode == 2 and text in done.stderr, (argv, done.stderr)
        # one line, no usage text and no stack trace
        assert done.stderr.startswith("error: ") and len(done.stderr.splitlines()) == 1, (
            argv,
            done.stderr,
        )
    # a trailing comma leaves no empty weight, as with the Python client
    done = run_node(*images, "--style-weights", "0.7,", "--server", "127.0.0.1:65536")
    assert done.returncode == 2 and "the port must lie" in done.stderr, done.stderr


# ---------------------------------------------------------------- addresses


def test_an_address_without_a_port_gets_50051() -> None:
    addresses = {
        "localhost": "localhost:50051",
        "127.0.0.1": "127.0.0.1:50051",
        " gpu.example.org ": "gpu.example.org:50051",
        "[::1]": "[::1]:50051",
        "::1": "[::1]:50051",
        "fe80::1": "[fe80::1]:50051",
        "host:7000": "host:7000",
        "[::1]:7000": "[::1]:7000",
        "10.0.0.5,10.0.0.6:7000": "ipv4:10.0.0.5:50051,10.0.0.6:7000",
        "::1,[::2]:7000": "ipv6:[::1]:50051,[::2]:7000",
        "dns:///impasto.default.svc.cluster.local:50051": (
            "dns:///impasto.default.svc.cluster.local:50051"
        ),
        "dns:impasto": "dns:impasto",
        "ipv4:10.0.0.5:1,10.0.0.6:2": "ipv4:10.0.0.5:1,10.0.0.6:2",
        "unix:/run/impasto.sock": "unix:/run/impasto.sock",
    }
    script = (
        "const { toTarget } = require('./stylize.js');"
        "const addresses = JSON.parse(process.argv[1]);"
        "const tryTarget = (a) => { try { return toTarget(a); } catch (e) { return e.message; } };"
        "console.log(JSON.stringify(addresses.map(tryTarget)));"
    )
    assert NODE is not None
    done = subprocess.run(
        [NODE, "-e", script, json.dumps(list(addresses))],
        cwd=NODE_DIR, check=True, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert dict(zip(addresses, json.loads(done.stdout), strict=True)) == addresses


def test_a_host_without_a_port_is_dialled_on_50051() -> None:
    """The client connects to 127.0.0.1:50051 when --server names no port (here a plain
    socket that takes the connection, where the port is free)."""
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind(("127.0.0.1", 50051))
    except OSError:
        listener.close()
        pytest.skip("127.0.0.1:50051 is in use here")
    with listener:
        listener.listen()
        listener.settimeout(20)
        assert NODE is not None
        node = subprocess.Popen(
            [NODE, "stylize.js", "--info", "--server", "127.0.0.1", "--timeout", "5"],
            cwd=NODE_DIR, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            connection, _ = listener.accept()
            connection.close()
        except TimeoutError:
            pytest.fail("no connection came to 127.0.0.1:50051")
        finally:
            _out, err = node.communicate(timeout=30)
    assert node.returncode == 1 and "443" not in err, err


def test_output_is_checked_before_the_job_and_the_result_kept(
    server: Any, image_files: list[Path], tmp_path: Path
) -> None:
    (tmp_path / "a_file").write_text("")
    for output, text in [
        (tmp_path / "a_file" / "out.png", "cannot write"),
        (tmp_path, "folder"),
        (image_files[1], "it is style image 1 (styles[0]), which the result would replace"),
        ("/proc/impasto/out.png", "cannot write"),  # a folder that cannot be made
        ("/proc/out.png", "cannot write"),  # a file that cannot be made, even by root
    ]:
        # refused before connecting: no server listens at that address
        done = run_node(*image_files[:2], "-o", output, "--server", "127.0.0.1:9", timeout=20)
        assert done.returncode == 2 and text in done.stderr, done.stderr
    # missing folders are made
    out = tmp_path / "new" / "folder" / "out.png"
    common = [*image_files[:2], "--server", server.address, "--size", "32", "--iterations", "2"]
    assert run_node(*common, "-o", out).returncode == 0 and out.is_file()
    # a write that fails at the end (a full disk) leaves the result in the temporary folder
    spare_dir = tmp_path / "spare"
    spare_dir.mkdir()
    done = run_node(*common, "-o", "/dev/full", env={"TMPDIR": str(spare_dir)})
    assert done.returncode == 1
    (spare,) = spare_dir.iterdir()
    assert f"cannot write /dev/full (ENOSPC); the result is saved as {spare} instead" in done.stderr
    with Image.open(spare) as kept:
        assert kept.size == (32, 27)


def test_bearer_token(
    make_server: Callable[..., Any], image_files: list[Path], tmp_path: Path
) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("# accepted tokens\ns3cret-token\n")
    server = make_server(token_file=str(tokens))
    out = tmp_path / "out.png"
    common = [
        *image_files[:2],
        "-o",
        out,
        "--server",
        server.address,
        "--size",
        "32",
        "--iterations",
        "3",
    ]
    denied = run_node(*common)
    assert denied.returncode == 1 and "UNAUTHENTICATED" in denied.stderr
    wrong = run_node(*common, "--token", "guess")
    assert wrong.returncode == 1 and "not valid" in wrong.stderr
    allowed = run_node(*common, "--token", "s3cret-token")
    assert allowed.returncode == 0, allowed.stderr
    # GetServerInfo says what the server makes of the token, by the enum's name
    for token, state in (
        ("guess", "TOKEN_STATE_INVALID"),
        ("s3cret-token", "TOKEN_STATE_ACCEPTED"),
    ):
        info = run_node("--info", "--server", server.address, "--token", token)
        assert json.loads(info.stdout)["token"] == state, info.stderr
    with Image.open(out) as result:
        assert result.size == (32, 27)


def test_ctrl_c_cancels_the_job_and_exits_130(
    server: Any, image_files: list[Path], tmp_path: Path
) -> None:
    import signal

    from job_watch import wait_until

    node = subprocess.Popen(
        [NODE, "stylize.js", *map(str, image_files[:2]), "-o", str(tmp_path / "out.png"),
         "--server", server.address, "--size", "32", "--iterations", "100000"],
        cwd=NODE_DIR, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert node.stdout is not None
    for line in node.stdout:  # the job runs on the server
        if line.startswith("started:"):
            break
    node.send_signal(signal.SIGINT)
    _out, err = node.communicate(timeout=30)
    assert node.returncode == 130, err
    assert err.splitlines()[-2:] == ["cancelling...", "cancelled"], err
    jobs = server.metrics.registry.get_sample_value
    wait_until(lambda: jobs("impasto_jobs_total", {"outcome": "cancelled"}) == 1)
    assert not (tmp_path / "out.png").exists()


def test_server_info_as_json(server: Any) -> None:
    done = run_node("--info", "--server", server.address)
    assert done.returncode == 0, done.stderr
    info = json.loads(done.stdout)
    assert info["device"] == "cpu" and info["weights"] == "original"
    assert "conv4_2" in info["allowed"]["layers"]
    assert info["limits"]["max_pixels"] == str(server.config.max_pixels)  # uint64 as a string
    # a timeout past the last date JavaScript has is no deadline, not one already passed
    done = run_node("--info", "--server", server.address, "--timeout", "1e13")
    assert done.returncode == 0, done.stderr


# ---------------------------------------------------------------- TLS


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, as PEM files."""
    return make_pki(tmp_path)[1]


def test_tls_with_token(
    make_server: Callable[..., Any], image_files: list[Path], pki: dict[str, Path], tmp_path: Path
) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("tls-token\n")
    server = make_server(
        tls_cert=str(pki["server_cert"]), tls_key=str(pki["server_key"]), token_file=str(tokens)
    )
    out = tmp_path / "out.png"
    common = [*image_files[:2], "-o", out, "--server", server.address, "--size", "32"]
    common += ["--iterations", "2"]
    plaintext = run_node(*common, "--token", "tls-token", "--timeout", "10")
    assert plaintext.returncode == 1 and "UNAVAILABLE" in plaintext.stderr
    assert not out.exists()
    # Over TLS the token travels as call credentials; the server must see it.
    done = run_node(*common, "--ca", pki["ca"], "--token", "tls-token")
    assert done.returncode == 0, done.stderr
    with Image.open(out) as result:
        assert result.size == (32, 27)
    denied = run_node(*common, "--ca", pki["ca"], "--token", "wrong")
    assert denied.returncode == 1 and "UNAUTHENTICATED" in denied.stderr


def test_tls_files_that_cannot_be_used_are_usage_errors(
    image_files: list[Path], pki: dict[str, Path], tmp_path: Path
) -> None:
    not_pem = tmp_path / "not.pem"
    not_pem.write_text("not a certificate\n")
    missing = tmp_path / "nope.pem"
    common = [*image_files[:2], "-o", tmp_path / "out.png", "--server", "127.0.0.1:9"]
    for flags, text in [
        (["--ca", missing], f"--ca {missing}: cannot read it: no such file"),
        (["--ca", not_pem], f"--ca {not_pem}: no PEM certificate in it"),
        (["--ca", tmp_path], f"--ca {tmp_path}: cannot read it: it is a folder"),
        (
            ["--ca", pki["ca"], "--cert", missing, "--key", pki["client_key"]],
            f"--cert {missing}: cannot read it: no such file",
        ),
        (
            ["--ca", pki["ca"], "--cert", pki["client_cert"], "--key", not_pem],
            f"--cert {pki['client_cert']} --key {not_pem}: ",
        ),
    ]:
        for argv in ([*common, *flags], ["--info", "--server", "127.0.0.1:9", *flags]):
            done = run_node(*argv, timeout=20)
            assert done.returncode == 2 and text in done.stderr, (flags, done.stderr)
            assert done.stderr.startswith("error: ") and len(done.stderr.splitlines()) == 1


def test_mutual_tls(
    make_server: Callable[..., Any], image_files: list[Path], pki: dict[str, Path], tmp_path: Path
) -> None:
    server = make_server(
        tls_cert=str(pki["server_cert"]),
        tls_key=str(pki["server_key"]),
        tls_client_ca=str(pki["ca"]),
    )
    out = tmp_path / "out.png"
    common = [*image_files[:2], "-o", out, "--server", server.address, "--size", "32"]
    common += ["--iterations", "2", "--ca", pki["ca"]]
    anonymous = run_node(*common, "--timeout", "10")
    assert anonymous.returncode == 1 and "UNAVAILABLE" in anonymous.stderr
    done = run_node(*common, "--cert", pki["client_cert"], "--key", pki["client_key"])
    assert done.returncode == 0, done.stderr
    assert out.exists()
