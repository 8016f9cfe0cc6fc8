"""A contributor's check of its receipt: every field against what it uploaded, and the log.

Pure apart from the JSON it returns for the client to keep (``<state_dir>/receipts/``); the
offline auditor (:func:`fedlora.audit.verify_receipt`) reads the same document.
"""

from __future__ import annotations

import json
from typing import Any

from fedlora.audit import Receipt as ReceiptDocument
from fedlora.audit import verify_receipt
from fedlora.errors import VerificationError
from fedlora.protocol._contributor import SignedContribution
from fedlora.protocol._messages import Receipt


def check_receipt(
    receipt: Receipt,
    *,
    federation_id: str,
    client_id: str,
    sent: SignedContribution,
    coordinator_key: bytes,
) -> tuple[ReceiptDocument, dict[str, Any]]:
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
    if receipt.checkpoint is None:
        raise VerificationError("the receipt carries no signed audit checkpoint")
    doc = {
        "federation_id": receipt.federation_id,
        "round": receipt.round_number,
        "client_id": receipt.client_id,
        "contribution_digest": receipt.contribution_digest.hex(),
        "log_index": receipt.log_index,
        "received_at_ms": receipt.received_at_ms,
        "signature": receipt.signature.hex(),
        "ciphertexts_digest": sent.header.ciphertexts_digest.hex(),
        "coordinator_signing_public_key": coordinator_key.hex(),
        "entry": receipt.entry.decode("ascii", errors="replace"),
        "inclusion": [h.hex() for h in receipt.inclusion],
        "checkpoint": receipt.checkpoint.to_dict(),
    }
    parsed = ReceiptDocument.from_dict(doc)
    # Signature, checkpoint, inclusion, canonical entry for this round/client/digests.
    verify_receipt(parsed, coordinator_key)
    entry = json.loads(receipt.entry)
    if entry.get("signature") != sent.header.signature.hex():
        raise VerificationError("the receipt's audit entry does not record this upload")
    return parsed, doc
