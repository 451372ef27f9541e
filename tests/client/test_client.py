"""The Python client against real servers: several replicas, health, info, the CLI."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from impasto import cli
from impasto.client import Client
from impasto.local import LocalServer, LocalServerError
from PIL import Image as PILImage

FAST = {"size": 32, "iterations": 2, "num_scales": 1}


def _jobs_done(server) -> float:
    return sum(
        sample.value
        for metric in server.metrics.jobs.collect()
        for sample in metric.samples
        if sample.name.endswith("_total")
    )


def test_several_addresses_are_balanced_round_robin(make_server, tiny_content, tiny_style):
    first, second = make_server(), make_server()
    with Client([first.address, second.address]) as client:
        for _ in range(4):
            client.stylize(tiny_content, [tiny_style], **FAST).result()
    assert _jobs_done(first) >= 1 and _jobs_done(second) >= 1
    assert _jobs_done(first) + _jobs_done(second) == 4


def test_an_address_without_a_port_means_the_servers_default_port():
    """Not gRPC's 443: impasto-server listens on 50051 unless told otherwise."""
    from impasto.client import _resolve_targets

    assert _resolve_targets("gpu-host") == ("gpu-host:50051", False, None)
    for bracketed in ("[::1]", "::1", "  ::1 "):  # gRPC would dial [::1]:443 for "::1"
        assert _resolve_targets(bracketed)[0] == "[::1]:50051"
    assert _resolve_targets("fe80::1:2")[0] == "[fe80::1:2]:50051"
    for kept in ("gpu-host:7000", "[::1]:7000", "dns:///gpu-host:7000", "unix:/run/impasto.sock"):
        assert _resolve_targets(kept)[0] == kept
    assert _resolve_targets(["localhost", "127.0.0.1:7000"])[0] == (
        "ipv4:127.0.0.1:50051,127.0.0.1:7000"
    )
    with pytest.raises(ValueError, match="no server address"):
        Client(" ")
    # gRPC would dial 99999 modulo 65536 (34463) without a word
    for wrong in ("localhost:99999", "[::1]:65536", "gpu-host:0"):
        with pytest.raises(ValueError, match="the port must lie in"):
            Client(wrong)
    with pytest.raises(ValueError, match="the port must lie in"):
        Client(["localhost:7000", "localhost:70000"])
    # one name of several that does not resolve is named (not a bare "[Errno -2]")
    with pytest.raises(ValueError, match="'nohost.invalid' does not resolve"):
        Client(["localhost:7000", "nohost.invalid:7001"])


def test_server_info_describes_options(client):
    info = client.server_info()
    # bfloat16 is the default where the CPU runs it natively (AVX512-BF16 or AMX)
    native_bf16 = torch.ops.mkldnn._is_mkldnn_bf16_supported()
    assert info.device == "cpu" and info.weights == "original"
    assert info.precision == ("bfloat16" if native_bf16 else "float32")
    assert info.defaults["preset"] == "default" and "size" in info.defaults
    assert set(info.presets) == {"default", "paper"}
    assert info.allowed["precisions"] == (["float32", "bfloat16"] if native_bf16 else ["float32"])
    assert "conv4_2" in info.allowed["layers"]
    assert info.allowed["output_formats"] == ["raw", "png", "jpeg", "tiff"]
    assert info.limits["max_message_bytes"] >= 4096 * 4096 * 3 * 4
    assert client.health() == "SERVING"
    assert info.cuda_graphs is False  # a CPU server


def test_server_info_and_info_command_report_cuda_graphs(
    make_server, shared_engine, monkeypatch, capsys
):
    # A GPU engine's default, set here on the CPU engine: only reported, no job runs.
    monkeypatch.setattr(shared_engine, "cuda_graphs", True)
    server = make_server()
    with Client(server.address) as client:
        assert client.server_info().cuda_graphs is True
    assert cli.main(["info", "--server", server.address]) == cli.EXIT_OK
    assert "CUDA graphs" in capsys.readouterr().out


