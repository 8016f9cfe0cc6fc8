"""The rejection limiter: what a hostile identity can make the coordinator write."""

from __future__ import annotations

from fedlora.coordinator._limits import CODES, OTHER, RejectionLimiter, reason_code


def test_reason_codes_drop_what_the_sender_chooses() -> None:
    a = "proof response of 1048831 bits is above the public bound 4200"
    b = "proof response of 1048839 bits is above the public bound 4200"
    assert (
        reason_code(a) == reason_code(b) == "proof response of # bits is above the public bound #"
    )
    assert reason_code("spec differs: 'model.lora.rank' is 'x' not 'y'") == (
        "spec differs: '…' is '…' not '…'"
    )
    assert reason_code("digest 9f86d081884c7d65 differs") == "digest # differs"
    assert len(reason_code("x" * 10_000)) == 160


def test_one_identity_writes_a_bounded_number_of_entries_per_round() -> None:
    limiter = RejectionLimiter(clock=lambda: 0.0)
    written = [
        limiter.first("partial_rejected", "mallory", f"reason {chr(97 + i % 26) * (i + 1)}")
        for i in range(100)
    ]
    assert sum(written) == CODES + 1  # CODES distinct codes, then one entry for all the rest
    drained = limiter.drain()
    assert sum(count for *_, count in drained) == 100 - (CODES + 1)
    assert any(reason == OTHER for _, _, reason, _ in drained)
    # Another identity and another round start afresh.
    assert limiter.first("partial_rejected", "bank-a", "reason a")
    assert limiter.first("partial_rejected", "mallory", "reason a")
