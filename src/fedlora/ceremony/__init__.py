"""fedlora.ceremony — how a federation's threshold key comes into being, and how each party gets its share.

One ceremony exists today: the trusted dealer (:func:`run_dealer_ceremony`). It generates the
threshold key, seals each share to its party's X25519 key, writes ``threshold-key.json`` and
``shares/<party>.share.json``, and forgets the factorization and the plaintext shares. The
command line (``fedlora keys deal``), the demo set-up and ``fedlora crypto-demo`` all deal through
it.

An interactive, dealer-less key generation — the parties jointly generating the modulus, so that
nobody ever knows its factorization — will go here, beside the dealer, with the same result: a
:class:`~fedlora.crypto.ThresholdPublicKey` and one sealed share per party.
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
