"""RFC 6962 / RFC 9162 Merkle trees for the audit log: hashing, proofs and their verification.

Leaves hash as ``SHA-256(0x00 ‖ data)`` and interior nodes as ``SHA-256(0x01 ‖ left ‖ right)``;
the tree over n leaves splits at the largest power of two below n (RFC 6962 §2.1). Proof
generation follows §2.1.1 and §2.1.2; verification follows the iterative algorithms of RFC 9162
§2.1.3.2 and §2.1.4.2. Verifiers are pure and raise :class:`VerificationError` (STYLE.md §10).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence

from fedlora.crypto._util import require_bytes, require_sequence
from fedlora.errors import CryptoError, VerificationError

__all__ = [
    "EMPTY_ROOT",
    "CompactRange",
    "consistency_proof",
    "inclusion_proof",
    "leaf_hash",
    "merkle_root",
    "node_hash",
    "verify_consistency",
    "verify_inclusion",
]

EMPTY_ROOT = hashlib.sha256(b"").digest()


def leaf_hash(data: bytes) -> bytes:
    """SHA-256(0x00 ‖ data): the hash of one log entry."""
    return hashlib.sha256(b"\x00" + require_bytes("leaf data", data)).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """SHA-256(0x01 ‖ left ‖ right) of two 32-byte child hashes."""
    left = require_bytes("left", left, length=32)
    right = require_bytes("right", right, length=32)
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """Largest power of two strictly below n (n ≥ 2)."""
    return 1 << ((n - 1).bit_length() - 1)


def _check_hashes(hashes: Sequence[bytes], what: str) -> None:
    for h in require_sequence(what, hashes):
        if not isinstance(h, (bytes, bytearray)) or len(h) != 32:
            raise CryptoError(f"{what} must be 32-byte hashes")


def merkle_root(leaf_hashes: Sequence[bytes]) -> bytes:
    """MTH over already-hashed leaves (RFC 6962 §2.1), bottom-up in O(n)."""
    _check_hashes(leaf_hashes, "leaf hashes")
    if not leaf_hashes:
        return EMPTY_ROOT
    level = [bytes(h) for h in leaf_hashes]
    # Pairing left to right and promoting a lone last node reproduces the largest-power-of-two
    # split of RFC 6962 exactly.
    while len(level) > 1:
        nxt = [node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    return level[0]


def inclusion_proof(index: int, leaf_hashes: Sequence[bytes]) -> list[bytes]:
    """Audit path PATH(m, D[n]) for leaf ``index`` (RFC 6962 §2.1.1).

    Raises:
        CryptoError: index outside 0..n-1.
    """
    _check_hashes(leaf_hashes, "leaf hashes")
    n = len(leaf_hashes)
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < n:
        raise CryptoError(f"leaf index must be in 0..{n - 1}, got {index!r}")
    _check_hashes(leaf_hashes, "leaf hashes")

    def path(m: int, leaves: Sequence[bytes]) -> list[bytes]:
        if len(leaves) <= 1:
            return []
        k = _split(len(leaves))
        if m < k:
            return path(m, leaves[:k]) + [merkle_root(leaves[k:])]
        return path(m - k, leaves[k:]) + [merkle_root(leaves[:k])]

    return path(index, leaf_hashes)


def consistency_proof(old_size: int, leaf_hashes: Sequence[bytes]) -> list[bytes]:
    """PROOF(m, D[n]) that the first ``old_size`` leaves are a prefix (RFC 6962 §2.1.2).

    Raises:
        CryptoError: old_size outside 0..n.
    """
    _check_hashes(leaf_hashes, "leaf hashes")
    n = len(leaf_hashes)
    if isinstance(old_size, bool) or not isinstance(old_size, int) or not 0 <= old_size <= n:
        raise CryptoError(f"old tree size must be in 0..{n}, got {old_size!r}")
    _check_hashes(leaf_hashes, "leaf hashes")
    if old_size in (0, n):
        return []

    def subproof(m: int, leaves: Sequence[bytes], complete: bool) -> list[bytes]:
        size = len(leaves)
        if m == size:
            return [] if complete else [merkle_root(leaves)]
        k = _split(size)
        if m <= k:
            return subproof(m, leaves[:k], complete) + [merkle_root(leaves[k:])]
        return subproof(m - k, leaves[k:], False) + [merkle_root(leaves[:k])]

    return subproof(old_size, leaf_hashes, True)


def _check_size(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise VerificationError(f"{name} must be an integer, got {type(value).__name__}")
    return value


def _check_root(name: str, value: object) -> bytes:
    if not isinstance(value, (bytes, bytearray)) or len(value) != 32:
        raise VerificationError(f"{name} must be a 32-byte hash")
    return bytes(value)


def _check_proof_hashes(proof: Sequence[bytes]) -> list[bytes]:
    if not isinstance(proof, (list, tuple)):
        raise VerificationError("proof must be a list of hashes")
    for h in proof:
        if not isinstance(h, (bytes, bytearray)) or len(h) != 32:
            raise VerificationError("proof contains an entry that is not a 32-byte hash")
    return [bytes(h) for h in proof]


def verify_inclusion(
    leaf: bytes, index: int, tree_size: int, proof: Sequence[bytes], root: bytes
) -> None:
    """Check that ``leaf`` (a leaf *hash*) is at ``index`` in the tree of ``tree_size`` with ``root``.

    RFC 9162 §2.1.3.2. Returns ``None`` or raises.

    Raises:
        VerificationError: the proof does not lead to ``root``, has the wrong length, or the
            index is out of range.
    """
    path = _check_proof_hashes(proof)
    leaf, root = _check_root("leaf", leaf), _check_root("root", root)
    index, tree_size = _check_size("index", index), _check_size("tree_size", tree_size)
    if not 0 <= index < tree_size:
        raise VerificationError(f"leaf index {index} is outside a tree of size {tree_size}")
    fn, sn = index, tree_size - 1
    r = bytes(leaf)
    for p in path:
        if sn == 0:
            raise VerificationError("inclusion proof is longer than the tree is deep")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise VerificationError("inclusion proof is shorter than the tree is deep")
    if not hmac.compare_digest(r, bytes(root)):
        raise VerificationError(f"inclusion proof for leaf {index} does not lead to the root")


def verify_consistency(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> None:
    """Check that the tree of ``old_size`` with ``old_root`` is a prefix of the one of ``new_size``.

    RFC 9162 §2.1.4.2. Returns ``None`` or raises.

    Raises:
        VerificationError: sizes out of order, or the proof does not reproduce both roots.
    """
    path = _check_proof_hashes(proof)
    old_root, new_root = _check_root("old_root", old_root), _check_root("new_root", new_root)
    old_size, new_size = _check_size("old_size", old_size), _check_size("new_size", new_size)
    if not 0 <= old_size <= new_size:
        raise VerificationError(f"old size {old_size} is larger than new size {new_size}")
    if old_size == new_size:
        if path:
            raise VerificationError("a consistency proof between equal sizes must be empty")
        if not hmac.compare_digest(bytes(old_root), bytes(new_root)):
            raise VerificationError("equal tree sizes with different roots")
        return
    if old_size == 0:
        if path:
            raise VerificationError("a consistency proof from the empty tree must be empty")
        return
    if not path:
        raise VerificationError("consistency proof is empty")
    if old_size & (old_size - 1) == 0:  # a power of two: the old root is the first node
        path = [bytes(old_root), *path]
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise VerificationError("consistency proof is longer than needed")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise VerificationError("consistency proof is shorter than needed")
    if not hmac.compare_digest(fr, bytes(old_root)):
        raise VerificationError(f"consistency proof does not reproduce the root of size {old_size}")
    if not hmac.compare_digest(sr, bytes(new_root)):
        raise VerificationError(f"consistency proof does not reproduce the root of size {new_size}")


class CompactRange:
    """The RFC 6962 root of a growing log in O(log n) memory and time per leaf.

    Holds the roots of the perfect subtrees that make up the first ``size`` leaves (one per set
    bit of ``size``); :meth:`root` folds them right to left, which is exactly MTH of the prefix.
    """

    def __init__(self) -> None:
        self.size = 0
        self._peaks: list[bytes] = []  # left to right, largest subtree first

    def append(self, leaf: bytes) -> None:
        """Add one leaf *hash*."""
        node = require_bytes("leaf hash", leaf, length=32)
        self.size += 1
        # Merge equal-sized subtrees: one merge per trailing zero bit of the new size.
        size = self.size
        while size % 2 == 0:
            node = node_hash(self._peaks.pop(), node)
            size //= 2
        self._peaks.append(node)

    def root(self) -> bytes:
        """MTH of the leaves appended so far (``EMPTY_ROOT`` for none)."""
        if not self._peaks:
            return EMPTY_ROOT
        node = self._peaks[-1]
        for peak in reversed(self._peaks[:-1]):
            node = node_hash(peak, node)
        return node