def _image_files(folder: Path, content: np.ndarray, style: np.ndarray) -> tuple[Path, Path]:
    """The content and style as PNG files in ``folder``."""
    paths = folder / "content.png", folder / "style.png"
    for path, array in zip(paths, (content, style)):
        PILImage.fromarray(array).save(path)
    return paths


def _heic(pixels: np.ndarray, exif: PILImage.Exif, path) -> str:
    """``pixels`` written as a HEIC file at ``path`` in a child process (so that this one's
    Pillow has not been taught HEIF), with ``exif``."""
    script = (
        "import sys, numpy as np; from PIL import Image; "
        "from pillow_heif import register_heif_opener; register_heif_opener(); "
        "e = Image.Exif(); e.load(bytes.fromhex(sys.argv[3])); "
        "Image.fromarray(np.load(sys.argv[1]))"
        ".save(sys.argv[2], 'HEIF', exif=e.tobytes(), quality=95)"
    )
    array = path.with_suffix(".npy")
    np.save(array, pixels)
    subprocess.run(
        [sys.executable, "-c", script, str(array), str(path), exif.tobytes().hex()], check=True
    )
    return str(path)


def test_cli_stylize_and_info(server, tmp_path, tiny_content, tiny_style, capsys):
    content, style = _image_files(tmp_path, tiny_content, tiny_style)
    out, previews = tmp_path / "out.tif", tmp_path / "previews"
    code = cli.main(["stylize", str(content), str(style), "-o", str(out), "--size", "32",
                     "--iterations", "4", "--num-scales", "1", "--server", server.address,
                     "--save-previews", str(previews), "--preview-interval", "2",
                     "--style-layers", "conv1_1,conv2_1:0.5", "--seed", "3"])  # fmt: skip
    assert code == cli.EXIT_OK
    assert np.asarray(PILImage.open(out)).shape == (27, 32, 3)
    assert sorted(p.name for p in previews.iterdir()) == ["preview_00002.png", "preview_00004.png"]
    assert cli.main(["info", "--server", server.address]) == cli.EXIT_OK
    assert "device     cpu" in capsys.readouterr().out
    # a style in a format the wire does not carry travels as its pixels
    webp = tmp_path / "style.webp"
    PILImage.open(style).save(webp, lossless=True)
    code = cli.main(["stylize", str(content), str(webp), "-o", str(out), "--size", "32",
                     "--iterations", "2", "--num-scales", "1", "--server", server.address])  # fmt: skip
    assert code == cli.EXIT_OK
    # a phone's photograph, its rows stored landscape and held upright (EXIF orientation 6):
    # the server stylizes it as viewers show it, portrait
    phone = tmp_path / "phone.jpg"
    exif = PILImage.Exif()
    exif[0x0112] = 6
    PILImage.fromarray(tiny_content).save(phone, exif=exif)
    code = cli.main(["stylize", str(phone), str(style), "-o", str(out), "--size", "32",
                     "--iterations", "2", "--num-scales", "1", "--server", server.address])  # fmt: skip
    assert code == cli.EXIT_OK
    assert np.asarray(PILImage.open(out)).shape == (32, 27, 3)
    # an iPhone's HEIC photograph (pillow-heif writes the orientation as the file's own
    # rotation): read on this side, sent as its pixels, upright
    heic = tmp_path / "phone.heic"
    _heic(tiny_content, exif, heic)
    if "HEIF" not in PILImage.OPEN:  # Pillow alone cannot read it (until the CLI teaches it)
        with pytest.raises(PILImage.UnidentifiedImageError):
            PILImage.open(heic)
    code = cli.main(["stylize", str(heic), str(style), "-o", str(out), "--size", "32",
                     "--iterations", "2", "--num-scales", "1", "--server", server.address])  # fmt: skip
    assert code == cli.EXIT_OK
    assert np.asarray(PILImage.open(out)).shape == (32, 27, 3)
    # --init-image alone starts from that image (it was sent, and the job started from the
    # content)
    start = tmp_path / "start.png"
    PILImage.fromarray(np.full_like(tiny_content, 128)).save(start)
    capsys.readouterr()
    code = cli.main(["stylize", str(content), str(style), "-o", str(out), "--size", "32",
                     "--iterations", "2", "--num-scales", "1", "--server", server.address,
                     "--init-image", str(start), "--seed", "3"])  # fmt: skip
    assert code == cli.EXIT_OK
    from_start = np.asarray(PILImage.open(out)).copy()
    cli.main(["stylize", str(content), str(style), "-o", str(out), "--size", "32",
              "--iterations", "2", "--num-scales", "1", "--server", server.address,
              "--seed", "3"])  # fmt: skip
    assert not np.array_equal(from_start, np.asarray(PILImage.open(out)))


