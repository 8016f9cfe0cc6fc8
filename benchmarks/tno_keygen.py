"""TNO's dealer-free threshold Paillier key generation, timed, for comparison with fedlora's.

Runs ``tno.mpc.protocols.distributed_keygen`` (TNO PET Lab; Apache License 2.0, per its package
metadata) as a deployment would: N parties, each its own Python process with its own
``tno.mpc.communication.Pool``, over HTTP on free ports of 127.0.0.1. It waits until every party
has imported the package and listens, tells all to start, and times one key generation. Then the
key is checked: one party encrypts a random number and broadcasts it, all parties run TNO's
distributed decryption and must get the number back (and hold the same public key). Its own
virtualenv, nothing from fedlora (the utils pin: 0.16 needs tno.mpc.communication 5, which
distributed_keygen 4.3.0 excludes, and the import fails; [gmpy] is TNO's recommended speed-up):

    python3 -m venv /tmp/tno-venv
    /tmp/tno-venv/bin/pip install 'tno.mpc.protocols.distributed_keygen[gmpy]==4.3.0' \
        'tno.mpc.encryption_schemes.utils[gmpy]<0.16'
    /tmp/tno-venv/bin/python benchmarks/tno_keygen.py --parties 3 --bits 1024

The time runs from "go" (all parties up) to the last party holding its key: no interpreter
start-up, no check, like the ceremony time in keygen_bench.py. It is geometric in the number of
rounds (100 candidate pairs each, printed with the time per round): one run says little.
Security parameters are the package's defaults (printed). Last line: ``tno keygen: <S>s (<N>
parties, <B> bits)``, ``tno keygen: did not finish in <S>s (...)`` or ``tno keygen: failed: ...``.

Thresholds: TNO's ``corruption_threshold`` τ is how many colluding parties learn nothing, with
N ≥ 2τ + 1; fedlora's t-of-N (any t decrypt, t − 1 learn nothing) needs N ≥ 2t − 1. Default
τ = t − 1 for keygen_bench's t = max(2, ⌈N/2⌉), i.e. τ = max(1, (N − 1) // 2): the same collusion
bound. But TNO's key is shared with degree 2τ and its decryption combines parties 1..2τ + 1, so
with N = 2τ + 1 (3 parties, τ = 1) all parties must decrypt, where fedlora's 2-of-3 needs two.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import hashlib
import json
import logging
import os
import queue
import re
import secrets
import socket
import subprocess
import sys
import threading
import time
import warnings
from typing import Any

PKG = "tno.mpc.protocols.distributed_keygen"


def default_threshold(parties: int) -> int:
    """τ for fedlora's benchmark default t = max(2, ⌈N/2⌉): τ = t − 1."""
    return max(2, (parties + 1) // 2) - 1


# --------------------------------------------------------------------------------------------
# One party (a child process)
# --------------------------------------------------------------------------------------------


def emit(kind: str, **data: Any) -> None:
    """One line to the coordinating process."""
    sys.stdout.write(json.dumps({"kind": kind, **data}) + "\n")
    sys.stdout.flush()


class _Counter(logging.Handler):
    """Picks up the package's own end-of-keygen log lines (rounds, candidates)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.stats: dict[str, int] = {}

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        if m := re.search(r"Checked (\d+) primes for small prime divisors in (\d+) rounds", msg):
            self.stats["small_prime_rejects"] = int(m[1])
            self.stats["rounds"] = int(m[2])
        elif m := re.search(r"Checked (\d+) candidates for biprimality", msg):
            self.stats["biprimality_rejects"] = int(m[1])


async def party(args: argparse.Namespace) -> None:
    from tno.mpc.communication import Pool
    from tno.mpc.protocols.distributed_keygen import DistributedPaillier

    warnings.simplefilter("ignore")  # key length < 1024, ciphertext re-randomised on sending
    counter = _Counter()
    log = logging.getLogger(PKG)
    log.setLevel(logging.INFO)
    log.addHandler(counter)

    ports = [int(p) for p in args.ports.split(",")]
    me = args.party
    pool = Pool()
    pool.add_http_server(ports[me], addr="127.0.0.1")
    for j, port in enumerate(ports):
        if j != me:
            pool.add_http_client(f"party{j}", "127.0.0.1", port)
    assert pool.http_server is not None
    await pool.http_server.server_task  # returns once the server listens
    emit("ready")

    if (await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)) != "go\n":
        return
    started = time.perf_counter()
    scheme = await DistributedPaillier.from_security_parameter(
        pool,
        args.threshold,
        args.bits,
        DistributedPaillier.default_prime_threshold,
        DistributedPaillier.default_biprime_param,
        DistributedPaillier.default_sec_shamir,
        distributed=True,
    )
    seconds = time.perf_counter() - started
    n = scheme.public_key.n
    sent = sum(h.total_bytes_sent for h in pool.pool_handlers.values())
    emit(
        "keygen",
        seconds=seconds,
        index=scheme.index,
        n_bits=n.bit_length(),
        n_sha256=hashlib.sha256(str(n).encode()).hexdigest()[:16],
        key_degree=scheme.secret_key.share.degree,
        mb_sent=sent / 1e6,
        **counter.stats,
    )

    # The check: party 0 encrypts, broadcasts the same ciphertext to all, everyone decrypts.
    if me == 0:
        ciphertext = scheme.encrypt(args.value)
        await pool.broadcast(ciphertext, msg_id="bench_check")
    else:
        ciphertext = await pool.recv("party0", msg_id="bench_check")
    started = time.perf_counter()
    plaintext = await scheme.decrypt(ciphertext)
    emit("decrypted", value=int(plaintext), seconds=time.perf_counter() - started)

    # Nobody leaves before everyone has its decryption (its partial may still be in flight).
    await pool.broadcast("bye", msg_id="bench_bye")
    await pool.recv_all(msg_id="bench_bye")
    await pool.shutdown()


# --------------------------------------------------------------------------------------------
# The coordinating process
# --------------------------------------------------------------------------------------------


def free_ports(count: int) -> list[int]:
    """Ports the OS hands out now (released again just before the parties bind them)."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def read_lines(i: int, proc: subprocess.Popen[str], out: queue.Queue[tuple[int, Any]]) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        with contextlib.suppress(ValueError):
            out.put((i, json.loads(line)))
    out.put((i, None))  # the party's stdout closed


class Failed(Exception):
    pass


class TimedOut(Exception):
    pass


def coordinate(args: argparse.Namespace) -> str:
    label = f"({args.parties} parties, {args.bits} bits)"
    from importlib.metadata import metadata, version

    from tno.mpc.encryption_schemes.utils import USE_GMPY2
    from tno.mpc.protocols.distributed_keygen import DistributedPaillier as DP

    meta = metadata(PKG)
    print(
        f"{PKG} {version(PKG)} ({meta['License']}); tno.mpc.communication "
        f"{version('tno.mpc.communication')}; gmpy2: {'yes' if USE_GMPY2 else 'no'}"
    )
    print(
        f"parties {args.parties} (one process each, HTTP on 127.0.0.1), corruption_threshold "
        f"τ={args.threshold} (≤{args.threshold} colluding learn nothing; decryption combines "
        f"parties 1..{2 * args.threshold + 1}), key_length {args.bits}, prime_threshold "
        f"{DP.default_prime_threshold}, correct_param_biprime {DP.default_biprime_param}, "
        f"stat_sec_shamir {DP.default_sec_shamir}, batch_size 100 (package defaults)"
    )
    if args.parties < 2 * args.threshold + 1:
        return (
            f"tno keygen: failed: needs parties ≥ 2τ+1 ({args.parties} < {2 * args.threshold + 1})"
        )

    value = secrets.randbelow(2**62)
    ports = free_ports(args.parties)
    lines: queue.Queue[tuple[int, Any]] = queue.Queue()
    procs: list[subprocess.Popen[str]] = []
    stderr: list[collections.deque[str]] = []
    readers: list[threading.Thread] = []
    try:
        for i in range(args.parties):
            cmd = [sys.executable, os.path.abspath(__file__), "--party", str(i)]
            cmd += ["--ports", ",".join(map(str, ports)), "--bits", str(args.bits)]
            cmd += ["--threshold", str(args.threshold), "--value", str(value)]
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            procs.append(proc)
            stderr.append(collections.deque(maxlen=3))
            threading.Thread(target=read_lines, args=(i, proc, lines), daemon=True).start()
            readers.append(threading.Thread(target=stderr[i].extend, args=(proc.stderr,)))
            readers[i].daemon = True
            readers[i].start()

        def wait_all(kind: str, deadline: float) -> dict[int, tuple[float, dict[str, Any]]]:
            got: dict[int, tuple[float, dict[str, Any]]] = {}
            while len(got) < args.parties:
                left = deadline - time.perf_counter()
                try:
                    i, msg = lines.get(timeout=max(left, 0.01))
                except queue.Empty:
                    raise TimedOut from None
                if msg is None and i in got:  # said what was asked, then left
                    continue
                if msg is None:
                    procs[i].wait(10)
                    readers[i].join(5)
                    tail = [line.strip() for line in stderr[i]]
                    raise Failed(f"party {i} exited ({procs[i].returncode}): {' | '.join(tail)}")
                if msg["kind"] == kind:
                    got[i] = (time.perf_counter(), msg)
            return got

        try:
            wait_all("ready", time.perf_counter() + 120)  # imports and servers
        except TimedOut:
            return "tno keygen: failed: the parties did not start within 120s"
        go = time.perf_counter()
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        try:
            keys = wait_all("keygen", go + args.timeout)
        except TimedOut:
            return f"tno keygen: did not finish in {args.timeout}s {label}"
        seconds = max(t for t, _ in keys.values()) - go
        info = [m for _, m in sorted(keys.values(), key=lambda x: x[1]["index"])]
        if len({m["n_sha256"] for m in info}) != 1:
            return "tno keygen: failed: the parties hold different public keys"
        first = info[0]
        rounds = first.get("rounds", "?")
        per_round = f"{seconds / rounds:.2f}s" if isinstance(rounds, int) else "?"
        print(
            f"key: N of {first['n_bits']} bits; secret-key sharing of degree "
            f"{first['key_degree']}; {rounds} rounds of 100 candidate pairs, {per_round} per round "
            f"({first.get('small_prime_rejects', '?')} failed the small-prime sieve, "
            f"{first.get('biprimality_rejects', '?')} the biprimality test); "
            f"MB sent per party: {', '.join(format(m['mb_sent'], '.1f') for m in info)}"
        )
        print(
            "per-party keygen time (from its own start): "
            + ", ".join(f"{m['seconds']:.1f}s" for m in info)
        )
        try:
            dec = wait_all("decrypted", time.perf_counter() + 300)
        except TimedOut:
            return (
                f"tno keygen: failed: the key generated in {seconds:.1f}s did not decrypt in 300s"
            )
        wrong = [m["value"] for _, m in dec.values() if m["value"] != value]
        if wrong:
            return f"tno keygen: failed: decryption check: got {wrong[0]}, encrypted {value}"
        print(
            f"check: {value} encrypted by one party, decrypted by all {args.parties} "
            f"({max(m['seconds'] for _, m in dec.values()):.2f}s)"
        )
        return f"tno keygen: {seconds:.1f}s {label}"
    except Failed as e:
        return f"tno keygen: failed: {e}"
    finally:
        for proc in procs:
            with contextlib.suppress(Exception):
                proc.wait(5)
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--parties", type=int, default=3, help="number of parties N (default 3)")
    ap.add_argument("--bits", type=int, default=1024, help="modulus size (default 1024)")
    ap.add_argument(
        "--threshold",
        type=int,
        help="TNO corruption threshold τ (default max(1, (N-1)//2): fedlora's t-of-N with τ = t-1)",
    )
    ap.add_argument("--timeout", type=int, default=1800, help="give up after S s (default 1800)")
    ap.add_argument("--party", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--ports", help=argparse.SUPPRESS)
    ap.add_argument("--value", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.threshold is None:
        args.threshold = default_threshold(args.parties)
    if args.party is not None:
        asyncio.run(party(args))
        return 0
    try:
        line = coordinate(args)
    except Exception as e:  # the one line must come out
        line = f"tno keygen: failed: {type(e).__name__}: {e}"
    print(line, flush=True)
    return 0 if re.match(r"tno keygen: [\d.]+s", line) else 1


if __name__ == "__main__":
    sys.exit(main())
