"""Every public crypto function meets garbage with a fedlora exception — never a TypeError from
deep inside gmpy2, numpy or the standard library, and never a silent result."""

from __future__ import annotations

import numpy as np
import pytest

import fedlora.crypto as c
from fedlora.errors import FedLoraError

JUNK = ["x", None, -1, 1.5, True, b"\x00", [1], {"a": 1}, object(), np.float64(2), 10**2000]


def _calls(dealt):
    key = dealt.public_key
    pk = key.paillier
    share = dealt.shares[0]
    params = c.CodecParams(1.0, 16, 10, 512)
    h = b"x" * 32
    return {
        "encrypt(obfuscator)": lambda j: c.encrypt(pk, 5, obfuscator=j),
        "encrypt(m)": lambda j: c.encrypt(pk, j),
        "encrypt_batch": lambda j: c.encrypt_batch(pk, j),
        "encrypt_batch[i]": lambda j: c.encrypt_batch(pk, [1, j]),
        "add_ciphertext_vectors": lambda j: c.add_ciphertext_vectors(pk, [j], [2]),
        "ciphertext_vector_digest": lambda j: c.ciphertext_vector_digest(pk, [j]),
        "validate_ciphertexts": lambda j: c.validate_ciphertexts(pk, j),
        "decrypt_batch(key)": lambda j: c.decrypt_batch(j, [2]),
        "decode(plaintexts)": lambda j: c.decode([j], params, length=1, total_weight=1),
        "decode(total_weight)": lambda j: c.decode([0], params, length=1, total_weight=j),
        "decode(length)": lambda j: c.decode([0], params, length=j, total_weight=1),
        "unpack_slots": lambda j: c.unpack_slots([j], params, 1),
        "pack_slots": lambda j: c.pack_slots(j, params),
        "encode(values)": lambda j: c.encode(j, params),
        "encode(weight)": lambda j: c.encode([0.0], params, weight=j),
        "CodecParams": lambda j: c.CodecParams(j, 16, 10, 512),
        "CodecParams.from_dict": lambda j: c.CodecParams.from_dict(j),
        "leaf_hash": lambda j: c.leaf_hash(j),
        "node_hash": lambda j: c.node_hash(j, h),
        "merkle_root": lambda j: c.merkle_root(j),
        "inclusion_proof": lambda j: c.inclusion_proof(j, [h]),
        "verify_inclusion(index)": lambda j: c.verify_inclusion(h, j, 1, [], h),
        "verify_inclusion(proof)": lambda j: c.verify_inclusion(h, 0, 2, j, h),
        "verify_consistency": lambda j: c.verify_consistency(j, 2, h, h, []),
        "recover_secret": lambda j: c.recover_secret([j], 13),
        "split_secret": lambda j: c.split_secret(j, 2, 3, 13),
        "integer_lagrange_at_zero": lambda j: c.integer_lagrange_at_zero([j], 3),
        "canonical_encode(field)": lambda j: c.canonical_encode("d", [j]),
        "canonical_encode(fields)": lambda j: c.canonical_encode("d", j),
        "sign_digest": lambda j: c.sign_digest(j, h),
        "verify_signature(key)": lambda j: c.verify_signature(j, h, b"y" * 64),
        "verify_signature(digest)": lambda j: c.verify_signature(b"x" * 32, j, b"y" * 64),
        "checkpoint_digest": lambda j: c.checkpoint_digest(
            log_id="x", tree_size=1, root_hash=j, timestamp_ms=1
        ),
        "ThresholdPublicKey(party_ids)": lambda j: c.ThresholdPublicKey(
            n=key.n, threshold=3, party_ids=j, v=key.v, verification_keys=key.verification_keys
        ),
        "ThresholdPublicKey(threshold)": lambda j: c.ThresholdPublicKey(
            n=key.n,
            threshold=j,
            party_ids=key.party_ids,
            v=key.v,
            verification_keys=key.verification_keys,
        ),
        "ThresholdPublicKey(verification_keys)": lambda j: c.ThresholdPublicKey(
            n=key.n, threshold=3, party_ids=key.party_ids, v=key.v, verification_keys=j
        ),
        "ThresholdPublicKey.from_json": lambda j: c.ThresholdPublicKey.from_json(j),
        "KeyShare.from_bytes": lambda j: c.KeyShare.from_bytes(j),
        "partial_decrypt": lambda j: c.partial_decrypt(key, share, j),
        "combine(partials)": lambda j: c.combine_partial_decryptions(key, [2], j),
        "combine(partial)": lambda j: c.combine_partial_decryptions(key, [2], [j, j, j]),
        "verify_partial_decryption": lambda j: c.verify_partial_decryption(key, [2], j),
        "seal_key_share": lambda j: c.seal_key_share(share, j),
        "open_key_share": lambda j: c.open_key_share(j, None, party_id="a", public_key=key),
        "ObfuscatorPool": lambda j: c.ObfuscatorPool(j, 3),
        "DjnObfuscator": lambda j: c.DjnObfuscator(j),
        "generate_safe_prime": lambda j: c.generate_safe_prime(j),
        "deal_threshold_key": lambda j: c.deal_threshold_key(j, 23, 2, ["a", "b"]),
        "keypair_from_primes": lambda j: c.keypair_from_primes(j, 23),
        "int_to_fixed_bytes": lambda j: c.int_to_fixed_bytes(j, 4),
        "fixed_bytes_to_int": lambda j: c.fixed_bytes_to_int(j, 4),
    }


def test_every_public_function_rejects_junk_with_a_fedlora_error(dealt) -> None:
    leaks = []
    for name, call in _calls(dealt).items():
        for junk in JUNK:
            try:
                call(junk)
            except FedLoraError:
                pass
            except Exception as exc:
                leaks.append(f"{name}({junk!r:.20}) raised {type(exc).__name__}: {exc}")
    assert leaks == []


@pytest.mark.parametrize("junk", JUNK, ids=repr)
def test_errors_never_contain_secret_material(dealt, junk) -> None:
    share = dealt.shares[0]
    secret_hex, secret_dec = format(share.secret, "x"), str(share.secret)
    for call in _calls(dealt).values():
        try:
            call(junk)
        except FedLoraError as exc:
            assert secret_hex not in str(exc) and secret_dec not in str(exc)