@pytest.mark.parametrize(
    ("argv", "code", "text"),
    [
        (["stylize", "missing.png", "x.png"], cli.EXIT_USAGE, "no such file"),
        (["stylize", "__DIR__", "x.png"], cli.EXIT_USAGE, "is a folder; give an image file"),
        (["stylize", "__NPY__", "x.png"], cli.EXIT_USAGE, "cannot read"),
        (["stylize", "__EMPTY__", "x.png"], cli.EXIT_USAGE, "content: __EMPTY__ is empty"),
        (
            ["stylize", "__CONTENT__", "__TEXT__"],
            cli.EXIT_USAGE,
            "style __TEXT__: cannot decode image bytes: not in an image format Pillow reads",
        ),
        (["stylize", "__CONTENT__"], cli.EXIT_USAGE, "at least one STYLE"),
        (["stylize", "__CONTENT__", "__CONTENT__", "--size", "3"], cli.EXIT_FAILED, "options.size"),
        (
            [
                "stylize",
                "__CONTENT__",
                "__CONTENT__",
                "--init",
                "noise",
                "--init-image",
                "__CONTENT__",
            ],
            cli.EXIT_USAGE,
            "--init-image is the start of --init image, not of --init noise",
        ),
        (
            ["stylize", "__CONTENT__", "__CONTENT__", "--init", "image"],
            cli.EXIT_USAGE,
            "--init image needs --init-image FILE",
        ),
    ],
)
def test_cli_errors_are_clear(server, tmp_path, tiny_content, capsys, argv, code, text):
    path = tmp_path / "c.png"
    PILImage.fromarray(tiny_content).save(path)
    (tmp_path / "junk.npy").write_bytes(b"not an array")
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.png").write_text("hello")
    files = {"__CONTENT__": path, "__DIR__": tmp_path, "__NPY__": tmp_path / "junk.npy",
             "__EMPTY__": tmp_path / "empty.png", "__TEXT__": tmp_path / "text.png"}  # fmt: skip
    argv = [str(files.get(a, a)) for a in argv]
    text = text.replace("__EMPTY__", str(files["__EMPTY__"]))
    text = text.replace("__TEXT__", str(files["__TEXT__"]))
    assert cli.main([*argv, "--server", server.address, "-o", str(tmp_path / "o.png")]) == code
    assert text in capsys.readouterr().err


def test_cli_says_which_server_it_could_not_reach(tmp_path, tiny_content, capsys):
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{probe.getsockname()[1]}"
    path = tmp_path / "c.png"
    PILImage.fromarray(tiny_content).save(path)
    for argv in (["info"], ["stylize", str(path), str(path), "-o", str(tmp_path / "o.png")]):
        assert cli.main([*argv, "--server", address]) == cli.EXIT_FAILED
        err = capsys.readouterr().err
        assert f"cannot reach the server at {address}: nothing accepts connections there" in err
        assert "check that it runs, and the address and port" in err
    # an address it cannot test with a plain connection gets every hint
    assert cli.main(["info", "--server", f"dns:///{address}"]) == cli.EXIT_FAILED
    assert "check that it runs, the address and port, and --tls" in capsys.readouterr().err


