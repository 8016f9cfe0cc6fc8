"""How threshold partial decryption scales with cores.

gmpy2's ``powmod_base_list`` releases the GIL, so fedlora spreads partial decryption over plain
threads. This prints throughput (ciphertexts per second) for 1, 2, 4, … workers up to the number
of cores, next to the raw gmpy2 floor at the same thread count.

Usage: python benchmarks/scaling.py [--bits 2048] [--ciphertexts 2048]
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import time

from fedlora.crypto import (
    ThreadsBackend,
    default_workers,
    encrypt_batch,
    generate_threshold_key,
    partial_decrypt,
)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--bits", type=int, default=2048)
    ap.add_argument("--ciphertexts", type=int, default=2048)
    args = ap.parse_args()
    cores = default_workers()
    dealt = generate_threshold_key(args.bits, 3, ["a", "b", "c", "d", "e"])
    key, share = dealt.public_key, dealt.shares[0]
    cts = encrypt_batch(key.paillier, [random.randrange(key.n) for _ in range(args.ciphertexts)])
    exponent = 2 * key.delta * share.secret
    print(
        f"# {platform.machine()}, {os.cpu_count()} cores, {args.bits}-bit key, {args.ciphertexts} ciphertexts"
    )
    print(
        "| workers | raw gmpy2 (ct/s) | fedlora partial decrypt with proof (ct/s) | fedlora / raw | speedup vs 1 worker |"
    )
    print("|---:|---:|---:|---:|---:|")
    counts = sorted({1 << i for i in range(cores.bit_length()) if 1 << i <= cores} | {cores})
    base = None
    for workers in counts:
        t = time.perf_counter()
        ThreadsBackend(workers).powmod_bases(cts, exponent, key.nsquare)
        raw = args.ciphertexts / (time.perf_counter() - t)
        t = time.perf_counter()
        partial_decrypt(key, share, cts, backend=ThreadsBackend(workers))
        ours = args.ciphertexts / (time.perf_counter() - t)
        base = base or ours
        print(
            f"| {workers} | {raw:,.0f} | {ours:,.0f} | {ours / raw:.0%} | {ours / base:.1f}x |",
            flush=True,
        )


if __name__ == "__main__":
    main()
