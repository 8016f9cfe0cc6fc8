"""fedlora.ceremony — how a federation's threshold key comes into being, and how each party gets its share.

One ceremony exists today: the trusted dealer (:func:`run_dealer_ceremony`). It generates the
threshold key, seals each share to its party's X25519 key, writes ``threshold-key.json`` and
``shares/<party>.share.json``, and forgets the factorization and the plaintext shares. The
command line (``fedlora keys deal``), the demo set-up and ``fedlora crypto-demo`` all deal through
it.

Key generation without a dealer — the holders jointly generating the modulus, so that nobody
ever knows its factorization — is being built beside it, with the same result (a
:class:`~fedlora.crypto.ThresholdPublicKey` and one share per holder): the holders' arithmetic
is :mod:`fedlora.crypto._keygen`, and :mod:`fedlora.ceremony._exchange` carries its messages
signed and end-to-end encrypted through an untrusted relay. The relay over the coordinator's
gRPC service and over Flower, the audit entries and the command come next.
"""

from __future__ import annotations

from fedlora.ceremony._dealer import (
    KEY_FILE,
    SHARES_FOLDER,
    CeremonyFiles,
    SealedKey,
    ceremony_files,
    deal_sealed_key,
    run_dealer_ceremony,
)

__all__ = [
    "KEY_FILE",
    "SHARES_FOLDER",
    "CeremonyFiles",
    "SealedKey",
    "ceremony_files",
    "deal_sealed_key",
    "run_dealer_ceremony",
]
