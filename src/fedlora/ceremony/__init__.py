"""fedlora.ceremony — how a federation's threshold key comes into being, and how each party gets its share.

Two ceremonies:

* **Key generation without a dealer** (``keys.generation``, the provisioning default): the share
  holders generate the key together — :mod:`fedlora.crypto._keygen` is the arithmetic,
  :mod:`fedlora.ceremony._exchange` carries its messages signed and sealed end to end through an
  untrusted relay, :mod:`fedlora.ceremony._generate` is a holder's attempt and every member's
  check of the outcome, and :mod:`fedlora.ceremony._statement` the key statement a quorum of
  holders signs. The coordinator relays (:mod:`fedlora.coordinator._keygen`); members take part
  through :mod:`fedlora.client._keygen`.
* **The trusted dealer** (:func:`run_dealer_ceremony`, ``keys.generation: dealer``): it generates
  the key, seals each share to its party's X25519 key, writes ``threshold-key.json`` and
  ``shares/<party>.share.json``, and forgets the factorization — which the others must trust.
  ``fedlora keys deal``, the demo set-up and ``fedlora crypto-demo`` deal through it.
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
