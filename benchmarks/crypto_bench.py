"""Crypto pipeline benchmark: per modexp backend, against today's gmpy2 path and naive Paillier.

Measures, in one run on this machine, for one float32 vector per client and a 3-of-5 threshold
key, for every modexp backend available here (gmpy2 on threads; OpenSSL's libcrypto, constant-
time for secrets; fedlora's AVX-512 IFMA kernel, eight constant-time exponentiations at once,
where the CPU runs it): cold encryption, threshold partial decryption per decryptor (with its proof),
combination (verifying three proofs), the raw floor of that backend (its bare exponentiations for
the same partial decryption) and the pipeline total. Then, side by side:

* **the gmpy2 path as it was** — gmpy2 on the same threads and byte-aligned 3-byte slots (85 per
  ciphertext at 2048 bits, this codec's layout before bit packing): its partial decryption is
  timed on as many ciphertexts as that layout needed;
* **8-bit values** (``--dense-bits``): a contribution encoded at 8 bits (12-bit slots, 170 per
  ciphertext), encrypted, partially decrypted by three holders and combined on the fastest
  backend, the decoded mean checked;
* **naive per-value Paillier** — one phe ciphertext per value, one core — timed on a sample and
  extrapolated (labelled as such).

Usage:
    python benchmarks/crypto_bench.py                      # the README table: 2048 bits, 2^20 values
    python benchmarks/crypto_bench.py --values 65536 --naive-sample 500   # a quick look

The last line is ``speedup vs naive per-value Paillier: <N>x`` (the default backend's pipeline).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import gmpy2
import numpy as np
import phe
from _measure import peak_rss_mb  # benchmarks/, beside this script

from fedlora.crypto import (
    CodecParams,
    DjnObfuscator,
    IfmaBackend,
    ModexpBackend,
    ObfuscatorPool,
    OpenSSLBackend,
    ThreadsBackend,
    add_ciphertext_vectors,
    ciphertext_width,
    combine_partial_decryptions,
    decode,
    default_backend,
    encode,
    encrypt_batch,
    generate_threshold_key,
    integer_lagrange_at_zero,
    pack_records,
    partial_decrypt,
)
from fedlora.crypto._ifma import load_kernel
from fedlora.crypto._openssl import load_libcrypto

T = TypeVar("T")
PARTIES = ("bank-a", "bank-b", "hospital-c", "hospital-d", "hospital-e")


def timed(fn: Callable[[], T]) -> tuple[T, float]:
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def partial_floor(
    backend: ModexpBackend, key: Any, secret: int, cts: list[int], sample: int
) -> float:
    """Seconds for the backend's bare exponentiations of a partial decryption of ``cts``
    (measured on a sample, scaled to all)."""
    part = cts[: min(sample, len(cts))]
    _, t = timed(lambda: backend.powmod_bases_secret(part, 2 * key.delta * secret, key.nsquare))
    return t * len(cts) / len(part)


def aggregate_from_files(
    key_file: str, codec: dict[str, Any], files: list[str], count: int
) -> None:
    """In a fresh process: sum ``count`` contributions read from ``files`` (cycled) one at a
    time, as the coordinator engine does (``SecureSum.add``), and print the peak RSS in MB."""
    from fedlora.crypto import ThresholdPublicKey
    from fedlora.protocol import secure_sum_for

    key = ThresholdPublicKey.from_json(Path(key_file).read_bytes())
    secure = secure_sum_for("homomorphic", key, CodecParams(**codec))
    start_rss = peak_rss_mb()
    total = None
    for i in range(count):
        total = secure.add(total, Path(files[i % len(files)]).read_bytes(), 1)
    peak = peak_rss_mb()
    print(json.dumps({"start_mb": start_rss, "peak_mb": peak, "bytes": len(total or b"")}))


def sum_memory(
    key: Any, params: CodecParams, contributions: list[list[int]], count: int
) -> tuple[dict[str, float], float]:
    """Peak RSS of a fresh process that sums ``count`` of these contributions read from files
    (cycled), as the coordinator engine does; and the seconds it took."""
    pk = key.paillier
    with tempfile.TemporaryDirectory() as tmp:
        key_file = Path(tmp) / "key.json"
        key_file.write_bytes(key.to_json())
        files = []
        for i, c in enumerate(contributions):
            path = Path(tmp) / f"c{i}.bin"
            path.write_bytes(pack_records(c, ciphertext_width(pk)))
            files.append(str(path))
        code = (
            "import json, sys; sys.path.insert(0, sys.argv[1]); import crypto_bench as b; "
            "b.aggregate_from_files(sys.argv[2], json.loads(sys.argv[3]), json.loads(sys.argv[4]), int(sys.argv[5]))"
        )
        started = time.perf_counter()
        out = subprocess.run(
            [sys.executable, "-c", code, str(Path(__file__).parent), str(key_file),
             json.dumps(params.to_dict()), json.dumps(files), str(count)],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        seconds = time.perf_counter() - started
    return json.loads(out.stdout.strip().splitlines()[-1]), seconds


def memory_only(args: argparse.Namespace) -> None:
    """``--memory-only``: the coordinator's peak RSS summing contributions, and nothing else."""
    dealt = generate_threshold_key(args.bits, 3, PARTIES)
    key = dealt.public_key
    params = CodecParams(
        clip=1.0, value_bits=args.value_bits, max_total_weight=args.contributions,
        key_bits=args.bits,
    )  # fmt: skip
    rng = np.random.default_rng(7)
    contributions = [
        encrypt_batch(
            key.paillier,
            encode(rng.normal(0, 0.3, args.values).astype(np.float32), params, rng=rng),
            obfuscators=DjnObfuscator(key.paillier),
        )
        for _ in range(args.contributions)
    ]
    rss, seconds = sum_memory(key, params, contributions, args.aggregate_count)
    mb = len(contributions[0]) * ciphertext_width(key.paillier) / 1e6
    print(
        f"| coordinator summing {args.aggregate_count} contributions read from disk one at a "
        f"time: peak RSS (interpreter and key alone: {rss['start_mb']:,.0f} MB) | "
        f"{rss['peak_mb']:,.0f} MB in {seconds:,.1f} s (one contribution: {mb:,.1f} MB) |"
    )


