"""The documented TLS path, as a user runs it: certificates, controller, operator CLI, agent.

``corral certs init`` and ``issue``; ``corral-controller serve`` with the three
TLS flags on 127.0.0.1; ``corral image register`` and ``corral group create``
over mutual TLS with an operator certificate; ``corral-agent run --once`` with
the instance's certificate reports conformant. A CLI without a certificate, and
an agent reporting under another instance's name, get nowhere. Every command
here is the one docs/security.md shows.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent


def _program(name: str) -> str:
    path = BIN / name
    if not path.exists():
        pytest.skip(f"{name} is not installed in the venv (pip install -e .)")
    return str(path)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _env(**values: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CORRAL_")}
    env.update(values)
    return env


def _run(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, check=False)


@pytest.fixture
def controller(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """Certificates in ``tmp_path``, and a TLS controller serving 127.0.0.1:PORT."""
    corral = _program("corral")
    ca, tls = tmp_path / "ca", tmp_path / "tls"
    for argv in (
        [corral, "certs", "init", str(ca)],
        [corral, "certs", "issue", "--dir", str(ca), "--role", "controller", "--name", "ctl-1",
         "--out", str(tls)],
        [corral, "certs", "issue", "--dir", str(ca), "--role", "operator", "--name", "alice",
         "--days", "1", "--out", str(tmp_path / "alice")],
        [corral, "certs", "issue", "--dir", str(ca), "--role", "agent", "--name", "i-1",
         "--out", str(tmp_path / "i-1")],
    ):  # fmt: skip
        result = _run(argv, _env())
        assert result.returncode == 0, result.stderr
    address = f"127.0.0.1:{_free_port()}"
    log = (tmp_path / "controller.log").open("wb")
    process = subprocess.Popen(
        [_program("corral-controller"), "serve", "--listen", address,
         "--data-dir", str(tmp_path / "data"), "--metrics-listen", "",
         "--tls-ca", str(tls / "ca.pem"), "--tls-cert", str(tls / "controller-ctl-1.chain.crt"),
         "--tls-key", str(tls / "controller-ctl-1.key")],
        env=_env(), stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        yield address, tmp_path
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        log.close()


def _operator(home: Path) -> dict[str, str]:
    alice = home / "alice"
    return _env(
        CORRAL_CLIENT_TLS_CA_FILE=str(alice / "ca.pem"),
        CORRAL_CLIENT_TLS_CERT_FILE=str(alice / "operator-alice.chain.crt"),
        CORRAL_CLIENT_TLS_KEY_FILE=str(alice / "operator-alice.key"),
    )


def _wait_until_serving(corral: str, address: str, env: dict[str, str]) -> None:
    deadline = time.monotonic() + 20
    while True:
        result = _run([corral, "image", "list", "--controller", address, "--timeout", "2"], env)
        if result.returncode == 0:
            return
        assert time.monotonic() < deadline, result.stderr
        time.sleep(0.2)


def test_the_documented_tls_path_runs_end_to_end(controller: tuple[str, Path]) -> None:
    address, home = controller
    corral = _program("corral")
    root = home / "rootfs"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "app.conf").write_text("port = 80\n")
    (root / "usr" / "bin").mkdir(parents=True)
    (root / "usr" / "bin" / "app").write_text("#!/bin/sh\necho app\n")
    image = home / "image"
    baked = _run(
        [corral, "bake", str(root), "--out", str(image), "--name", "web", "--version", "1"], _env()
    )
    assert baked.returncode == 0, baked.stderr
    ref = json.loads((image / "image.json").read_text())["image_ref"]

    operator = _operator(home)
    _wait_until_serving(corral, address, operator)
    for argv in (
        [corral, "image", "register", str(image), "--controller", address],
        [corral, "group", "create", "web", "--image", ref, "--controller", address],
    ):
        result = _run(argv, operator)
        assert result.returncode == 0, result.stderr

    i1 = home / "i-1"
    agent_env = _env(
        CORRAL_AGENT_TLS_CA_FILE=str(i1 / "ca.pem"),
        CORRAL_AGENT_TLS_CERT_FILE=str(i1 / "agent-i-1.chain.crt"),
        CORRAL_AGENT_TLS_KEY_FILE=str(i1 / "agent-i-1.key"),
    )
    image_json = str(image / "image.json")
    agent = [_program("corral-agent"), "run", "--once", "--controller", address,
             "--root", str(root), "--image-json", image_json, "--group", "web"]  # fmt: skip
    ran = _run([*agent, "--instance-id", "i-1", "--data-dir", str(home / "s1")], agent_env)
    assert ran.returncode == 0, ran.stderr[-2000:]
    # The same certificate cannot speak for another instance (the agent logs the
    # refusal and drops the report: resending it cannot help).
    other = _run([*agent, "--instance-id", "i-2", "--data-dir", str(home / "s2")], agent_env)
    assert "PERMISSION_DENIED" in other.stdout + other.stderr
    assert other.returncode == 1  # --once says the report was refused

    shown = _run([corral, "fleet", "list", "--json", "--controller", address], operator)
    assert shown.returncode == 0, shown.stderr
    states = {i["id"]: i["state"] for i in json.loads(shown.stdout)}
    assert states == {"i-1": "conformant"}

    # Without a client certificate the handshake fails: the CLI says "unavailable" (69).
    anonymous = _run(
        [corral, "fleet", "list", "--controller", address, "--timeout", "2",
         "--tls-ca", str(home / "alice" / "ca.pem")],
        _env(),
    )  # fmt: skip
    assert anonymous.returncode == 2  # CA alone is a partial set: refused before dialling
    plaintext = _run([corral, "fleet", "list", "--controller", address, "--timeout", "2"], _env())
    assert plaintext.returncode == 69
