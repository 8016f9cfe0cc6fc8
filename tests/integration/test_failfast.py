"""A member that reaches something other than its coordinator says so in one line, in seconds.

Real processes (`fedlora status` as a member runs it), real sockets: a plain TCP listener that
never answers, an HTTP server, and a port where nothing listens. gRPC's own log lines stay out
of the output unless --debug.
"""

from __future__ import annotations

import http.server
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.helpers import prepare_federation

BITS = 512


@pytest.fixture(scope="module")
def member(tmp_path_factory) -> Path:  # type: ignore[no-untyped-def]
    layout = prepare_federation(tmp_path_factory.mktemp("fed"), bits=BITS, rounds=1)
    return Path(layout.client_configs["bank-a"])


def _status(config: Path, port: int, *extra: str) -> tuple[subprocess.CompletedProcess[str], float]:
    probe = config.with_name(f"probe-{port}.yaml")
    probe.write_text(
        re.sub(r"address: \S+", f"address: 127.0.0.1:{port}", config.read_text(), count=1)
    )
    # As an operator's shell runs it: no gRPC verbosity left behind by an in-process CLI test.
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRPC_")}
    started = time.monotonic()
    out = subprocess.run(
        [sys.executable, "-m", "fedlora", *extra, "status", "--config", str(probe)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    return out, time.monotonic() - started


@pytest.fixture()
def silent_tcp() -> Iterator[int]:
    """Accepts connections, reads, never answers (a database port, a stuck proxy)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                held.append(server.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    yield server.getsockname()[1]
    server.close()
    for conn in held:
        conn.close()


@pytest.fixture()
def http_server() -> Iterator[int]:
    class Quiet(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:  # type: ignore[no-untyped-def]
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()


def _one_line(out: subprocess.CompletedProcess[str]) -> str:
    said = [line for line in out.stderr.splitlines() if line.startswith("fedlora: error: ")]
    assert len(said) == 1, out.stdout + out.stderr
    # Nothing from gRPC's C core (its lines carry a source file, e.g. ssl_transport_security.cc).
    assert ".cc:" not in out.stderr and "Traceback" not in out.stderr, out.stderr
    return said[0]


def test_a_plain_tcp_listener_is_named_within_seconds(member, silent_tcp) -> None:
    out, took = _status(member, silent_tcp)
    assert out.returncode == 2 and took < 10, (took, out.stdout, out.stderr)
    assert "accepts TCP connections but never answers the TLS handshake" in _one_line(out)
    assert "kept here: none yet" in out.stdout  # what the member keeps is still shown


def test_an_http_server_is_named_within_seconds(member, http_server) -> None:
    out, took = _status(member, http_server)
    assert out.returncode == 2 and took < 10, (took, out.stdout, out.stderr)
    assert "is an HTTP server, not a fedlora coordinator" in _one_line(out)


def test_status_answers_within_seconds_when_the_coordinator_is_down(member) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out, took = _status(member, port)
    assert out.returncode == 2 and took < 12, (took, out.stdout, out.stderr)
    assert "nothing is listening on" in _one_line(out)


def test_grpc_lines_show_with_debug_only(member, http_server) -> None:
    out, _ = _status(member, http_server, "--debug")
    assert "Handshake failed" in out.stderr  # gRPC's own account, for whoever asked for it
