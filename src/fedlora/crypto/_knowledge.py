"""Encryption with a proof of plaintext knowledge: contributions that cannot be mauled.

Paillier is malleable: from someone else's ciphertexts ``cₓ`` anyone can make ``cₓ⁻¹·E(0)``, a
valid ciphertext of ``−mₓ``. A contributor colluding with the coordinator could submit that and
cancel honest contributions out of the aggregate, so that the "sum" decrypts to a single
client's update. A contributor therefore proves that it *knows* the plaintexts of its own
ciphertexts, which it cannot for a ciphertext derived from someone else's.

The proof is the Σ-protocol for knowledge of a Paillier plaintext and randomness (Damgård and
Jurik, PKC 2001, §5; the same shape as Shoup's proofs), made non-interactive with Fiat–Shamir
over SHA-256, for the random linear combination of the whole vector: 128-bit weights ``ρⱼ``
hashed from the caller's context and the vector give ``C = ∏ cⱼ^ρⱼ = (1+n)^M · Rⁿ`` with
``M = Σ ρⱼmⱼ`` and ``R = ∏ rⱼ^ρⱼ``. The prover sends ``a = (1+n)^x·sⁿ``, gets
``e = H(context, vector, C, a)`` and answers ``z₁ = x + e·M mod n``, ``z₂ = s·R^e mod n``; the
verifier checks ``(1 + z₁n)·z₂ⁿ = a·C^e (mod n²)``. One proof per vector costs the prover one
short multi-exponentiation mod n and two exponentiations; the verifier one multi-exponentiation
mod n² (as for the batched decryption proofs). The context binds federation, round and client,
so a proof cannot be moved to another client's upload.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import gmpy2
from phe import PaillierPublicKey

from fedlora.crypto._backend import ModexpBackend
from fedlora.crypto._factory import multi_powmod, multi_powmods, resolve_backend
from fedlora.crypto._obfuscation import EncryptionWitness, ObfuscatorSource, RootsWitness
from fedlora.crypto._paillier import ciphertext_vector_digest, validate_ciphertexts
from fedlora.crypto._util import Rng, byte_length, require_bytes, system_rng
from fedlora.crypto._vector import CiphertextVector, pack_records
from fedlora.errors import CryptoError, VerificationError

__all__ = [
    "KnowledgeClaim",
    "PlaintextProof",
    "encrypt_and_prove",
    "verify_plaintext_knowledge",
    "verify_plaintext_knowledge_batch",
]

_WEIGHT_BYTES = 16
_CHALLENGE_BITS = 256


@dataclass(frozen=True)
class PlaintextProof:
    """``(a, z₁, z₂)``: commitment mod n², responses mod n."""

    commitment: int
    response_m: int
    response_r: int

    def to_bytes(self, public_key: PaillierPublicKey) -> bytes:
        """Fixed width: ``|n²|`` bytes for ``a``, then ``|n|`` bytes each for ``z₁`` and ``z₂``."""
        w2, w1 = byte_length(public_key.nsquare), byte_length(public_key.n)
        return (
            self.commitment.to_bytes(w2, "big")
            + self.response_m.to_bytes(w1, "big")
            + self.response_r.to_bytes(w1, "big")
        )

    @classmethod
    def from_bytes(cls, public_key: PaillierPublicKey, data: bytes) -> PlaintextProof:
        """Raises: VerificationError: not exactly the fixed width."""
        w2, w1 = byte_length(public_key.nsquare), byte_length(public_key.n)
        if not isinstance(data, (bytes, bytearray)) or len(data) != w2 + 2 * w1:
            raise VerificationError(
                f"a proof of plaintext knowledge is {w2 + 2 * w1} bytes, got {len(data) if isinstance(data, (bytes, bytearray)) else type(data).__name__}"
            )
        return cls(
            int.from_bytes(data[:w2], "big"),
            int.from_bytes(data[w2 : w2 + w1], "big"),
            int.from_bytes(data[w2 + w1 :], "big"),
        )


def _weights(context: bytes, cts_digest: bytes, count: int) -> list[bytes]:
    seed = hashlib.sha256(b"fedlora/pok-weights/v1\x00" + context + cts_digest).digest()
    stream = hashlib.shake_256(seed).digest(_WEIGHT_BYTES * count)
    return [stream[j : j + _WEIGHT_BYTES] for j in range(0, len(stream), _WEIGHT_BYTES)]


def _challenge(pk: PaillierPublicKey, context: bytes, cts_digest: bytes, big_c: int, a: int) -> int:
    w = byte_length(pk.nsquare)
    h = hashlib.sha256(b"fedlora/plaintext-knowledge/v1\x00" + context + cts_digest)
    h.update(pack_records([big_c, a], w))
    return int.from_bytes(h.digest(), "big") >> (256 - _CHALLENGE_BITS)


def encrypt_and_prove(
    public_key: PaillierPublicKey,
    plaintexts: Sequence[int],
    *,
    context: bytes,
    obfuscators: ObfuscatorSource | None = None,
    rng: Rng | None = None,
    backend: ModexpBackend | None = None,
) -> tuple[list[int], PlaintextProof]:
    """Encrypt a vector (as :func:`fedlora.crypto.encrypt_batch`) and prove knowledge of it.

    Args:
        context: bytes naming where the vector goes (federation, round, client); the verifier
            must pass the same.
        backend: computes ``rⁿ`` when no ``obfuscators`` are given, and the prover's two
            exponentiations of secret bases; ``None`` is the default backend.

    Raises:
        CryptoError: a plaintext out of range (named by index), an empty vector.
    """
    pk = public_key
    if not isinstance(pk, PaillierPublicKey):
        raise CryptoError("public_key must be a phe.PaillierPublicKey")
    context = require_bytes("context", context)
    n, n2 = pk.n, pk.nsquare
    ms = []
    for i, m in enumerate(plaintexts):
        if isinstance(m, bool) or not isinstance(m, int) or not 0 <= m < n:
            raise CryptoError(f"plaintext[{i}] must be an integer in 0..n-1")
        ms.append(m)
    if not ms:
        raise CryptoError("nothing to encrypt: the plaintext vector is empty")
    source = system_rng(rng)
    engine = resolve_backend(backend)
    witness: EncryptionWitness
    if obfuscators is None:
        rs = [source.randrange(1, n) for _ in ms]
        rn, witness = engine.powmod_bases_secret(rs, n, n2), RootsWitness(rs, n)
    else:
        rn, witness = obfuscators.take_with_witness(len(ms))
    mn2 = gmpy2.mpz(n2)
    cts = [int((1 + m * n) * gmpy2.mpz(r) % mn2) for m, r in zip(ms, rn)]
    digest = ciphertext_vector_digest(pk, cts)
    weights = _weights(context, digest, len(cts))
    big_c = multi_powmod(cts, weights, n2, engine)
    big_m = sum(int.from_bytes(w, "big") * m for w, m in zip(weights, ms)) % n
    big_r = witness.combined_root(weights)
    x = source.randrange(n)
    while True:
        s = source.randrange(1, n)
        if gmpy2.gcd(s, n) == 1:
            break
    a = int((1 + x * n) * engine.powmod_bases_secret([s], n, n2)[0] % n2)
    e = _challenge(pk, context, digest, big_c, a)
    z1 = (x + e * big_m) % n
    z2 = int(s * engine.powmod_bases_secret([big_r], e, n)[0] % n)
    return cts, PlaintextProof(a, z1, z2)


def verify_plaintext_knowledge(
    public_key: PaillierPublicKey,
    ciphertexts: Sequence[int] | CiphertextVector,
    proof: PlaintextProof,
    *,
    context: bytes,
    backend: ModexpBackend | None = None,
) -> None:
    """Check that whoever made ``ciphertexts`` for ``context`` knows their plaintexts.

    The vector's digest is always computed here from the vector itself: soundness rests on the
    Fiat–Shamir weights being fixed *after* the vector, so a digest taken from anywhere else
    would let a sender pick its vector knowing the weights.

    Args:
        backend: runs the multi-exponentiation (``None``: the default backend).

    Raises:
        VerificationError: a malformed proof, or one that does not verify (for example a vector
            derived from someone else's ciphertexts, or a proof made for another context).
    """
    failure = verify_plaintext_knowledge_batch(
        public_key, [(ciphertexts, proof, context)], backend=backend
    )[0]
    if failure is not None:
        raise failure


KnowledgeClaim = tuple[Sequence[int] | CiphertextVector, PlaintextProof, bytes]
"""One vector, its proof and its context (see :func:`verify_plaintext_knowledge`)."""


def verify_plaintext_knowledge_batch(
    public_key: PaillierPublicKey,
    claims: Sequence[KnowledgeClaim],
    *,
    backend: ModexpBackend | None = None,
) -> list[VerificationError | None]:
    """Check many proofs at once (a round's contributions): each vector's random linear
    combination is one job of a single :func:`~fedlora.crypto.multi_powmods` batch, so the
    backend spreads them all over its cores. Each claim is judged alone.

    Returns:
        per claim, ``None`` when its proof verifies, else the :class:`VerificationError` that
        :func:`verify_plaintext_knowledge` would raise for it.
    """
    pk = public_key
    n, n2 = pk.n, pk.nsquare
    outcome: list[VerificationError | None] = [None] * len(claims)
    pending: list[tuple[int, list[int], PlaintextProof, bytes, bytes, list[bytes]]] = []
    for i, (ciphertexts, proof, context) in enumerate(claims):
        try:
            if not isinstance(proof, PlaintextProof):
                raise VerificationError(f"expected a PlaintextProof, got {type(proof).__name__}")
            try:
                cts = validate_ciphertexts(pk, ciphertexts)
                validate_ciphertexts(pk, [proof.commitment])
            except CryptoError as exc:
                raise VerificationError(f"proof of plaintext knowledge: {exc}") from None
            if not cts:
                raise VerificationError("proof of plaintext knowledge for an empty vector")
            z1, z2 = proof.response_m, proof.response_r
            if not (0 <= z1 < n and 0 < z2 < n and gmpy2.gcd(z2, n) == 1):
                raise VerificationError("proof of plaintext knowledge has responses out of range")
            context = require_bytes("context", context)
            digest = ciphertext_vector_digest(pk, cts)
            pending.append((i, cts, proof, context, digest, _weights(context, digest, len(cts))))
        except (VerificationError, CryptoError) as exc:
            outcome[i] = exc if isinstance(exc, VerificationError) else VerificationError(str(exc))
    combined = multi_powmods([(cts, weights) for _, cts, _, _, _, weights in pending], n2, backend)
    for (i, _, proof, context, digest, _), big_c in zip(pending, combined):
        e = _challenge(pk, context, digest, big_c, proof.commitment)
        left = (1 + proof.response_m * n) * gmpy2.powmod(proof.response_r, n, n2) % n2
        right = proof.commitment * gmpy2.powmod(big_c, e, n2) % n2
        if left != right:
            outcome[i] = VerificationError(
                "proof of plaintext knowledge does not verify: the sender does not know what it "
                "encrypted"
            )
    return outcome
