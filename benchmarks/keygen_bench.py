"""Key generation without a dealer: ℓ holders in separate processes, 2048 bits, several runs.

Each holder is its own process running :func:`fedlora.crypto._keygen.run_party`, the same code
the ceremony runs; the messages of every round go through pipes to a hub in this process, which
routes them (as the coordinator will relay them). Not yet included: the ceremony's signing and
end-to-end encryption of each message and its network relay (issue 21's next step) — so these
figures are the arithmetic and the message volume, on one machine's cores.

Every generated key is checked before it counts: encrypt, three proven partial decryptions from
two different holder subsets, combine. Prints one line per run, then ``keygen median: <S>s``.

    .venv/bin/python benchmarks/keygen_bench.py                       # 5 holders, 3-of-5, 2048 bits, 10 runs
    .venv/bin/python benchmarks/keygen_bench.py --bits 1024 --runs 3
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import sys
import time
from multiprocessing.connection import Connection
from typing import Any

from rich.console import Console
from rich.table import Table

from fedlora.crypto import combine_partial_decryptions, encrypt_batch, partial_decrypt
from fedlora.crypto._keygen import KeygenParams, PartyResult, run_party


def _holder(params: KeygenParams, index: int, conn: Connection) -> None:
    def exchange(outgoing: Any) -> Any:
        conn.send(("round", dict(outgoing)))
        return conn.recv()

    try:
        conn.send(("done", run_party(params, index, exchange)))
    except BaseException as exc:  # reported by the hub, which stops the others
        conn.send(("failed", f"{type(exc).__name__}: {exc}"))


def generate(params: KeygenParams) -> tuple[list[PartyResult], int, int]:
    """One generation with every holder in its own process; returns the holders' results, the
    rounds of messages and the bytes the hub routed (pickled)."""
    ctx = mp.get_context("spawn")  # a fresh interpreter per holder, as on separate machines
    pipes = {i: ctx.Pipe() for i in range(1, params.ell + 1)}
    procs = [ctx.Process(target=_holder, args=(params, i, pipes[i][1]), daemon=True) for i in pipes]
    for p in procs:
        p.start()
    results: dict[int, PartyResult] = {}
    rounds = routed = 0
    try:
        while len(results) < params.ell:
            outboxes: dict[int, dict[int, Any]] = {}
            for i, (hub, _) in pipes.items():
                if i in results:
                    continue
                kind, payload = hub.recv()
                if kind == "failed":
                    raise RuntimeError(f"holder {i}: {payload}")
                if kind == "done":
                    results[i] = payload
                else:
                    outboxes[i] = payload
            if not outboxes:
                continue
            if len(outboxes) != params.ell:
                raise RuntimeError("holders disagree on the rounds of the protocol")
            rounds += 1
            for j, (hub, _) in pipes.items():
                incoming = {i: box[j] for i, box in outboxes.items() if j in box}
                routed += sum(len(_pickled(v)) for v in incoming.values())
                hub.send(incoming)
    finally:
        for p in procs:
            p.join(timeout=5)
            if p.is_alive():
                p.terminate()
    return [results[i] for i in sorted(results)], rounds, routed


def _pickled(value: Any) -> bytes:
    import pickle

    return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)


def check(results: list[PartyResult]) -> None:
    """The holders agree on one key, and two different t-subsets decrypt with it."""
    key = results[0].public_key
    if any(r.public_key != key for r in results):
        raise RuntimeError("the holders computed different public keys")
    values = [7, 1234567, key.n - 2]
    cts = encrypt_batch(key.paillier, values)
    t = key.threshold
    for subset in (results[:t], results[-t:]):
        partials = [partial_decrypt(key, r.share, cts) for r in subset]
        if combine_partial_decryptions(key, cts, partials) != values:
            raise RuntimeError("a generated key did not decrypt")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--parties", type=int, default=5)
    ap.add_argument("--threshold", type=int, default=3)
    ap.add_argument("--bits", type=int, default=2048)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--batch", type=int, default=2048)
    args = ap.parse_args()
    console = Console()
    ids = tuple(f"holder-{i}" for i in range(1, args.parties + 1))
    table = Table(
        title=(
            f"key generation without a dealer: {args.parties} holders (processes), "
            f"{args.threshold}-of-{args.parties}, {args.bits} bits, {os.cpu_count()} cores"
        )
    )
    for column in ("run", "seconds", "candidate pairs", "biprimality tests", "rounds", "MB routed"):
        table.add_column(column, justify="right")
    times = []
    for run in range(1, args.runs + 1):
        params = KeygenParams(
            parties=ids,
            threshold=args.threshold,
            bits=args.bits,
            batch=args.batch,
            session=f"bench-{run}-{time.time_ns()}".encode(),
        )
        started = time.monotonic()
        results, rounds, routed = generate(params)
        elapsed = time.monotonic() - started
        check(results)
        times.append(elapsed)
        r = results[0]
        table.add_row(
            str(run),
            f"{elapsed:.1f}",
            f"{r.candidates:,}",
            f"{r.biprimality_tests:,}",
            str(rounds),
            f"{routed / 1e6:.1f}",
        )
        console.print(f"run {run}: {elapsed:.1f}s ({r.candidates:,} candidate pairs)")
    console.print(table)
    console.print(
        f"keygen median: {statistics.median(times):.1f}s  (worst {max(times):.1f}s, "
        f"best {min(times):.1f}s; without the ceremony's signing, encryption and relay)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