def test_cli_over_tls_to_a_plaintext_server_prints_one_line(server):
    """gRPC's core logs each failed handshake on stderr at INFO; the command says it once."""
    done = subprocess.run(
        [sys.executable, "-m", "impasto.cli", "info", "--server", f"localhost:{server.port}",
         "--tls"],
        capture_output=True, text=True, timeout=60, check=False,
        env={k: v for k, v in os.environ.items() if k != "GRPC_VERBOSITY"},
    )  # fmt: skip
    assert done.returncode == cli.EXIT_FAILED
    assert done.stderr.startswith(
        f"impasto: error: localhost:{server.port} accepts connections, but TLS"
    )
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr


@pytest.mark.parametrize(
    ("flag", "value", "text"),
    [
        ("--timeout", "-1", "must be a number of seconds above 0"),
        ("--timeout", "0", "must be a number of seconds above 0"),
        ("--timeout", "soon", "expected seconds"),
        ("--preview-interval", "-3", "must be >= 0"),
    ],
)
def test_cli_refuses_bad_flags_before_connecting(capsys, flag, value, text):
    with pytest.raises(SystemExit) as exited:
        cli.main(["stylize", "--sample", flag, value, "--server", "127.0.0.1:9"])
    assert exited.value.code == cli.EXIT_USAGE
    assert f"argument {flag}: {text}" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("output", "text"),
    [
        ("a_file/o.png", "cannot write"),  # its folder would be a file
        (".", "it is a folder"),
        ("o.gif", "use .png, .tif, .jpg or .npy"),
        ("/proc/o.png", "cannot write /proc/o.png"),  # refused even to root, which access() allows
        ("previews:a_file", "--save-previews: .*a_file is a file, not a folder"),
        ("previews:a_file/p", "--save-previews: cannot make .*a_file/p: Not a directory"),
        ("c.png", "cannot write .*c.png: it is the content image, which the result would"),
        ("link.png", "cannot write .*link.png: it is the content image"),  # c.png by a link
        ("m.png", "cannot write .*m.png: it is the mask"),
    ],
)
def test_cli_refuses_an_unwritable_output_before_the_job(
    tmp_path, tiny_content, capsys, output, text
):
    """Checked before connecting: with no server at the address, the output is what is named."""
    (tmp_path / "a_file").write_text("")
    path = tmp_path / "c.png"
    PILImage.fromarray(tiny_content).save(path)
    (tmp_path / "link.png").symlink_to(path)
    PILImage.fromarray(np.zeros((27, 32), np.uint8)).save(tmp_path / "m.png")
    where = ["-o", str(tmp_path / output)]
    if output.startswith("previews:"):
        where = ["-o", str(tmp_path / "o.png"), "--save-previews", str(tmp_path / output[9:])]
    if output == "m.png":
        where += ["--mask", str(tmp_path / "m.png")]
    argv = ["stylize", str(path), str(path), *where, "--timeout", "5", "--server", "127.0.0.1:9"]
    assert cli.main(argv) == cli.EXIT_USAGE
    assert re.search(text, capsys.readouterr().err)