# ---- seed scale: a language model's adapter, each party's step in its own process ----------

SEED_VALUES = 4_884_480  # SmolLM2-135M, LoRA r = 16 on all seven linear layers of 30 blocks
SEED_PARTIES = ("bank-a", "bank-b", "bank-c")  # a 2-of-3 key: two holders decrypt


class _Replayed:
    """BENCHMARK ONLY: the simulated clients 2..N seal with client 1's obfuscators (the product
    never reuses one: it would leak differences of plaintexts). Their sealing is not what is
    measured (client 1's, from a fresh pool, is); their contributions exist so that intake and
    the holders check and sum N distinct vectors with valid proofs."""

    def __init__(self, taken: tuple[list[int], Any]) -> None:
        self.public_key = None
        self._rn, self._witness = taken

    def take(self, count: int) -> list[int]:
        return self._rn[:count]

    def take_with_witness(self, count: int) -> tuple[list[int], Any]:
        return self._rn[:count], self._witness


def _seed_setup(folder: Path) -> tuple[Any, CodecParams, dict[str, Any]]:
    from fedlora.crypto import ThresholdPublicKey

    doc = json.loads((folder / "setup.json").read_text())
    key = ThresholdPublicKey.from_json((folder / "key.json").read_bytes())
    return key, CodecParams(**doc["codec"]), doc


def _seed_vector(client: int, values: int) -> np.ndarray:
    """Client ``client``'s adapter delta: LoRA-sized values (the codec clips at 1)."""
    return np.random.default_rng(1000 + client).normal(0, 0.02, values).astype(np.float32)


def _seed_context(client: int) -> bytes:
    return f"seed-scale bench, client {client}".encode()


def _write_partial(path: Path, p: Any, width: int) -> None:
    meta = {"party_id": p.party_id, "index": p.index, "fingerprint": p.key_fingerprint.hex(),
            "digest": p.ciphertexts_digest.hex(), "e": hex(p.proof.challenge),
            "z": hex(p.proof.response)}  # fmt: skip
    path.with_suffix(".json").write_text(json.dumps(meta))
    path.write_bytes(pack_records(p.values, width))


def _read_partial(path: Path, width: int) -> Any:
    from fedlora.crypto import DecryptionProof, PartialDecryption, unpack_records

    meta = json.loads(path.with_suffix(".json").read_text())
    return PartialDecryption(
        meta["party_id"], meta["index"], bytes.fromhex(meta["fingerprint"]),
        bytes.fromhex(meta["digest"]), tuple(unpack_records(path.read_bytes(), width)),
        DecryptionProof(int(meta["e"], 16), int(meta["z"], 16)),
    )  # fmt: skip


