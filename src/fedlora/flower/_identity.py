"""Which enrolled party a Flower node is: a signature over the server's fresh challenge.

On fedlora's own transport a party is its mTLS certificate's name. Flower's SuperLink
authenticates SuperNodes (where configured) but not as fedlora parties, so the workflow sends each
node a fresh random challenge and the node signs it with its party's Ed25519 key, bound to the
federation, to the node id and to the federation spec the node sends with it (so a relay cannot
swap a node's spec). A replayed answer from another node or another run fails.
"""

from __future__ import annotations

import hashlib

DOMAIN = b"fedlora/flower-join/v2"


def join_digest(federation_id: str, node_id: int, nonce: bytes, spec_json: str) -> bytes:
    h = hashlib.sha256(DOMAIN)
    for part in (federation_id.encode(), str(node_id).encode(), nonce, spec_json.encode()):
        h.update(len(part).to_bytes(8, "big"))
        h.update(part)
    return h.digest()