def test_cli_keeps_the_result_when_writing_it_fails(
    server, tmp_path, tiny_content, tiny_style, capsys, monkeypatch
):
    """Missing folders of the output are made; previews that cannot be written are dropped,
    not the job; a result that cannot be written where asked goes to the temporary folder."""
    content, style = _image_files(tmp_path, tiny_content, tiny_style)
    spare_dir = tmp_path / "spare"
    spare_dir.mkdir()
    monkeypatch.setattr(cli.tempfile, "tempdir", str(spare_dir))
    out = tmp_path / "new" / "folder" / "out.png"
    save_image = cli.save_image

    def disk_full(array, path):
        if Path(path).parent != spare_dir:
            raise OSError(28, "No space left on device")
        save_image(array, path)

    monkeypatch.setattr(cli, "save_image", disk_full)
    code = cli.main(["stylize", str(content), str(style), "-o", str(out), "--size", "32",
                     "--iterations", "4", "--num-scales", "1", "--server", server.address,
                     "--save-previews", str(tmp_path / "previews"), "--preview-interval", "1",
                     "--quiet"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == cli.EXIT_FAILED
    assert err.count("cannot write previews") == 1  # said once, then the job went on
    assert out.parent.is_dir() and not out.exists()
    (spare,) = spare_dir.iterdir()
    assert f"the result is saved as {spare} instead" in err
    assert np.asarray(PILImage.open(spare)).shape == (27, 32, 3)


def test_cli_device_is_for_the_local_server_only(capsys):
    assert cli.main(["stylize", "--sample", "--device", "cpu", "--server", "127.0.0.1:9"]) == 2
    assert "--device chooses the local server's device" in capsys.readouterr().err


def test_cli_with_its_own_local_server(tmp_path):
    """No --server: the command starts a server process for the run and stops it after."""
    out = tmp_path / "sample.png"
    code = cli.main(["stylize", "--sample", "-o", str(out), "--size", "32", "--iterations", "2",
                     "--num-scales", "1", "--quiet", "--device", "cpu"])  # fmt: skip
    assert code == cli.EXIT_OK
    assert np.asarray(PILImage.open(out)).shape[2] == 3


def test_a_local_server_that_cannot_start_says_why_once(tmp_path, capfd):
    missing = tmp_path / "missing.pt"
    with pytest.raises(LocalServerError) as failed:
        LocalServer(extra_args=["--device", "cpu", "--weights", str(missing)]).start()
    said = str(failed.value) + capfd.readouterr().err
    assert said.startswith("the local server exited with code 2:")
    assert said.count("cannot load the model") == 1, said  # the log's tail in the error only


def test_without_the_server_extra_a_local_server_says_what_to_install(
    monkeypatch, tmp_path, tiny_content, tiny_style, capsys
):
    """A client-only install (no torch) asked for a local server: one clear line, no child."""
    import impasto.local

    real = impasto.local.importlib.util.find_spec
    monkeypatch.setattr(
        impasto.local.importlib.util, "find_spec",
        lambda name, *a: None if name == "torch" else real(name, *a),
    )  # fmt: skip
    started = []
    monkeypatch.setattr(impasto.local.subprocess, "Popen", lambda *a, **k: started.append(a))
    content, style = _image_files(tmp_path, tiny_content, tiny_style)
    code = cli.main(["stylize", str(content), str(style), "-o", str(tmp_path / "o.png")])
    said = capsys.readouterr().err
    assert code == cli.EXIT_FAILED and not started
    assert "impasto: error: a local server needs the server's packages" in said
    assert "pip install 'impasto[server]'" in said
    assert "starting a local impasto server" not in said  # it never starts


def test_impasto_server_without_its_packages_says_what_to_install():
    """``impasto-server`` where the server extra is missing: a message, not a traceback."""
    blocked = (
        "import sys; sys.modules['grpc_health'] = None; "
        "from impasto_server.__main__ import main; sys.exit(main())"
    )
    done = subprocess.run([sys.executable, "-c", blocked], capture_output=True, text=True,
                          timeout=120, check=False)  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert "no module 'grpc_health'" in done.stderr
    assert "pip install 'impasto[server]'" in done.stderr


def test_cli_output_into_a_closed_pipe_ends_quietly(server):
    """``impasto info | head -1``: the reader leaves early; no error message, no traceback."""
    read, write = os.pipe()
    os.close(read)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "impasto.cli", "info", "--server", server.address],
            stdout=write, stderr=subprocess.PIPE, text=True, timeout=120, check=False,
        )  # fmt: skip
    finally:
        os.close(write)
    assert done.returncode == cli.EXIT_FAILED
    assert done.stderr == ""


def test_accepts_connections_probes_plain_addresses_only():
    from impasto.client import accepts_connections

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        assert accepts_connections(f"127.0.0.1:{port}") is True
        for uri in (f"dns:///127.0.0.1:{port}", f"ipv4:127.0.0.1:{port}", "a:1,b:2"):
            assert accepts_connections(uri) is None  # not one host and port
    assert accepts_connections(f"127.0.0.1:{port}") is False
    assert accepts_connections("no-such-host.invalid:1") is None  # gRPC says it did not resolve


