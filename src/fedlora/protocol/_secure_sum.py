"""Secure-sum strategies: how a delta is sealed, checked on arrival and added up.

:class:`PaillierSum` packs the weighted, quantized delta into Paillier ciphertexts with a proof
of plaintext knowledge; the sum is a product of ciphertexts that only a quorum of share holders
can open. :class:`PlaintextSum` is the unencrypted baseline (float32 records, summed in the
clear) for measuring what encryption costs. Both roles pick the strategy from the federation's
``encryption_type`` once, and never branch on the mode again.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass

import gmpy2
import numpy as np
import numpy.typing as npt

from fedlora.crypto import (
    CodecParams,
    ModexpBackend,
    ObfuscatorSource,
    PlaintextProof,
    ThresholdPublicKey,
    add_ciphertext_vectors,
    ciphertext_vector_digest,
    ciphertext_width,
    encode,
    encrypt_and_prove,
    records_hasher,
    verify_plaintext_knowledge,
)
from fedlora.errors import ConfigError, VerificationError
from fedlora.protocol._messages import PLAINTEXT_FINGERPRINT
from fedlora.protocol._records import pack_records, unpack_records
from fedlora.protocol._rules import AggregationRule, FedAvg, LinearRule

Vector = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Sealed:
    """A delta ready to send: its records, their digest and count, and the proof (if any)."""

    records: bytes
    digest: bytes
    count: int
    proof: bytes


class SecureSum(abc.ABC):
    """One way of summing the federation's deltas; both roles hold the same one."""

    encryption_type: str
    fingerprint: bytes  # names the key the records are under (zeros in plaintext)
    width: int  # bytes per record
    needs_decryption: bool  # True: the sum goes to the share holders before it is a mean

    def __init__(self, codec: CodecParams, rule: AggregationRule) -> None:
        self.codec = codec
        self.rule = rule

    @abc.abstractmethod
    def record_count(self, num_parameters: int) -> int:
        """Records a contribution of ``num_parameters`` values has."""

    @abc.abstractmethod
    def seal(
        self,
        delta: Vector,
        *,
        weight: int,
        context: bytes,
        obfuscators: ObfuscatorSource | None = None,
    ) -> Sealed:
        """Encode (and encrypt and prove) one client's delta."""

    @abc.abstractmethod
    def check_records(self, data: bytes, first_index: int) -> None:
        """Refuse a whole-record slice of an arriving contribution that is not well formed.

        Raises:
            VerificationError: naming the first bad record.
        """

    @abc.abstractmethod
    def check_proof(self, records: bytes, proof: bytes, context: bytes) -> None:
        """Check the contribution's proof (or that there is none where none belongs).

        Raises:
            VerificationError: a missing, malformed or failing proof.
        """

    def digest(self, records: bytes) -> bytes:
        """The records' digest as signatures name it."""
        h = records_hasher(len(records) // self.width, self.width)
        h.update(records)
        return h.digest()

    @abc.abstractmethod
    def add(self, total: bytes | None, records: bytes, weight: int) -> bytes:
        """The running sum (``None`` to start) after adding one contribution's records."""

    def mean(self, total: bytes, total_weight: int) -> Vector:
        """The weighted mean delta of a sum held in the clear.

        Raises:
            TypeError: the sum is encrypted (``needs_decryption``): only the share holders'
                partial decryptions turn it into a mean.
        """
        raise TypeError("an encrypted sum becomes a mean only through threshold decryption")


class PaillierSum(SecureSum):
    """Packed threshold Paillier: the coordinator multiplies ciphertexts; holders decrypt."""

    encryption_type = "homomorphic"
    needs_decryption = True

    def __init__(
        self,
        key: ThresholdPublicKey,
        codec: CodecParams,
        rule: LinearRule,
        backend: ModexpBackend | None = None,
    ) -> None:
        if not isinstance(rule, LinearRule):
            raise ConfigError(
                f"aggregation rule {rule.name!r} is not linear in the deltas; an encrypted "
                "federation can only apply linear rules (the coordinator sees only the sum)"
            )
        super().__init__(codec, rule)
        self.key = key
        self.backend = backend  # None: fedlora.crypto's default (gmpy2 on every core)
        self.fingerprint = key.fingerprint
        self.width = ciphertext_width(key.paillier)

    def record_count(self, num_parameters: int) -> int:
        return self.codec.ciphertexts_for(num_parameters)

    def seal(
        self,
        delta: Vector,
        *,
        weight: int,
        context: bytes,
        obfuscators: ObfuscatorSource | None = None,
    ) -> Sealed:
        pk = self.key.paillier
        cts, proof = encrypt_and_prove(
            pk,
            encode(delta, self.codec, weight=weight),
            context=context,
            obfuscators=obfuscators,
            backend=self.backend,
        )
        return Sealed(
            pack_records(cts, self.width),
            ciphertext_vector_digest(pk, cts),
            len(cts),
            proof.to_bytes(pk),
        )

    def check_records(self, data: bytes, first_index: int) -> None:
        n, n2 = gmpy2.mpz(self.key.n), self.key.nsquare
        for i, c in enumerate(unpack_records(data, self.width)):
            if not 0 < c < n2 or gmpy2.gcd(c, n) != 1:
                raise VerificationError(f"record {first_index + i} is not a ciphertext in Z*_(n²)")

    def check_proof(self, records: bytes, proof: bytes, context: bytes) -> None:
        pk = self.key.paillier
        verify_plaintext_knowledge(
            pk,
            unpack_records(records, self.width),
            PlaintextProof.from_bytes(pk, proof),
            context=context,
            backend=self.backend,
        )

    def add(self, total: bytes | None, records: bytes, weight: int) -> bytes:
        if total is None:
            return records
        return pack_records(
            add_ciphertext_vectors(
                self.key.paillier,
                unpack_records(total, self.width),
                unpack_records(records, self.width),
            ),
            self.width,
        )


class PlaintextSum(SecureSum):
    """The unencrypted baseline: float32 deltas, weighted and summed in the clear."""

    encryption_type = "none"
    needs_decryption = False
    fingerprint = PLAINTEXT_FINGERPRINT
    width = 4

    def record_count(self, num_parameters: int) -> int:
        return num_parameters

    def seal(
        self,
        delta: Vector,
        *,
        weight: int,
        context: bytes,
        obfuscators: ObfuscatorSource | None = None,
    ) -> Sealed:
        records = np.ascontiguousarray(delta, dtype="<f4").tobytes()
        return Sealed(records, self.digest(records), len(records) // 4, b"")

    def check_records(self, data: bytes, first_index: int) -> None:
        if not np.all(np.isfinite(np.frombuffer(data, dtype="<f4"))):
            raise VerificationError("a plaintext value is NaN or infinite")

    def check_proof(self, records: bytes, proof: bytes, context: bytes) -> None:
        if proof:
            raise VerificationError("a plaintext-mode contribution carries no proof")

    def add(self, total: bytes | None, records: bytes, weight: int) -> bytes:
        values = weight * np.frombuffer(records, dtype="<f4").astype(np.float64)
        if total is not None:
            values += np.frombuffer(total, dtype="<f8")
        return values.astype("<f8").tobytes()

    def mean(self, total: bytes, total_weight: int) -> Vector:
        return np.frombuffer(total, dtype="<f8").astype(np.float64) / total_weight


def secure_sum_for(
    encryption_type: str,
    key: ThresholdPublicKey | None,
    codec: CodecParams,
    rule: AggregationRule | None = None,
    backend: ModexpBackend | None = None,
) -> SecureSum:
    """The strategy a federation's ``encryption_type`` names, exponentiating on ``backend``.

    Raises:
        ConfigError: homomorphic without a key, a non-linear rule under encryption, or an
            unknown type.
    """
    rule = rule or FedAvg()
    if encryption_type == "homomorphic":
        if key is None:
            raise ConfigError(
                "keys.threshold_public_key is required when encryption_type is homomorphic"
            )
        if not isinstance(rule, LinearRule):
            raise ConfigError(
                f"aggregation rule {rule.name!r} is not linear in the deltas; an encrypted "
                "federation can only apply linear rules (the coordinator sees only the sum)"
            )
        return PaillierSum(key, codec, rule, backend)
    if encryption_type == "none":
        return PlaintextSum(codec, rule)
    raise ConfigError(f"unknown encryption_type {encryption_type!r}")
