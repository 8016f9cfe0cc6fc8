"""What the proof of plaintext knowledge costs, side by side with encryption, in one run.

Usage: .venv/bin/python benchmarks/knowledge_bench.py [--bits 2048] [--values 1048576]

Prints one table: encrypting a contribution from a warm obfuscator pool with and without the
proof, and verifying the proof (done by the coordinator at intake and by every share holder for
every contribution in the aggregate it checks).
"""

from __future__ import annotations

import argparse
import secrets
import time

from fedlora.crypto import (
    CodecParams,
    ObfuscatorPool,
    encrypt_and_prove,
    encrypt_batch,
    generate_threshold_key,
    verify_plaintext_knowledge,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bits", type=int, default=2048)
    parser.add_argument("--values", type=int, default=1 << 20)
    args = parser.parse_args()
    key = generate_threshold_key(args.bits, 3, ["a", "b", "c", "d", "e"]).public_key
    pk = key.paillier
    codec = CodecParams(clip=0.05, value_bits=16, max_total_weight=10, key_bits=args.bits)
    count = codec.ciphertexts_for(args.values)
    plaintexts = [secrets.randbits(args.bits - 8) for _ in range(count)]
    pool = ObfuscatorPool(pk, capacity=2 * count)
    pool.fill()
    t = time.perf_counter()
    encrypt_batch(pk, plaintexts, obfuscators=pool)
    plain = time.perf_counter() - t
    t = time.perf_counter()
    cts, proof = encrypt_and_prove(pk, plaintexts, context=b"bench", obfuscators=pool)
    proven = time.perf_counter() - t
    t = time.perf_counter()
    verify_plaintext_knowledge(pk, cts, proof, context=b"bench")
    verify = time.perf_counter() - t
    pool.close()
    print(f"{args.values:,} values = {count:,} ciphertexts, {args.bits}-bit key, warm pool\n")
    print("| step | seconds |")
    print("|---|---:|")
    print(f"| encrypt | {plain:.2f} |")
    print(f"| encrypt and prove plaintext knowledge | {proven:.2f} |")
    print(f"| verify the proof (per contribution) | {verify:.2f} |")
    print(f"\nproof size: {len(proof.to_bytes(pk)):,} bytes")


if __name__ == "__main__":
    main()
