"""Typed audit events: what the coordinator writes is what replay and auditors read back."""

from __future__ import annotations

import json

import pytest

from fedlora import events as ev
from fedlora.audit import canonical_json
from fedlora.errors import VerificationError


def _line(event: ev.Event, index: int = 7) -> dict:
    return json.loads(
        canonical_json({"event": event.kind, "index": index, "time_ms": 1, **event.fields()})
    )


def test_every_kind_round_trips_through_a_log_line() -> None:
    samples = [
        ev.RoundOpened(round=2, global_version=1, deadline_ms=5, global_digest="ab"),
        ev.RoundFailed(round=2, stage="collecting", reason="late", contributions=[], partials=[]),
        ev.SubmissionThrottled(reason="busy", round=1, party="bank-a", kind_of="contribution"),
        ev.GlobalPublished(version=3, global_digest="cd"),
        ev.ConfigChanged(changes={"federated_learning.rounds": [3, 5]}),
        ev.RevocationsLoaded(serial=2, revoked=["bank-b"], issued_at="2026-12-05T12:00:00+00:00"),
        ev.KeygenStarted(attempt=1, session="ab", holders=["a", "b", "c"], threshold=2, bits=512),
        ev.KeygenAborted(attempt=1, session="ab", reason="stalled", party="c"),
        ev.KeyGenerated(
            attempt=2,
            session="cd",
            key_fingerprint="ef",
            public_key={"n": "ff"},
            transcript="01",
            signatures={"a": "02"},
        ),
    ]
    for event in samples:
        assert ev.parse_event(_line(event)) == event
    # The throttled submission's kind is written under the log's own name for it.
    assert _line(samples[2])["kind"] == "contribution"
    # Optional fields left unset are not written at all.
    assert "party" not in _line(samples[1]) and "adapter_digest" not in _line(samples[3])
    assert len(ev.EVENTS) == 28


def test_a_tampered_entry_is_refused_naming_its_index_kind_and_field() -> None:
    line = _line(ev.TicketSigned(round=1, party="bank-a", ticket="aa", signature="bb"), index=12)
    with pytest.raises(
        VerificationError, match=r"audit entry 12 \(ticket_signed\) has a 'round' of the wrong type"
    ):
        ev.parse_event({**line, "round": "1"})
    with pytest.raises(
        VerificationError, match=r"audit entry 12 \(ticket_signed\) has no 'signature'"
    ):
        ev.parse_event({k: v for k, v in line.items() if k != "signature"})
    with pytest.raises(VerificationError, match="wrong type"):
        ev.parse_event({**line, "round": True})  # a bool is not a round number


def test_an_unknown_kind_is_not_guessed_at() -> None:
    assert ev.parse_event({"event": "from_the_future", "index": 0, "time_ms": 0}) is None
