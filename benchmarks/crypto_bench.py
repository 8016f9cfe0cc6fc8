"""Crypto pipeline benchmark: fedlora (packed, pooled, multi-core) vs naive per-value Paillier.

Measures, in one run on this machine, for one float32 vector per client and a 3-of-5 threshold
key: pack, encrypt (cold, DJN fixed-base, warm pool), aggregate, threshold partial decryption per
party, combine, unpack; bytes on the wire; and the same steps done naively — one phe ciphertext
per value, one core — timed on a sample and extrapolated (labelled as such). It also measures
the floor for partial decryption: raw gmpy2 ``powmod_base_list`` with the same exponent on all
cores, and prints how close fedlora's partial decryption (validation and proof included) gets.

Usage:
    python benchmarks/crypto_bench.py                      # the README table: 2048 bits, 2^20 values
    python benchmarks/crypto_bench.py --values 65536 --naive-sample 500   # a quick look

The last line is ``speedup vs naive per-value Paillier: <N>x``.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable
from typing import TypeVar

import gmpy2
import numpy as np
import phe

from fedlora.crypto import (
    CodecParams,
    DjnObfuscator,
    ObfuscatorPool,
    ThreadsBackend,
    add_ciphertext_vectors,
    ciphertext_width,
    combine_partial_decryptions,
    decode,
    encode,
    encrypt_batch,
    generate_threshold_key,
    partial_decrypt,
)

T = TypeVar("T")
PARTIES = ("bank-a", "bank-b", "hospital-c", "hospital-d", "hospital-e")


def timed(fn: Callable[[], T]) -> tuple[T, float]:
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--bits", type=int, default=2048)
    ap.add_argument("--values", type=int, default=1 << 20)
    ap.add_argument("--contributions", type=int, default=10)
    ap.add_argument("--value-bits", type=int, default=16)
    ap.add_argument("--naive-sample", type=int, default=2000)
    ap.add_argument(
        "--floor-sample", type=int, default=4096, help="ciphertexts for the raw-gmpy2 floor"
    )
    args = ap.parse_args()
    backend = ThreadsBackend()  # gmpy2 on every core: the default backend, made explicit here
    workers = backend.workers
    log = lambda msg: print(f"  … {msg}", flush=True)  # noqa: E731

    print(
        f"# fedlora crypto benchmark — {platform.machine()}, {os.cpu_count()} cores ({workers} used), "
        f"Python {platform.python_version()}, gmpy2 {gmpy2.version()}, phe {phe.__version__ if hasattr(phe, '__version__') else '1.5'}"
    )
    print(
        f"# {args.bits}-bit key, 3-of-5 threshold, {args.values:,} float32 values, "
        f"{args.value_bits}-bit values, {args.contributions} contributions\n",
        flush=True,
    )

    log("dealing the threshold key")
    dealt, t_keygen = timed(lambda: generate_threshold_key(args.bits, 3, PARTIES))
    key = dealt.public_key
    pk = key.paillier
    params = CodecParams(
        clip=1.0,
        value_bits=args.value_bits,
        max_total_weight=args.contributions,
        key_bits=args.bits,
    )
    rng = np.random.default_rng(7)
    vectors = [
        rng.normal(0, 0.3, args.values).astype(np.float32) for _ in range(args.contributions)
    ]

    rows: list[tuple[str, float, float | None]] = []  # step, fedlora seconds, naive seconds

    log("packing")
    packed = []
    pack_times = []
    for v in vectors:
        p, t = timed(lambda v=v: encode(v, params, rng=np.random.default_rng()))
        packed.append(p)
        pack_times.append(t)
    n_ct = len(packed[0])

    log(f"encrypting contribution 1 cold ({n_ct:,} ciphertexts, rⁿ on {workers} cores)")
    first, t_cold = timed(lambda: encrypt_batch(pk, packed[0], backend=backend))
    log("filling an obfuscator pool (the work a client does in the background while training)")
    pool = ObfuscatorPool(pk, capacity=n_ct, backend=backend)
    _, t_fill = timed(pool.fill)
    second, t_warm = timed(lambda: encrypt_batch(pk, packed[1], obfuscators=pool))
    pool.close()
    log("encrypting the other contributions with DJN fixed-base obfuscators")
    djn_times = []
    contributions = [first, second]
    for p in packed[2:]:
        c, t = timed(lambda p=p: encrypt_batch(pk, p, obfuscators=DjnObfuscator(pk)))
        contributions.append(c)
        djn_times.append(t)

    log("aggregating")

    def aggregate() -> list[int]:
        acc = contributions[0]
        for c in contributions[1:]:
            acc = add_ciphertext_vectors(pk, acc, c)
        return acc

    total, t_agg = timed(aggregate)

    partials = []
    partial_times = []
    for share in dealt.shares[:3]:
        log(f"partial decryption by {share.party_id}")
        p, t = timed(lambda share=share: partial_decrypt(key, share, total, backend=backend))
        partials.append(p)
        partial_times.append(t)
    t_partial = statistics.mean(partial_times)

    log("raw gmpy2 floor for partial decryption")
    sample = total[: min(args.floor_sample, n_ct)]
    exponent = 2 * key.delta * dealt.shares[0].secret
    # The floor is the backend's raw gmpy2 exponentiation on the same threads, nothing else.
    _, t_floor_sample = timed(lambda: backend.powmod_bases_secret(sample, exponent, key.nsquare))
    t_floor = t_floor_sample * n_ct / len(sample)
    _, t_one_core = timed(lambda: [gmpy2.powmod(c, exponent, key.nsquare) for c in sample[:256]])
    per_ct_one_core = t_one_core / min(256, len(sample))

    log("verifying proofs and combining")
    plain, t_combine = timed(
        lambda: combine_partial_decryptions(key, total, partials, backend=backend)
    )
    mean, t_unpack = timed(
        lambda: decode(plain, params, length=args.values, total_weight=args.contributions)
    )
    expected = np.mean([np.clip(v.astype(np.float64), -1, 1) for v in vectors], axis=0)
    error = float(np.max(np.abs(mean - expected)))
    assert error <= params.step, f"decoded mean off by {error} > one step {params.step}"

    # ---- naive per-value Paillier: phe, one ciphertext per value, one core -------------------
    k = args.naive_sample
    log(f"naive per-value phe on a sample of {k:,} values")
    sample_values = [float(x) for x in vectors[0][:k]]
    encoded, t_n_encode = timed(
        lambda: [
            phe.EncodedNumber.encode(pk, x, precision=2**-args.value_bits) for x in sample_values
        ]
    )
    enc, t_n_encrypt = timed(lambda: [pk.encrypt(e) for e in encoded])

    def naive_aggregate() -> list[phe.EncryptedNumber]:
        acc = list(enc)
        for _ in range(args.contributions - 1):
            acc = [a + b for a, b in zip(acc, enc)]
        return acc

    agg, t_n_agg = timed(naive_aggregate)
    raw = [a.ciphertext(be_secure=False) for a in agg]
    s = dealt.shares[0].secret
    n2 = key.nsquare
    naive_partials = {}
    t_n_partials = []
    for share in dealt.shares[:3]:
        e = 2 * key.delta * share.secret
        vals, t = timed(lambda e=e: [gmpy2.powmod(c, e, n2) for c in raw])
        naive_partials[share.index] = vals
        t_n_partials.append(t)
    del s
    from fedlora.crypto import integer_lagrange_at_zero

    def naive_combine() -> list[int]:
        lam = integer_lagrange_at_zero(list(naive_partials), key.parties)
        inv = gmpy2.invert(4 * key.delta**2, key.n)
        out = []
        for j in range(len(raw)):
            u = gmpy2.mpz(1)
            for i, vals in naive_partials.items():
                u = u * gmpy2.powmod(vals[j], 2 * lam[i], n2) % n2
            out.append(int((u - 1) // key.n * inv % key.n))
        return out

    naive_plain, t_n_combine = timed(naive_combine)
    _, t_n_decode = timed(
        lambda: [phe.EncodedNumber(pk, m, a.exponent).decode() for m, a in zip(naive_plain, agg)]
    )
    scale = args.values / k

    rows = [
        (
            "pack (clip, quantize, pack) / phe encode",
            statistics.mean(pack_times),
            t_n_encode * scale,
        ),
        ("encrypt, cold (rⁿ computed now, all cores) / phe encrypt", t_cold, t_n_encrypt * scale),
        (
            "encrypt, DJN fixed-base obfuscators",
            statistics.mean(djn_times) if djn_times else float("nan"),
            None,
        ),
        ("encrypt, warm pool", t_warm, None),
        ("  (pool fill, in the background while training)", t_fill, None),
        (f"aggregate {args.contributions}", t_agg, t_n_agg * scale),
        (
            "threshold partial-decrypt, per party (with proof)",
            t_partial,
            statistics.mean(t_n_partials) * scale,
        ),
        ("combine 3 (verifies 3 proofs)", t_combine, t_n_combine * scale),
        ("unpack / phe decode", t_unpack, t_n_decode * scale),
    ]
    pipeline = rows[0][1] + t_cold + t_agg + t_partial + t_combine + t_unpack
    pipeline_warm = pipeline - t_cold + t_warm
    naive_total = sum(r[2] for r in rows if r[2] is not None)

    print(
        "\n| step | fedlora (s) | naive per-value phe (s, extrapolated from "
        f"{k:,} values) | speedup |"
    )
    print("|---|---:|---:|---:|")
    for name, ours, naive in rows:
        sp = f"{naive / ours:,.0f}x" if naive is not None and ours > 0 else ""
        nv = f"{naive:,.1f}" if naive is not None else ""
        print(f"| {name} | {ours:,.2f} | {nv} | {sp} |")
    print(
        f"| **pipeline** (pack + cold encrypt + aggregate + 1 party's partial decrypt + combine + unpack) "
        f"| **{pipeline:,.1f}** | **{naive_total:,.0f}** | **{naive_total / pipeline:,.0f}x** |"
    )
    print(
        f"| pipeline with a warm pool | {pipeline_warm:,.1f} | {naive_total:,.0f} | {naive_total / pipeline_warm:,.0f}x |"
    )

    wire = n_ct * ciphertext_width(pk)
    float_bytes = args.values * 4
    naive_wire = args.values * ciphertext_width(pk)
    floor_share = t_floor / t_partial
    print()
    print("| measure | value |")
    print("|---|---:|")
    print(
        f"| ciphertexts per contribution | {n_ct:,} ({params.slots_per_ciphertext} values each, {params.slot_bits}-bit slots in {params.slot_bytes} bytes) |"
    )
    print(
        f"| bytes on the wire per contribution | {wire / 1e6:,.2f} MB ({wire / float_bytes:.2f}x float32's {float_bytes / 1e6:.2f} MB) |"
    )
    print(
        f"| naive per-value bytes | {naive_wire / 1e6:,.0f} MB ({naive_wire / float_bytes:.0f}x float32) |"
    )
    print(
        f"| partial-decrypt floor: raw gmpy2 powmod_base_list, {workers} threads (from {len(sample):,} ciphertexts) | {t_floor:,.1f} s |"
    )
    print(
        f"| fedlora partial decrypt (validation + proof included) vs that floor | {floor_share * 100:.1f}% of floor throughput |"
    )
    print(f"| one core, one ciphertext: raw powmod | {per_ct_one_core * 1e3:.2f} ms |")
    print(f"| safe primes + dealing, {args.bits}-bit 3-of-5 key | {t_keygen:.1f} s |")
    print(
        f"| max abs error of the decrypted mean (bound: one step {params.step:.2e}) | {error:.2e} |"
    )
    print(f"\nspeedup vs naive per-value Paillier: {naive_total / pipeline:,.0f}x")


if __name__ == "__main__":
    main()
