"""``fedlora crypto-demo``: one encrypted aggregation among five parties, in one process.

It exercises the whole crypto pipeline with production parameters — safe-prime threshold key,
packing codec, fast obfuscators, Ed25519-signed contributions, ciphertext validation,
homomorphic addition, proven partial decryptions and their combination — and checks the result
against the plaintext average. The networked federation replaces it as the main job later.
"""

from __future__ import annotations

import hashlib
import time

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from fedlora.crypto import (
    CodecParams,
    DjnObfuscator,
    add_ciphertext_vectors,
    ciphertext_vector_digest,
    ciphertext_width,
    combine_partial_decryptions,
    contribution_digest,
    decode,
    encode,
    encrypt_batch,
    generate_threshold_key,
    partial_decrypt,
    sign_digest,
    validate_ciphertexts,
    verify_signature,
)

PARTIES = ("bank-a", "bank-b", "hospital-c", "hospital-d", "hospital-e")
THRESHOLD = 3
FEDERATION = "crypto-demo"


def run_crypto_demo(*, bits: int, values: int, seed: int) -> int:
    console = Console()
    timings: list[tuple[str, float]] = []
    console.rule("[bold]fedlora crypto-demo")
    console.print(
        f"{len(PARTIES)} parties ({', '.join(PARTIES)}), a {THRESHOLD}-of-{len(PARTIES)} threshold key, "
        f"{bits}-bit modulus, {values:,} float32 values per LoRA delta"
    )

    t0 = time.monotonic()
    with console.status("dealing the threshold key (safe primes, shares, verification keys)…"):
        dealt = generate_threshold_key(bits, THRESHOLD, PARTIES)
    timings.append(("deal threshold key", time.monotonic() - t0))
    key = dealt.public_key
    params = CodecParams(clip=1.0, value_bits=16, max_total_weight=len(PARTIES), key_bits=bits)
    signing = {pid: Ed25519PrivateKey.generate() for pid in PARTIES}
    # Contributions name the global model they were trained from; here that is version 0, all
    # zeros, digested as the coordinator digests a global file (SHA-256 of little-endian float32).
    global_digest = hashlib.sha256(np.zeros(values, dtype="<f4").tobytes()).digest()

    rng = np.random.default_rng(seed)
    shared_direction = rng.normal(0, 0.2, values)
    deltas = {
        pid: (shared_direction + rng.normal(0, 0.2, values)).astype(np.float32) for pid in PARTIES
    }

    def signed_digest(pid: str, cts: list[int]) -> bytes:
        # What a client signs and the coordinator checks: binds round, client, codec, key and data.
        return contribution_digest(
            federation_id=FEDERATION,
            round_number=1,
            client_id=pid,
            codec_digest=params.digest(),
            key_fingerprint=key.fingerprint,
            weight=1,
            ciphertexts_digest=ciphertext_vector_digest(key.paillier, cts),
            value_count=values,
            global_version=0,
            global_digest=global_digest,
        )

    submissions = {}
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        task = progress.add_task("clients: encode, encrypt, sign", total=len(PARTIES))
        t0 = time.monotonic()
        for pid in PARTIES:
            plaintexts = encode(deltas[pid], params, rng=np.random.default_rng())
            cts = encrypt_batch(key.paillier, plaintexts, obfuscators=DjnObfuscator(key.paillier))
            digest = signed_digest(pid, cts)
            submissions[pid] = (cts, sign_digest(signing[pid], digest))
            progress.advance(task)
        timings.append(("5 clients: encode + encrypt + sign", time.monotonic() - t0))

        task = progress.add_task("coordinator: verify and add", total=len(PARTIES))
        t0 = time.monotonic()
        aggregate: list[int] | None = None
        for pid, (cts, signature) in submissions.items():
            cts = validate_ciphertexts(key.paillier, cts)
            digest = signed_digest(pid, cts)
            verify_signature(signing[pid].public_key(), digest, signature)
            aggregate = (
                cts if aggregate is None else add_ciphertext_vectors(key.paillier, aggregate, cts)
            )
            progress.advance(task)
        assert aggregate is not None
        timings.append(("coordinator: validate + verify + add 5", time.monotonic() - t0))

        decryptors = dealt.shares[1 : 1 + THRESHOLD]
        task = progress.add_task("decryptors: partial decryption + proof", total=len(decryptors))
        partials = []
        for share in decryptors:
            t0 = time.monotonic()
            partials.append(partial_decrypt(key, share, aggregate))
            timings.append((f"partial decryption by {share.party_id}", time.monotonic() - t0))
            progress.advance(task)

    t0 = time.monotonic()
    with console.status("coordinator: verifying proofs and combining…"):
        plaintexts = combine_partial_decryptions(key, aggregate, partials)
    timings.append(("verify 3 proofs + combine", time.monotonic() - t0))
    mean = decode(plaintexts, params, length=values, total_weight=len(PARTIES))
    expected = np.mean([np.clip(d.astype(np.float64), -1, 1) for d in deltas.values()], axis=0)
    error = float(np.max(np.abs(mean - expected)))

    table = Table(title="crypto-demo timings")
    table.add_column("step")
    table.add_column("seconds", justify="right")
    for name, seconds in timings:
        table.add_row(name, f"{seconds:.2f}")
    console.print(table)
    wire = len(aggregate) * ciphertext_width(key.paillier)
    console.print(
        f"{len(aggregate):,} ciphertexts per client ({params.slots_per_ciphertext} values each): "
        f"{wire / 1e6:.2f} MB on the wire vs {values * 4 / 1e6:.2f} MB of float32"
    )
    console.print(f"threshold key fingerprint {key.fingerprint.hex()[:32]}…")
    ok = error <= params.step
    verdict = "[green]OK[/]" if ok else "[red]FAILED[/]"
    console.print(
        f"{verdict}: decrypted aggregate vs plaintext average: max |error| = {error:.3g} "
        f"(bound: one quantization step = {params.step:.3g})"
    )
    return 0 if ok else 1
