"""The coordinator's key generation relay (``coordinator._keygen.KeygenService``) against a
hostile holder: it cannot make the relay blame an honest holder or hold more than two rounds of
messages per holder, and a holder late to an ended attempt is told why it ended."""

from __future__ import annotations

import os

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedlora import events as ev
from fedlora.coordinator._keygen import KeygenService
from fedlora.crypto import ed25519_public_bytes
from fedlora.errors import AuthorizationError, OutOfRangeError, ProtocolError

HOLDERS = ("a", "b", "c")


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _service(clock: Clock | None = None) -> tuple[KeygenService, list[ev.Event], bytes]:
    recorded: list[ev.Event] = []
    service = KeygenService(
        federation_id="fed",
        holders=HOLDERS,
        threshold=2,
        bits=512,
        signing_keys={h: ed25519_public_bytes(Ed25519PrivateKey.generate()) for h in HOLDERS},
        chunk_bytes=1024,
        round_timeout_s=5,
        record=recorded.append,
        clock=clock or Clock(),
        poll_s=0,
    )
    nonces = {h: os.urandom(32) for h in HOLDERS}
    for h in HOLDERS:
        service.hello(h, nonces[h])
    start = service.hello("a", nonces["a"])
    assert not isinstance(start, list) and service.current is not None
    return service, recorded, service.current.session


def _round(service: KeygenService, session: bytes, number: int) -> None:
    """Every holder posts to every other and collects everything: an honest round."""
    for sender in HOLDERS:
        for recipient in HOLDERS:
            if recipient != sender:
                service.post(sender, session, number, recipient, 0, 3, b"msg")
    for recipient in HOLDERS:
        for sender in HOLDERS:
            if recipient != sender:
                assert service.collect(recipient, session, number, sender, 0) == (3, b"msg")


def test_a_holder_reposting_an_old_round_cannot_stall_or_frame_the_others() -> None:
    # Arrange: two honest rounds.
    service, recorded, session = _service()
    _round(service, session, 1)
    _round(service, session, 2)
    # Act / Assert: "a" re-posts a delivered round-1 message, and an old round: refused.
    with pytest.raises(ProtocolError, match="out of turn"):
        service.post("a", session, 1, "b", 0, 3, b"old")
    with pytest.raises(ProtocolError, match="out of turn"):
        service.post("a", session, 2, "c", 0, 3, b"old")
    # ... and the honest holders carry on into round 3, nobody blamed.
    _round(service, session, 3)
    assert not [e for e in recorded if isinstance(e, ev.KeygenAborted)]


def test_a_holder_cannot_run_ahead_nor_post_oversized_messages() -> None:
    service, _, session = _service()
    with pytest.raises(ProtocolError, match="out of turn"):
        service.post("a", session, 2, "b", 0, 3, b"far")  # round 1 first
    service.post("a", session, 1, "b", 0, 3, b"one")
    with pytest.raises(ProtocolError, match="out of turn"):
        service.post("a", session, 2, "b", 0, 3, b"two")  # b and c still in round 0
    with pytest.raises(OutOfRangeError):
        service.post("a", session, 1, "c", 0, 3, b"x" * 2048)  # above the chunk size
    with pytest.raises(ProtocolError, match="not another holder"):
        service.post("a", session, 1, "a", 0, 3, b"own")
    with pytest.raises(AuthorizationError):
        service.post("mallory", session, 1, "a", 0, 3, b"x")


def test_the_silent_holder_is_blamed_and_late_callers_learn_why() -> None:
    # Arrange: "c" never posts round 2.
    clock = Clock()
    service, recorded, session = _service(clock)
    _round(service, session, 1)
    for sender in ("a", "b"):
        for recipient in HOLDERS:
            if recipient != sender:
                service.post(sender, session, 2, recipient, 0, 3, b"msg")
    # Act: the step deadline passes while "a" waits for c's message.
    clock.now = 10
    with pytest.raises(ProtocolError, match="c stopped answering"):
        service.collect("a", session, 2, "c", 0)
    # Assert: c is blamed in the log, and b, calling late, is told why the attempt ended.
    aborted = [e for e in recorded if isinstance(e, ev.KeygenAborted)]
    assert len(aborted) == 1 and aborted[0].party == "c"
    with pytest.raises(ProtocolError, match=r"c stopped answering.*blames c"):
        service.collect("b", session, 2, "c", 0)
