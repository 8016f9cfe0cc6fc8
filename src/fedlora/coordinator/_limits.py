"""Per-identity limits on rejected submissions, and the de-duplication of their audit entries.

A client whose submissions keep failing (a broken build, or a hostile one resending a partial
decryption with a huge proof response) must not be able to make the coordinator verify forever,
nor flood the audit log. Each identity has a bucket of ``burst`` rejections that refills at one
per ``refill_s`` seconds; with the bucket empty its submissions are refused before any work. An
audit entry is written for the first rejection of each (event, identity, reason code) in a
round; the repeats are counted and written as one ``rejections_repeated`` entry when the round
ends. The reason code is the reason without what a sender chooses (numbers, hex, quoted text): a
hostile client varying a value it sends (a proof response's length) still makes one entry, and at
most :data:`CODES` distinct codes per event and identity a round; further ones share one.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

BURST = 16
REFILL_S = 15.0
CODES = 4  # distinct reason codes written per (event, identity) in a round
OTHER = "other reasons (see the first entries of this round)"
_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")
_VALUES = re.compile(r"\b[0-9a-fA-F]{8,}\b|\d+(?:[.,]\d+)*")


def reason_code(reason: str) -> str:
    """``reason`` with every value a sender could choose replaced: quoted text by ``'…'``, numbers
    and hex by ``#``; capped at 160 characters."""
    return _VALUES.sub("#", _QUOTED.sub("'…'", reason))[:160]


@dataclass
class _Bucket:
    tokens: float
    updated: float


@dataclass
class RejectionLimiter:
    clock: Callable[[], float]
    burst: int = BURST
    refill_s: float = REFILL_S
    _buckets: dict[str, _Bucket] = field(default_factory=dict)
    _repeats: dict[tuple[str, str, str], int] = field(default_factory=dict)

    def _bucket(self, identity: str) -> _Bucket:
        now = self.clock()
        b = self._buckets.setdefault(identity, _Bucket(float(self.burst), now))
        b.tokens = min(float(self.burst), b.tokens + (now - b.updated) / self.refill_s)
        b.updated = now
        return b

    def allowed(self, identity: str) -> bool:
        """Whether ``identity`` may still have a submission examined."""
        return self._bucket(identity).tokens >= 1.0

    def rejected(self, identity: str) -> None:
        b = self._bucket(identity)
        b.tokens = max(0.0, b.tokens - 1.0)

    def first(self, event: str, identity: str, reason: str) -> bool:
        """True for the first (event, identity, reason code) since the last :meth:`drain`, for at
        most :data:`CODES` codes of an (event, identity); counts the repeats."""
        key = (event, identity, reason_code(reason))
        if key not in self._repeats:
            codes = sum(1 for e, i, _ in self._repeats if (e, i) == (event, identity))
            if codes >= CODES:
                key = (event, identity, OTHER)
        if key in self._repeats:
            self._repeats[key] += 1
            return False
        self._repeats[key] = 0
        return True

    def repeated(self) -> int:
        """How many rejections were counted, not written, since the last :meth:`drain`."""
        return sum(self._repeats.values())

    def drain(self) -> list[tuple[str, str, str, int]]:
        """The repeated rejections counted since the last drain, as (event, identity, reason, count)."""
        out = [(*key, n) for key, n in sorted(self._repeats.items()) if n]
        self._repeats.clear()
        return out