def seed_role(role: str, folder: Path, index: int) -> None:
    """One party's step of a round in this (fresh) process; prints its timings and peak RSS."""
    from fedlora.crypto import (
        KeyShare,
        partial_decrypt,
        unpack_records,
        validate_ciphertexts,
        verify_plaintext_knowledge_batch,
    )
    from fedlora.protocol import secure_sum_for
    from fedlora.protocol._decryptor import PROOF_GROUP

    key, codec, doc = _seed_setup(folder)
    pk, values, clients = key.paillier, doc["values"], doc["clients"]
    secure = secure_sum_for("homomorphic", key, codec)
    width = ciphertext_width(pk)
    out: dict[str, float] = {"start_mb": peak_rss_mb()}
    if role == "client":
        delta = _seed_vector(0, values)
        count = len(encode(delta, codec))
        pool = ObfuscatorPool(pk, capacity=count)
        _, out["pool_fill_s"] = timed(pool.fill)  # while the model trains

        class Recording:
            public_key = pk
            taken: tuple[list[int], Any] | None = None

            def take(self, k: int) -> list[int]:
                return self.take_with_witness(k)[0]

            def take_with_witness(self, k: int) -> tuple[list[int], Any]:
                self.taken = pool.take_with_witness(k)
                return self.taken

        recording = Recording()
        sealed, out["seal_s"] = timed(
            lambda: secure.seal(delta, weight=1, context=_seed_context(0), obfuscators=recording)
        )
        (folder / "c0.bin").write_bytes(sealed.records)
        (folder / "c0.proof").write_bytes(sealed.proof)
        out["peak_mb"] = peak_rss_mb()  # one client: the pool, its vector, its contribution
        out["records"] = sealed.count
        assert recording.taken is not None
        replay = _Replayed(recording.taken)
        for c in range(1, clients):
            s = secure.seal(
                _seed_vector(c, values), weight=1, context=_seed_context(c), obfuscators=replay
            )
            (folder / f"c{c}.bin").write_bytes(s.records)
            (folder / f"c{c}.proof").write_bytes(s.proof)
    elif role == "coordinator":
        total: bytes | None = None
        start = time.perf_counter()
        for c in range(clients):  # as they arrive: records checked, proof checked, summed
            records = (folder / f"c{c}.bin").read_bytes()
            secure.check_records(records, 0)
            secure.check_proof(records, (folder / f"c{c}.proof").read_bytes(), _seed_context(c))
            total = secure.add(total, records, 1)
        out["intake_s"] = time.perf_counter() - start
        assert total is not None
        (folder / "aggregate.bin").write_bytes(total)
        out["peak_mb"] = peak_rss_mb()
    elif role == "holder":
        from fedlora.crypto import PlaintextProof

        share = KeyShare.from_bytes((folder / f"share{index}.bin").read_bytes())
        # A decryption task carries every contribution's records (as check_task receives them).
        task = {c: (folder / f"c{c}.bin").read_bytes() for c in range(clients)}
        start = time.perf_counter()
        summed: list[int] | None = None
        for first in range(0, clients, PROOF_GROUP):  # as check_task: a group at a time
            claims = []
            for c in range(first, min(clients, first + PROOF_GROUP)):
                cts = validate_ciphertexts(pk, unpack_records(task[c], width))
                proof = PlaintextProof.from_bytes(pk, (folder / f"c{c}.proof").read_bytes())
                claims.append((cts, proof, _seed_context(c)))
            assert verify_plaintext_knowledge_batch(pk, claims) == [None] * len(claims)
            for cts, _, _ in claims:
                summed = list(cts) if summed is None else add_ciphertext_vectors(pk, summed, cts)
            del claims
        assert summed == unpack_records((folder / "aggregate.bin").read_bytes(), width)
        out["check_s"] = time.perf_counter() - start
        partial, out["partial_s"] = timed(lambda: partial_decrypt(key, share, summed))
        _write_partial(folder / f"partial{index}.bin", partial, width)
        out["peak_mb"] = peak_rss_mb()
    elif role == "combiner":
        aggregate = unpack_records((folder / "aggregate.bin").read_bytes(), width)
        partials = [_read_partial(folder / f"partial{i}.bin", width) for i in range(key.threshold)]
        plain, out["combine_s"] = timed(
            lambda: combine_partial_decryptions(key, aggregate, partials)
        )
        mean, out["decode_s"] = timed(
            lambda: decode(plain, codec, length=values, total_weight=clients)
        )
        out["peak_mb"] = peak_rss_mb()  # before the check below, which is the benchmark's own
        expected = np.zeros(values)
        for c in range(clients):
            expected += np.clip(_seed_vector(c, values), -1, 1) / clients
        out["error"] = float(np.max(np.abs(mean - expected)))
        assert out["error"] <= codec.step, f"decoded mean off by {out['error']}"
    print(json.dumps(out))


