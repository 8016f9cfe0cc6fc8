"""Proof-of-knowledge checks at the language-model scale: gmpy2's bucket method vs the IFMA kernel.

A contribution of 4.88 M LoRA values (SmolLM2-135M, r = 16 on every linear layer) is 47,844
ciphertexts under a 2048-bit key (16-bit values in 20-bit slots, 102 per ciphertext). The
coordinator checks each contribution's proof of plaintext knowledge at intake, and every share
holder checks all of a round's before it signs a ticket; each check is one multi-exponentiation
of the whole vector by 128-bit weights modulo n² (``fedlora.crypto.multi_powmods``). This script
times, side by side on this machine:

* one genuine contribution's full check (``verify_plaintext_knowledge``), on each backend;
* a round's batch of ``--contributions`` such multi-exponentiations (``multi_powmods``, as a
  holder runs them, :data:`fedlora.protocol._decryptor.PROOF_GROUP` at a time), on each backend.

Usage: python benchmarks/proof_bench.py [--ciphertexts 47844] [--contributions 10]
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import time

from fedlora.crypto import (
    DjnObfuscator,
    encrypt_and_prove,
    generate_threshold_key,
    make_backend,
    multi_powmods,
    verify_plaintext_knowledge,
)
from fedlora.crypto._ifma import load_kernel
from fedlora.protocol._decryptor import PROOF_GROUP


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ciphertexts", type=int, default=47_844)
    ap.add_argument("--contributions", type=int, default=10)
    ap.add_argument("--bits", type=int, default=2048)
    args = ap.parse_args()
    names = ["gmpy2"] + (["ifma"] if load_kernel() is not None else [])
    backends = {name: make_backend(name)[0] for name in names}
    print(
        f"# {platform.machine()}, {len(os.sched_getaffinity(0))} cores; {args.bits}-bit key; "
        f"{args.ciphertexts:,} ciphertexts per contribution; backends: {', '.join(names)}"
    )
    key = generate_threshold_key(args.bits, 2, ["a", "b", "c"]).public_key
    pk = key.paillier
    rng = random.Random(0)
    start = time.perf_counter()
    cts, proof = encrypt_and_prove(
        pk,
        [rng.getrandbits(args.bits - 48) for _ in range(args.ciphertexts)],
        context=b"bench",
        obfuscators=DjnObfuscator(pk),
        backend=backends[names[-1]],
    )
    took = time.perf_counter() - start
    print(f"# one genuine contribution (random plaintexts) encrypted and proven in {took:.1f} s")
    weights = [rng.getrandbits(128).to_bytes(16, "big") for _ in range(args.ciphertexts)]
    jobs = [([c * (i + 2) % pk.nsquare for c in cts], weights) for i in range(PROOF_GROUP)]
    rows: dict[str, tuple[float, float]] = {}
    expected = None
    for name, backend in backends.items():
        start = time.perf_counter()
        verify_plaintext_knowledge(pk, cts, proof, context=b"bench", backend=backend)
        one = time.perf_counter() - start
        start = time.perf_counter()
        products = []
        for first in range(0, args.contributions, PROOF_GROUP):
            group = jobs[: min(PROOF_GROUP, args.contributions - first)]
            products.extend(multi_powmods(group, pk.nsquare, backend))
        batch = time.perf_counter() - start
        if expected is None:
            expected = products
        assert products == expected, f"{name} disagrees with gmpy2"
        rows[name] = (one, batch)
    print()
    print(f"| check | {' | '.join(names)} | ratio |")
    print(f"|---|{'---:|' * len(names)}---:|")
    base = rows["gmpy2"]
    last = rows[names[-1]]
    print(
        f"| one contribution's proof of knowledge (s) | "
        f"{' | '.join(f'{rows[n][0]:.2f}' for n in names)} | {base[0] / last[0]:.1f}x |"
    )
    print(
        f"| a round's {args.contributions} proofs, batched (s) | "
        f"{' | '.join(f'{rows[n][1]:.2f}' for n in names)} | {base[1] / last[1]:.1f}x |"
    )


if __name__ == "__main__":
    main()
