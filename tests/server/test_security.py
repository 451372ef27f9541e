"""TLS (server and mutual) with certificates made here, and bearer tokens."""

from __future__ import annotations

import grpc
import pytest
from certificates import make_pki, new_key, pem_key
from impasto.client import Client, ImpastoError
from job_watch import SHORT


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


def test_tls(make_server, pki, tiny_content, tiny_style):
    files, paths = pki
    server = make_server(tls_cert=str(paths["server_cert"]), tls_key=str(paths["server_key"]))
    with Client(server.address, root_certificates=files["ca"]) as client:
        assert client.health() == "SERVING"
        assert client.stylize(tiny_content, [tiny_style], **SHORT).result().iterations == 2
    with Client(server.address) as plain, pytest.raises(ImpastoError) as info:
        plain.server_info(timeout=3)
    assert info.value.code == grpc.StatusCode.UNAVAILABLE


def test_the_cli_tells_a_tls_mismatch_from_a_missing_server(make_server, pki, tmp_path, capsys):
    """gRPC names only the last address it tried (for localhost often IPv6's, refused): the
    command checks that the port accepts connections and points at TLS instead."""
    from impasto import cli

    _files, paths = pki
    server = make_server(tls_cert=str(paths["server_cert"]), tls_key=str(paths["server_key"]))
    other = make_pki(tmp_path)[1]["ca"]  # a CA that did not sign the server's certificate
    info = ["info", "--server", f"localhost:{server.port}"]
    for argv, hint in (
        (["--tls", "--ca", str(other)], "but TLS with it failed"),
        ([], "but not gRPC without TLS"),
    ):
        assert cli.main([*info, *argv]) == cli.EXIT_FAILED
        err = capsys.readouterr().err
        assert f"localhost:{server.port} accepts connections, {hint}" in err, err
    assert cli.main([*info, "--tls", "--ca", str(paths["ca"])]) == cli.EXIT_OK


