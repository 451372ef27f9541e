"""The committed generated code matches the .proto, and buf lint passes."""

from __future__ import annotations

import filecmp
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROTO = "impasto/v1/style_transfer.proto"
GENERATED = ("style_transfer_pb2.py", "style_transfer_pb2.pyi", "style_transfer_pb2_grpc.py")


def test_generated_code_is_fresh(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", f"-I{ROOT / 'proto'}", f"--python_out={tmp_path}",
         f"--pyi_out={tmp_path}", f"--grpc_python_out={tmp_path}", str(ROOT / "proto" / PROTO)],
        check=True,
    )  # fmt: skip
    stale = [
        name
        for name in GENERATED
        if not filecmp.cmp(tmp_path / "impasto/v1" / name, ROOT / "proto/impasto/v1" / name, False)
    ]
    assert not stale, f"regenerate {stale} (see docs/server.md)"


def _buf() -> str | None:
    for candidate in (
        os.environ.get("BUF"),
        ROOT / "node_modules/.bin/buf",
        shutil.which("buf"),
    ):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def test_buf_lint():
    buf = _buf()
    if buf is None:
        pytest.skip("no buf binary: run `npm ci` at the repository root (installs @bufbuild/buf)")
    run = subprocess.run([buf, "lint"], check=False, cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


def test_every_message_field_and_rpc_has_a_comment():
    text = (ROOT / "proto" / PROTO).read_text().splitlines()
    missing = []
    for index, line in enumerate(text):
        stripped = line.strip()
        declares = stripped.startswith(("message ", "enum ", "rpc ", "service ", "oneof ")) or (
            stripped.endswith(";") and "=" in stripped and not stripped.startswith(("//", "option"))
        )
        if declares and index and not text[index - 1].strip().startswith("//"):
            missing.append(stripped)
    assert not missing


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout.strip()


def test_no_breaking_change_against_any_earlier_version():
    """Clients in other languages build on the .proto: each version in the history must still
    read as compatible (buf's FILE rules: no field, enum value or RPC removed, renumbered or
    retyped), whatever this change brings."""
    buf = _buf()
    if buf is None:
        pytest.skip("no buf binary: run `npm ci` at the repository root (installs @bufbuild/buf)")
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout: no earlier versions to compare with")
    try:
        shallow = _git("rev-parse", "--is-shallow-repository") == "true"
    except subprocess.CalledProcessError as error:  # say, a checkout git calls dubious
        pytest.skip(f"git cannot read this checkout: {error.stderr.strip()}")
    if shallow:
        pytest.skip("a shallow clone lacks the earlier versions: git fetch --unshallow")
    depth = _git("rev-list", "--count", "HEAD")
    versions: dict[str, str] = {}  # the file's content (blob) -> a commit that has it
    for commit in _git("log", "--format=%H", "--", f"proto/{PROTO}").split():
        versions.setdefault(_git("rev-parse", f"{commit}:proto/{PROTO}"), commit)
    assert versions, "the .proto has no history"
    broken = []
    for commit in versions.values():
        run = subprocess.run(
            [buf, "breaking", "--against", f".git#ref={commit},depth={depth}"],
            check=False, cwd=ROOT, capture_output=True, text=True,
        )  # fmt: skip
        if run.returncode != 0:
            broken.append(f"against {commit[:10]}: {run.stdout}{run.stderr}")
    assert not broken, "\n".join(broken)