def seed_scale(args: argparse.Namespace) -> None:
    """``--seed-scale``: a round's critical path at the language-model scale, party by party."""
    clients = args.contributions
    backend = default_backend()
    print(
        f"# seed scale — {platform.machine()}, {len(os.sched_getaffinity(0))} cores, backend "
        f"{backend.name}; {args.bits}-bit 2-of-3 key; {clients} clients × {args.values:,} "
        f"float32 values ({args.value_bits}-bit values); each party's step in its own process\n",
        flush=True,
    )
    dealt = generate_threshold_key(args.bits, 2, SEED_PARTIES)
    codec = CodecParams(
        clip=1.0, value_bits=args.value_bits, max_total_weight=clients, key_bits=args.bits
    )
    with tempfile.TemporaryDirectory(prefix="seed-scale-") as tmp:
        folder = Path(tmp)
        (folder / "key.json").write_bytes(dealt.public_key.to_json())
        for i, share in enumerate(dealt.shares):
            (folder / f"share{i}.bin").write_bytes(share.to_bytes())
        (folder / "setup.json").write_text(
            json.dumps({"codec": codec.to_dict(), "values": args.values, "clients": clients})
        )

        def run(role: str, index: int = 0) -> dict[str, float]:
            print(f"  … {role}{f' {index}' if role == 'holder' else ''}", flush=True)
            code = (
                "import sys; sys.path.insert(0, sys.argv[1]); import crypto_bench as b; "
                "b.seed_role(sys.argv[2], b.Path(sys.argv[3]), int(sys.argv[4]))"
            )
            done = subprocess.run(
                [sys.executable, "-c", code, str(Path(__file__).parent), role, tmp, str(index)],
                capture_output=True, text=True,
            )  # fmt: skip
            if done.returncode:
                raise SystemExit(f"the {role} step failed:\n{done.stderr[-3000:]}")
            return dict(json.loads(done.stdout.strip().splitlines()[-1]))

        client = run("client")
        coordinator = run("coordinator")
        holders = [run("holder", i) for i in range(dealt.public_key.threshold)]
        combiner = run("combiner")
    mb = client["records"] * ciphertext_width(dealt.public_key.paillier) / 1e6
    holder = holders[0]
    rows = [
        ("client: fill the obfuscator pool (while training)", client["pool_fill_s"], None),
        ("client: seal with the warm pool (encrypt + proof of knowledge)", client["seal_s"], client),
        (f"coordinator: intake of {clients} (records, proof, sum)", coordinator["intake_s"], coordinator),
        (f"holder: check {clients} contributions (batched proofs, re-sum)", holder["check_s"], None),
        ("holder: partial decryption with its proof", holder["partial_s"], holder),
        ("coordinator: combine 2 (verifies 2 proofs) + decode", combiner["combine_s"] + combiner["decode_s"], combiner),
    ]  # fmt: skip
    print(f"\n| step, {client['records']:,.0f} ciphertexts ({mb:,.1f} MB) per contribution | s | peak RSS of that process (MB) |")  # fmt: skip
    print("|---|---:|---:|")
    for label, seconds, party in rows:
        rss = f"{party['peak_mb']:,.0f}" if party else ""
        print(f"| {label} | {seconds:,.1f} | {rss} |")
    critical = sum(s for label, s, _ in rows if "while training" not in label)
    print(
        f"| **critical path** (seal + intake + one holder's checks and partial + combine) | "
        f"**{critical:,.1f}** |  |"
    )
    print(
        f"\nmax abs error of the decrypted mean: {combiner['error']:.2e} (one step {codec.step:.2e})"
    )
    print(f"seed-scale critical path: {critical:.0f} s")


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--bits", type=int, default=2048)
    ap.add_argument("--values", type=int, default=1 << 20)
    ap.add_argument("--contributions", type=int, default=10)
    ap.add_argument("--value-bits", type=int, default=16, help="the default codec's value bits")
    ap.add_argument("--dense-bits", type=int, default=8, help="the dense codec's value bits")
    ap.add_argument("--naive-sample", type=int, default=2000)
    ap.add_argument(
        "--aggregate-count", type=int, default=100, help="contributions the coordinator sums"
    )
    ap.add_argument(
        "--floor-sample", type=int, default=2048, help="ciphertexts for each backend's raw floor"
    )
    ap.add_argument(
        "--memory-only", action="store_true", help="only the coordinator's memory summing many"
    )
    ap.add_argument(
        "--seed-scale", action="store_true",
        help=f"a round's critical path at {SEED_VALUES:,} values, each party in its own process",
    )  # fmt: skip
    args = ap.parse_args()
    if args.seed_scale:
        if args.values == 1 << 20:
            args.values = SEED_VALUES
        seed_scale(args)
        return
    if args.memory_only:
        memory_only(args)
        return
    backends: dict[str, ModexpBackend] = {"gmpy2": ThreadsBackend()}
    if load_libcrypto() is not None:
        backends["openssl"] = OpenSSLBackend()
    if load_kernel() is not None:
        backends["ifma"] = IfmaBackend()
    default = default_backend()
    default_name = default.name if default.name in backends else "gmpy2"
    workers = default.workers  # type: ignore[attr-defined]
    log = lambda msg: print(f"  … {msg}", flush=True)  # noqa: E731

    print(
        f"# fedlora crypto benchmark — {platform.machine()}, {os.cpu_count()} cores ({workers} used), "
        f"Python {platform.python_version()}, gmpy2 {gmpy2.version()}, {ssl.OPENSSL_VERSION}, "
        f"phe {getattr(phe, '__version__', '1.5')}"
    )
    print(
        f"# {args.bits}-bit key, 3-of-5 threshold, {args.values:,} float32 values, "
        f"{args.value_bits}-bit values, {args.contributions} contributions; backends: "
        f"{', '.join(backends)} (default: {default_name})\n",
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

    log("packing")
    packed = []
    pack_times = []
    for v in vectors:
        p, t = timed(lambda v=v: encode(v, params, rng=np.random.default_rng()))
        packed.append(p)
        pack_times.append(t)
    t_pack = statistics.mean(pack_times)
    n_ct = len(packed[0])

    enc: dict[str, float] = {}
    first: list[int] = []
    for name, backend in backends.items():
        log(
            f"encrypting contribution 1 cold on {name} ({n_ct:,} ciphertexts, rⁿ on {workers} cores)"
        )
        first, enc[name] = timed(lambda b=backend: encrypt_batch(pk, packed[0], backend=b))
    log("filling an obfuscator pool on the default backend (done while training)")
    pool = ObfuscatorPool(pk, capacity=n_ct, backend=default)
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

    part: dict[str, float] = {}
    floor: dict[str, float] = {}
    comb: dict[str, float] = {}
    partials: dict[str, list[Any]] = {}
    for name, backend in backends.items():
        log(f"partial decryption by bank-a on {name}")
        p, part[name] = timed(
            lambda b=backend: partial_decrypt(key, dealt.shares[0], total, backend=b)
        )
        partials[name] = [p]
        log(f"raw {name} floor for partial decryption")
        floor[name] = partial_floor(backend, key, dealt.shares[0].secret, total, args.floor_sample)
    log("partial decryptions by bank-b and hospital-c on the default backend")
    others = [partial_decrypt(key, s, total, backend=default) for s in dealt.shares[1:3]]
    plain: list[int] = []
    for name, backend in backends.items():
        log(f"verifying three proofs and combining on {name}")
        plain, comb[name] = timed(
            lambda b=backend, n=name: combine_partial_decryptions(
                key, total, partials[n] + others, backend=b
            )
        )
    mean, t_unpack = timed(
        lambda: decode(plain, params, length=args.values, total_weight=args.contributions)
    )
    expected = np.mean([np.clip(v.astype(np.float64), -1, 1) for v in vectors], axis=0)
    error = float(np.max(np.abs(mean - expected)))
    assert error <= params.step, f"decoded mean off by {error} > one step {params.step}"

    # ---- the coordinator's memory while summing many contributions ---------------------------
    log(f"summing {args.aggregate_count} contributions from files in a fresh process (peak RSS)")
    rss, t_sum_many = sum_memory(key, params, contributions, args.aggregate_count)
    contribution_mb = n_ct * ciphertext_width(pk) / 1e6

    # ---- the gmpy2 path as it was: byte-aligned slots, so more ciphertexts -------------------
    slot_bytes = -(-params.slot_bits // 8)
    old_k = (args.bits - 1) // (8 * slot_bytes)
    old_ct = -(-args.values // old_k)
    log(
        f"the gmpy2 path as it was: partial decryption of {old_ct:,} ciphertexts ({old_k} per ciphertext)"
    )
    old_cts = [total[i % n_ct] for i in range(old_ct)]  # the cost does not depend on contents
    _, t_old = timed(
        lambda: partial_decrypt(key, dealt.shares[0], old_cts, backend=backends["gmpy2"])
    )

    # ---- dense values: 8-bit codec on the fastest backend, decoded and checked ---------------
    fastest = min(part, key=lambda n: part[n])
    dense = CodecParams(
        clip=1.0,
        value_bits=args.dense_bits,
        max_total_weight=args.contributions,
        key_bits=args.bits,
    )
    log(
        f"{args.dense_bits}-bit values on {fastest}: encode, encrypt, 3 partial decryptions, combine"
    )
    dense_packed = encode(vectors[0], dense, rng=np.random.default_rng(3))
    dense_ct = encrypt_batch(pk, dense_packed, backend=backends[fastest])
    dense_partials = []
    dense_times = []
    for s in dealt.shares[:3]:
        p, t = timed(lambda s=s: partial_decrypt(key, s, dense_ct, backend=backends[fastest]))
        dense_partials.append(p)
        dense_times.append(t)
    dense_plain = combine_partial_decryptions(key, dense_ct, dense_partials, backend=default)
    dense_mean = decode(dense_plain, dense, length=args.values, total_weight=1)
    dense_error = float(np.max(np.abs(dense_mean - np.clip(vectors[0].astype(np.float64), -1, 1))))
    assert dense_error <= dense.step, f"8-bit mean off by {dense_error} > one step {dense.step}"
    t_dense = statistics.mean(dense_times)

    # ---- naive per-value Paillier: phe, one ciphertext per value, one core -------------------
    k = args.naive_sample
    log(f"naive per-value phe on a sample of {k:,} values")
    sample_values = [float(x) for x in vectors[0][:k]]
    encoded, t_n_encode = timed(
        lambda: [
            phe.EncodedNumber.encode(pk, x, precision=2**-args.value_bits) for x in sample_values
        ]
    )
    enc_n, t_n_encrypt = timed(lambda: [pk.encrypt(e) for e in encoded])

    def naive_aggregate() -> list[phe.EncryptedNumber]:
        acc = list(enc_n)
        for _ in range(args.contributions - 1):
            acc = [a + b for a, b in zip(acc, enc_n)]
        return acc

    agg, t_n_agg = timed(naive_aggregate)
    raw = [a.ciphertext(be_secure=False) for a in agg]
    n2 = key.nsquare
    naive_partials = {}
    t_n_partials = []
    for share in dealt.shares[:3]:
        e = 2 * key.delta * share.secret
        vals, t = timed(lambda e=e: [gmpy2.powmod(c, e, n2) for c in raw])
        naive_partials[share.index] = vals
        t_n_partials.append(t)

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
    naive = {
        "pack": t_n_encode * scale,
        "encrypt": t_n_encrypt * scale,
        "aggregate": t_n_agg * scale,
        "partial": statistics.mean(t_n_partials) * scale,
        "combine": t_n_combine * scale,
        "unpack": t_n_decode * scale,
    }
    naive_total = sum(naive.values())

    def pipeline(name: str) -> float:
        return t_pack + enc[name] + t_agg + part[name] + comb[name] + t_unpack

    # ---- tables ---------------------------------------------------------------------------
    names = list(backends)
    print(f"\n| step (s), {n_ct:,} ciphertexts | " + " | ".join(names) + " |")
    print("|---|" + "---:|" * len(names))
    for label, values in (
        ("encrypt, cold (rⁿ on every core)", enc),
        ("threshold partial decryption, per decryptor (with proof)", part),
        ("  raw floor of the backend (its bare exponentiations)", floor),
        ("combine 3 (verifies 3 proofs)", comb),
    ):
        print(f"| {label} | " + " | ".join(f"{values[n]:,.2f}" for n in names) + " |")
    print("| **pipeline** (pack + cold encrypt + aggregate 10 + 1 partial decryption + combine + unpack) | "
          + " | ".join(f"**{pipeline(n):,.1f}**" for n in names) + " |")  # fmt: skip
    print(
        "| partial decryption vs the backend's floor | "
        + " | ".join(f"{floor[n] / part[n] * 100:.0f}% of floor throughput" for n in names)
        + " |"
    )

    print(
        "\n| partial decryption per decryptor, side by side | ciphertexts | s | vs the gmpy2 path as it was |"
    )
    print("|---|---:|---:|---:|")
    print(f"| gmpy2 path as it was ({args.value_bits}-bit values in {slot_bytes}-byte slots, {old_k} per ciphertext) | {old_ct:,} | {t_old:,.2f} | 1.00x |")  # fmt: skip
    for name in names:
        print(f"| {name}, {args.value_bits}-bit values in {params.slot_bits}-bit slots ({params.slots_per_ciphertext} per ciphertext) | {n_ct:,} | {part[name]:,.2f} | {t_old / part[name]:.2f}x |")  # fmt: skip
    print(f"| {fastest}, {args.dense_bits}-bit values in {dense.slot_bits}-bit slots ({dense.slots_per_ciphertext} per ciphertext; mean of 3 decryptors) | {len(dense_ct):,} | {t_dense:,.2f} | {t_old / t_dense:.2f}x |")  # fmt: skip

    print("\n| step, default backend vs naive per-value phe | fedlora (s) | naive (s, extrapolated from "
          f"{k:,} values) | speedup |")  # fmt: skip
    print("|---|---:|---:|---:|")
    for label, ours, key_ in (
        ("pack / phe encode", t_pack, "pack"),
        ("encrypt, cold / phe encrypt", enc[default_name], "encrypt"),
        (f"aggregate {args.contributions}", t_agg, "aggregate"),
        ("partial decryption, per decryptor", part[default_name], "partial"),
        ("combine 3", comb[default_name], "combine"),
        ("unpack / phe decode", t_unpack, "unpack"),
    ):
        print(f"| {label} | {ours:,.2f} | {naive[key_]:,.1f} | {naive[key_] / ours:,.0f}x |")
    print(f"| encrypt, DJN fixed-base obfuscators | {statistics.mean(djn_times) if djn_times else float('nan'):,.2f} |  |  |")  # fmt: skip
    print(
        f"| encrypt, warm pool (pool fill while training: {t_fill:,.1f} s) | {t_warm:,.2f} |  |  |"
    )
    total_default = pipeline(default_name)
    print(f"| **pipeline** | **{total_default:,.1f}** | **{naive_total:,.0f}** | **{naive_total / total_default:,.0f}x** |")  # fmt: skip

    wire = n_ct * ciphertext_width(pk)
    float_bytes = args.values * 4
    print("\n| measure | value |")
    print("|---|---:|")
    print(f"| ciphertexts per contribution | {n_ct:,} ({params.slots_per_ciphertext} values each, {params.slot_bits}-bit slots) |")  # fmt: skip
    print(f"| bytes on the wire per contribution | {wire / 1e6:,.2f} MB ({wire / float_bytes:.2f}x float32's {float_bytes / 1e6:.2f} MB) |")  # fmt: skip
    print(f"| naive per-value bytes | {args.values * ciphertext_width(pk) / 1e6:,.0f} MB |")
    print(f"| coordinator summing {args.aggregate_count} contributions read from disk one at a time: peak RSS (interpreter and key alone: {rss['start_mb']:,.0f} MB) | {rss['peak_mb']:,.0f} MB in {t_sum_many:,.1f} s (one contribution: {contribution_mb:,.1f} MB) |")  # fmt: skip
    print(f"| safe primes + dealing, {args.bits}-bit 3-of-5 key | {t_keygen:.1f} s |")
    print(
        f"| max abs error of the decrypted mean (bound: one step {params.step:.2e}) | {error:.2e} |"
    )
    print(f"| max abs error, {args.dense_bits}-bit values (bound: one step {dense.step:.2e}) | {dense_error:.2e} |")  # fmt: skip
    print(f"\nspeedup vs naive per-value Paillier: {naive_total / total_default:,.0f}x")


if __name__ == "__main__":
    main()
