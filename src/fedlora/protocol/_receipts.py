"""A contributor's check of its receipt: every field against what it uploaded, and the log.

Pure apart from the JSON it returns for the client to keep (``<state_dir>/receipts/``); the
offline auditor (:func:`fedlora.audit.verify_receipt`) reads the same document.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from fedlora.audit import Receipt, verify_receipt
from fedlora.errors import VerificationError
from fedlora.protocol._contributor import SignedContribution


def check_receipt(
    receipt: Receipt,
    *,
    federation_id: str,
    client_id: str,
    sent: SignedContribution,
    coordinator_key: bytes,
) -> tuple[Receipt, dict[str, Any]]:
    """Check a receipt field by field against the upload; return it parsed and as a document.

    Raises:
        VerificationError: a field that is not this upload's, a bad signature, an entry that does
            not record this contribution, or an entry not in the signed checkpoint's log.
    """
    expected = {
        "federation_id": (receipt.federation_id, federation_id),
        "round": (receipt.round_number, sent.header.round_number),
        "client_id": (receipt.client_id, client_id),
        "contribution_digest": (receipt.contribution_digest, sent.statement),
    }
    for name, (got, want) in expected.items():
        if got != want:
            raise VerificationError(
                f"the receipt's {name} is not this upload's: the coordinator acknowledged "
                "something else"
            )
    doc = replace(receipt, ciphertexts_digest=sent.header.ciphertexts_digest).to_dict(
        coordinator_key
    )
    parsed = Receipt.from_dict(doc)  # what is kept must read back as it was checked
    # Signature, checkpoint, inclusion, canonical entry for this round/client/digests.
    verify_receipt(parsed, coordinator_key)
    entry = json.loads(receipt.entry)
    if entry.get("signature") != sent.header.signature.hex():
        raise VerificationError("the receipt's audit entry does not record this upload")
    return parsed, doc
