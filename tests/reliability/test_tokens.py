"""Bearer tokens: missing, wrong, expired and revoked tokens are refused; the token file is
re-read without a restart; one token's jobs share one per-client limit; a plain-text client
cannot talk to a TLS server."""

from __future__ import annotations

import datetime
import os
import time

import grpc
import pytest
from impasto.client import Client, ImpastoError, Queued, Started
from job_watch import LONG, SHORT, Watcher, wait_until


def _write(path, text: str) -> None:
    # Replace atomically (as an operator's editor or a secrets manager would) and make sure the
    # change is visible even on file systems with coarse timestamps.
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    stamp = time.time_ns() + 1_000_000_000
    os.utime(tmp, ns=(stamp, stamp))
    tmp.replace(path)


def _refusal(client: Client, content, style) -> ImpastoError:
    with pytest.raises(ImpastoError) as info:
        client.stylize(content, [style], **SHORT).result()
    return info.value


def test_missing_wrong_expired_and_revoked_tokens(make_server, tmp_path, tiny_content, tiny_style):
    past = (datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=1)).isoformat()
    future = (datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=1)).isoformat()
    tokens = tmp_path / "tokens"
    _write(tokens, f"# lab\nalice expires={future}\nbob\nold expires={past}\n")
    server = make_server(token_file=str(tokens))
    cases = {None: "required", "mallory": "not valid", "old": "expired"}
    for token, words in cases.items():
        with Client(server.address, token=token) as client:
            assert client.health() == "SERVING"  # probes stay open
            error = _refusal(client, tiny_content, tiny_style)
            assert error.code == grpc.StatusCode.UNAUTHENTICATED and words in error.message
    with Client(server.address, token="alice") as alice, Client(server.address, token="bob") as bob:
        assert alice.stylize(tiny_content, [tiny_style], **SHORT).result().iterations == 2
        assert bob.stylize(tiny_content, [tiny_style], **SHORT).result().iterations == 2
        # Revoke bob, let carol in, expire alice: no restart.
        _write(tokens, f"alice expires={past}\ncarol\n")
        assert "not valid" in _refusal(bob, tiny_content, tiny_style).message
        assert "expired" in _refusal(alice, tiny_content, tiny_style).message
    with Client(server.address, token="carol") as carol:
        assert carol.stylize(tiny_content, [tiny_style], **SHORT).result().iterations == 2
        # An emptied file lets nobody in; a missing file keeps the last tokens read.
        _write(tokens, "# everyone revoked\n")
        assert "not valid" in _refusal(carol, tiny_content, tiny_style).message
        _write(tokens, "carol\n")
        assert carol.stylize(tiny_content, [tiny_style], **SHORT).result().iterations == 2
        tokens.unlink()
        assert carol.stylize(tiny_content, [tiny_style], **SHORT).result().iterations == 2


def test_one_token_is_one_client_however_many_connections(make_server, tmp_path, tiny_content,
                                                          tiny_style):  # fmt: skip
    tokens = tmp_path / "tokens"
    _write(tokens, "greedy\nmodest\n")
    server = make_server(token_file=str(tokens), max_jobs_per_client=2, queue_size=8)
    connections = [Client(server.address, token="greedy") for _ in range(3)]
    readers: list[Watcher] = []
    try:
        readers = [Watcher(c.stylize(tiny_content, [tiny_style], **LONG)) for c in connections[:2]]
        # Both of greedy's jobs are admitted (one runs, one waits) before the third asks;
        # which connection's request arrives first is up to the network.
        wait_until(lambda: sum(r.has(Started) for r in readers) == 1)
        wait_until(lambda: any(r.has(Queued) and not r.has(Started) for r in readers))
        error = _refusal(connections[2], tiny_content, tiny_style)
        assert error.code == grpc.StatusCode.RESOURCE_EXHAUSTED and "per-client" in error.message
        assert error.retry_after is not None
        with Client(server.address, token="modest") as modest:
            waiting = Watcher(modest.stylize(tiny_content, [tiny_style], **SHORT))
            waiting.wait_for(Queued)  # admitted although "greedy" has three connections
            for reader in readers:
                reader.job.cancel()
            assert waiting.done.wait(60) and waiting.error is None
    finally:
        for reader in readers:
            reader.job.cancel()
        for connection in connections:
            connection.close()


def test_plain_text_client_against_tls_server_is_refused_quickly(make_server, tmp_path):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .sign(key, hashes.SHA256())
    )
    (tmp_path / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    server = make_server(tls_cert=str(tmp_path / "cert.pem"), tls_key=str(tmp_path / "key.pem"))
    started = time.monotonic()
    with Client(server.address) as plain, pytest.raises(ImpastoError) as info:
        plain.server_info(timeout=3)
    assert info.value.code == grpc.StatusCode.UNAVAILABLE
    assert time.monotonic() - started < 3.5


def test_a_token_file_that_cannot_start_a_server_is_named(make_server, tmp_path):
    missing, empty = tmp_path / "missing.txt", tmp_path / "empty.txt"
    empty.write_text("# every token revoked\n")
    with pytest.raises(OSError, match=f"token file {missing}: No such file"):
        make_server(load=False, token_file=str(missing))
    with pytest.raises(ValueError, match=f"{empty} holds no tokens"):
        make_server(load=False, token_file=str(empty))