@pytest.mark.parametrize("verbosity", [None, "INFO"])
def test_failed_handshakes_leave_the_servers_log_alone(pki, tmp_path, verbosity):
    """A plaintext client on the TLS port: gRPC's core logged a line for each attempt, in its
    own format between the server's lines, unless GRPC_VERBOSITY asks for them."""
    import os
    import signal
    import subprocess
    import sys
    import time

    _files, paths = pki
    env = {k: v for k, v in os.environ.items() if k != "GRPC_VERBOSITY"}
    if verbosity:
        env["GRPC_VERBOSITY"] = verbosity
    port_file = tmp_path / "port"
    server = subprocess.Popen(
        [sys.executable, "-m", "impasto_server.app", "--device", "cpu", "--port", "0",
         "--port-file", str(port_file), "--tls-cert", str(paths["server_cert"]),
         "--tls-key", str(paths["server_key"])],
        stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not port_file.exists() or not port_file.read_text().strip():
            assert server.poll() is None and time.monotonic() < deadline, "the server did not start"
            time.sleep(0.1)
        address = f"127.0.0.1:{port_file.read_text().strip()}"
        with Client(address) as plain, pytest.raises(ImpastoError):
            plain.server_info(timeout=3)
    finally:
        server.send_signal(signal.SIGTERM)
        _out, err = server.communicate(timeout=60)
    assert "listening on" in err
    assert ("Handshake failed" in err) == (verbosity == "INFO"), err


def test_the_images_health_check_speaks_tls_when_told_its_ca(make_server, pki):
    """deploy/grpc_health_check.py (Docker's HEALTHCHECK) takes --ca and --server-name from
    the environment, since the image's command line has neither."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    _files, paths = pki
    server = make_server(tls_cert=str(paths["server_cert"]), tls_key=str(paths["server_key"]))
    script = Path(__file__).parents[2] / "deploy" / "grpc_health_check.py"

    def check(**env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, script, f"127.0.0.1:{server.port}", "--timeout", "5"],
            capture_output=True, text=True, check=False, timeout=30, env={**os.environ, **env},
        )  # fmt: skip

    assert check().returncode == 1  # plaintext against TLS
    told = check(IMPASTO_HEALTH_CA=str(paths["ca"]), IMPASTO_HEALTH_SERVER_NAME="localhost")
    assert told.returncode == 0 and "SERVING" in told.stdout, told.stderr
    missing = check(IMPASTO_HEALTH_CA="/nonexistent.pem")
    assert missing.returncode == 1 and "--ca /nonexistent.pem: No such file" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_mutual_tls_requires_a_client_certificate(make_server, pki):
    files, paths = pki
    server = make_server(
        tls_cert=str(paths["server_cert"]),
        tls_key=str(paths["server_key"]),
        tls_client_ca=str(paths["ca"]),
    )
    with Client(server.address, root_certificates=files["ca"]) as anonymous:
        with pytest.raises(ImpastoError) as info:
            anonymous.server_info(timeout=3)
        assert info.value.code == grpc.StatusCode.UNAVAILABLE
    with Client(
        server.address,
        root_certificates=files["ca"],
        certificate_chain=files["client_cert"],
        private_key=files["client_key"],
    ) as known:
        assert known.server_info(timeout=5).device == "cpu"


def test_bearer_tokens(make_server, tmp_path, tiny_content, tiny_style):
    tokens = tmp_path / "tokens"
    tokens.write_text("# lab tokens\nsecret-one\nsecret-two\nold expires=2000-01-01\n")
    server = make_server(token_file=str(tokens))
    for token, expected, state in (
        (None, "required", "missing"),
        ("wrong", "not valid", "invalid"),
        ("old", "expired", "expired"),
    ):
        with Client(server.address, token=token) as client:
            assert client.health() == "SERVING"  # probes stay open
            info = client.server_info()  # open too, and says what the token is
            assert info.auth_required and info.token == state
            with pytest.raises(ImpastoError) as error:
                client.stylize(tiny_content, [tiny_style], **SHORT).result()
            assert error.value.code == grpc.StatusCode.UNAUTHENTICATED
            assert expected in error.value.message
    with Client(server.address, token="secret-two") as client:
        assert client.server_info().token == "accepted"
        assert client.stylize(tiny_content, [tiny_style], **SHORT).result().iterations == 2
    refused = server.metrics.registry.get_sample_value(
        "impasto_rejected_requests_total", {"reason": "unauthenticated"}
    )
    assert refused == 3  # the Stylize calls; asking for the server's info is no refusal


def test_an_open_server_needs_no_token(make_server):
    server = make_server()
    with Client(server.address, token="anything") as client:
        info = client.server_info()
    assert not info.auth_required and info.token == "not_needed"


def test_the_cli_reads_a_token_file_as_the_server_does(make_server, tmp_path, capsys, tiny_content):
    from impasto import cli
    from PIL import Image

    tokens = tmp_path / "tokens"
    tokens.write_text("# lab tokens\n\nsecret-one expires=2999-01-01\nsecret-two\n")
    server = make_server(token_file=str(tokens))
    picture = tmp_path / "p.png"
    Image.fromarray(tiny_content).save(picture)
    job = ["stylize", str(picture), str(picture), "-o", str(tmp_path / "o.png"), "--size", "32",
           "--iterations", "1", "--num-scales", "1", "--server", server.address]  # fmt: skip
    assert cli.main([*job, "--token-file", str(tokens)]) == cli.EXIT_OK  # its first token
    info = ["info", "--server", server.address]
    capsys.readouterr()
    for argv, yours in ([], "none sent"), (["--token", "typo"], "not valid"):
        assert cli.main([*info, *argv]) == cli.EXIT_OK
        assert f"bearer token required; yours: {yours}" in capsys.readouterr().out
    comments = tmp_path / "comments"
    comments.write_text("# none yet\n")
    for argv, text in [
        (["--token-file", str(comments)], f"--token-file {comments} holds no token"),
        (["--token", "caf\u00e9"], "the token holds characters a gRPC header cannot carry"),
        (["--cert", str(tokens)], "--cert and --key go together"),  # gRPC aborted on it
    ]:
        assert cli.main([*info, *argv]) == cli.EXIT_USAGE
        assert text in capsys.readouterr().err
    with pytest.raises(ValueError, match="certificate_chain and private_key go together"):
        Client(server.address, certificate_chain=b"x")


def test_bad_tls_files_are_named_at_start(make_server, pki, tmp_path):
    """gRPC alone says only that it cannot bind the port; each file is checked first."""
    _files, paths = pki
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate")
    encrypted = tmp_path / "encrypted.pem"
    encrypted.write_bytes(pem_key(new_key(), b"secret"))
    good = {"tls_cert": paths["server_cert"], "tls_key": paths["server_key"]}
    cases = [
        ({**good, "tls_cert": junk}, f"--tls-cert {junk} and --tls-key .* are not a PEM"),
        ({**good, "tls_key": paths["client_key"]}, "KEY_VALUES_MISMATCH"),
        ({**good, "tls_key": encrypted}, "unencrypted private key"),  # no prompt for a password
        ({**good, "tls_client_ca": junk}, f"--tls-client-ca {junk} holds no PEM certificate"),
        ({**good, "tls_key": tmp_path / "nope.pem"}, f"--tls-key {tmp_path}/nope.pem: no such"),
    ]
    for config, text in cases:
        with pytest.raises(ValueError, match=text):
            make_server(load=False, **{name: str(path) for name, path in config.items()})
    assert make_server(load=False, **{name: str(path) for name, path in good.items()}).port