def test_cli_ctrl_c_cancels_the_job_and_exits_130(server, tmp_path, tiny_content, tiny_style):
    import signal

    from job_watch import wait_until

    content, style = _image_files(tmp_path, tiny_content, tiny_style)
    out = tmp_path / "out.png"
    # As from a terminal: a suite started in the background (`make test &`) passes SIGINT on
    # ignored, and Python then installs no KeyboardInterrupt handler.
    as_from_a_terminal = (
        "import runpy, signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
        "runpy.run_module('impasto.cli', run_name='__main__')"
    )
    command = subprocess.Popen(
        [sys.executable, "-c", as_from_a_terminal, "stylize", str(content), str(style), "-o",
         str(out), "--server", server.address, "--size", "32", "--iterations", "100000",
         "--quiet"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    wait_until(lambda: server.scheduler.running == 1, timeout=60)
    command.send_signal(signal.SIGINT)
    _out, err = command.communicate(timeout=30)
    assert command.returncode == cli.EXIT_INTERRUPTED == 130, err
    assert err.strip() == "cancelled"
    jobs = server.metrics.registry.get_sample_value
    wait_until(lambda: jobs("impasto_jobs_total", {"outcome": "cancelled"}) == 1)
    assert not out.exists()


def test_cli_keeps_16_bit_and_float_pixels_and_reads_palette_masks(
    server, tmp_path, tiny_content, tiny_style, capsys
):
    import tifffile

    _, style = _image_files(tmp_path, tiny_content, tiny_style)
    run = ["--server", server.address, "--size", "32", "--iterations", "2", "--num-scales", "1"]
    # a 16-bit colour TIFF (LZW, as editors write it) in, a 16-bit colour TIFF out
    wide = tmp_path / "wide.tif"
    tifffile.imwrite(wide, tiny_content.astype(np.uint16) * 257, photometric="rgb",
                     compression="lzw")  # fmt: skip
    out = tmp_path / "out.tif"
    assert cli.main(["stylize", str(wide), str(style), "-o", str(out), *run]) == cli.EXIT_OK
    assert out.read_bytes()[:4] == b"II*\x00"  # once the bytes of a 16-bit PNG
    result = tifffile.imread(out)
    assert result.dtype == np.uint16 and result.shape == (27, 32, 3)
    # float content keeps float and its own range in .npy and in TIFF (PNG made it 16-bit)
    floats = tmp_path / "floats.tif"
    PILImage.fromarray(np.linspace(0, 4095, 40 * 48, dtype=np.float32).reshape(40, 48)).save(floats)
    for name in ("f.npy", "f.tif"):
        out = tmp_path / name
        assert cli.main(["stylize", str(floats), str(style), "-o", str(out), *run]) == 0
        result = np.load(out) if name.endswith(".npy") else tifffile.imread(out)
        assert result.dtype == np.float32 and 0 <= result.min() and result.max() <= 4095.01
    # a palette mask's labels are its indices, not their colours
    labels = np.zeros((40, 48), np.uint8)
    labels[:, 24:] = 1
    mask = tmp_path / "mask.png"
    picture = PILImage.fromarray(labels, mode="P")
    picture.putpalette([0, 0, 0, 255, 0, 0])
    picture.save(mask)
    out = tmp_path / "regions.png"
    argv = ["stylize", str(wide), str(style), str(style), "-o", str(out), *run, "--mask",
            str(mask), "--region", "1=1"]  # fmt: skip
    assert cli.main(argv) == cli.EXIT_OK
    # a colour picture given as a mask is refused before anything is sent
    capsys.readouterr()
    argv[argv.index(str(mask))] = str(style)
    assert cli.main(argv) == cli.EXIT_USAGE
    assert "not one channel: a mask is a label image" in capsys.readouterr().err


def test_a_request_larger_than_a_message_is_refused_before_it_is_sent(server, tiny_style):
    """gRPC would end the call with only "Sent message larger than max"."""
    refused = pytest.raises(ValueError, match="MiB a message may carry: downscale the images")
    with Client(server.address, max_message_bytes=64 << 10) as small, refused:
        small.stylize(np.zeros((256, 256, 3), np.uint8), [tiny_style], **FAST)
