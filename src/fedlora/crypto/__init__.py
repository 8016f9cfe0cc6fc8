"""fedlora.crypto — pure math and formats (STYLE.md §2): no I/O, logging, config, grpc or torch.

Paillier on phe key objects with gmpy2 (g = n+1); threshold Paillier with a trusted dealer and
batch proofs of correct decryption; Shamir sharing; key-share transport (X25519 + HKDF + AES-GCM);
the packing codec; obfuscator pools; Ed25519 signatures over canonical digests; RFC 6962 Merkle
trees. Vector exponentiation runs on a modexp backend object chosen by the caller (gmpy2 on
threads by default), and ciphertext vectors have one fixed-width layout (``CiphertextVector``). ``coordinator`` and ``client`` use only the names exported here.
"""

from __future__ import annotations

from fedlora.crypto._backend import ModexpBackend, MultiExp, ThreadsBackend, default_workers
from fedlora.crypto._codec import CodecParams, decode, encode, pack_slots, unpack_slots
from fedlora.crypto._dealer import deal_threshold_key, generate_threshold_key
from fedlora.crypto._factory import (
    BACKEND_NAMES,
    default_backend,
    make_backend,
    multi_powmod,
    multi_powmods,
    select_backend,
)
from fedlora.crypto._ifma import IfmaBackend
from fedlora.crypto._knowledge import (
    KnowledgeClaim,
    PlaintextProof,
    encrypt_and_prove,
    verify_plaintext_knowledge,
    verify_plaintext_knowledge_batch,
)
from fedlora.crypto._merkle import (
    EMPTY_ROOT,
    CompactRange,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    merkle_root,
    node_hash,
    verify_consistency,
    verify_inclusion,
)
from fedlora.crypto._obfuscation import (
    DjnObfuscator,
    EncryptionWitness,
    ObfuscatorPool,
    ObfuscatorSource,
)
from fedlora.crypto._openssl import OpenSSLBackend
from fedlora.crypto._paillier import (
    PaillierPrivateKey,
    PaillierPublicKey,
    add_ciphertext_vectors,
    ciphertext_vector_digest,
    ciphertext_width,
    decrypt,
    decrypt_batch,
    encrypt,
    encrypt_batch,
    key_fingerprint,
    keypair_from_primes,
    validate_ciphertext,
    validate_ciphertexts,
)
from fedlora.crypto._primes import generate_safe_prime, generate_safe_prime_pair, is_safe_prime
from fedlora.crypto._shamir import (
    ShamirShare,
    integer_lagrange_at_zero,
    recover_secret,
    split_secret,
)
from fedlora.crypto._signing import (
    canonical_digest,
    canonical_encode,
    checkpoint_digest,
    contribution_digest,
    ed25519_public_bytes,
    partial_statement_digest,
    proof_context,
    receipt_digest,
    sign_digest,
    ticket_digest,
    verify_signature,
)
from fedlora.crypto._threshold import (
    DecryptionProof,
    PartialDecryption,
    combine_partial_decryptions,
    combine_verified_partials,
    partial_decrypt,
    proof_response_bound,
    ticket_quorum,
    verify_partial_decryption,
)
from fedlora.crypto._threshold_keys import MAX_PARTIES, DealtKey, KeyShare, ThresholdPublicKey
from fedlora.crypto._transport import open_key_share, seal_key_share, x25519_public_bytes
from fedlora.crypto._util import Rng, deterministic_rng, fixed_bytes_to_int, int_to_fixed_bytes
from fedlora.crypto._vector import CiphertextVector, pack_records, records_hasher, unpack_records

__all__ = [
    "BACKEND_NAMES",
    "EMPTY_ROOT",
    "MAX_PARTIES",
    "CiphertextVector",
    "CodecParams",
    "CompactRange",
    "DealtKey",
    "DecryptionProof",
    "DjnObfuscator",
    "EncryptionWitness",
    "IfmaBackend",
    "KeyShare",
    "KnowledgeClaim",
    "ModexpBackend",
    "MultiExp",
    "ObfuscatorPool",
    "ObfuscatorSource",
    "OpenSSLBackend",
    "PaillierPrivateKey",
    "PaillierPublicKey",
    "PartialDecryption",
    "PlaintextProof",
    "Rng",
    "ShamirShare",
    "ThreadsBackend",
    "ThresholdPublicKey",
    "add_ciphertext_vectors",
    "canonical_digest",
    "canonical_encode",
    "checkpoint_digest",
    "ciphertext_vector_digest",
    "ciphertext_width",
    "combine_partial_decryptions",
    "combine_verified_partials",
    "consistency_proof",
    "contribution_digest",
    "deal_threshold_key",
    "decode",
    "decrypt",
    "decrypt_batch",
    "default_backend",
    "default_workers",
    "deterministic_rng",
    "ed25519_public_bytes",
    "encode",
    "encrypt",
    "encrypt_and_prove",
    "encrypt_batch",
    "fixed_bytes_to_int",
    "generate_safe_prime",
    "generate_safe_prime_pair",
    "generate_threshold_key",
    "inclusion_proof",
    "int_to_fixed_bytes",
    "integer_lagrange_at_zero",
    "is_safe_prime",
    "key_fingerprint",
    "keypair_from_primes",
    "leaf_hash",
    "make_backend",
    "merkle_root",
    "multi_powmod",
    "multi_powmods",
    "node_hash",
    "open_key_share",
    "pack_records",
    "pack_slots",
    "partial_decrypt",
    "partial_statement_digest",
    "proof_context",
    "proof_response_bound",
    "receipt_digest",
    "records_hasher",
    "recover_secret",
    "seal_key_share",
    "select_backend",
    "sign_digest",
    "split_secret",
    "ticket_digest",
    "ticket_quorum",
    "unpack_records",
    "unpack_slots",
    "validate_ciphertext",
    "validate_ciphertexts",
    "verify_consistency",
    "verify_inclusion",
    "verify_partial_decryption",
    "verify_plaintext_knowledge",
    "verify_plaintext_knowledge_batch",
    "verify_signature",
    "x25519_public_bytes",
]
