"""One malicious client cannot halt the federation or exhaust the coordinator.

A real coordinator over mTLS; honest parties are real clients with real ledgers; the attacker is a
real enrolled party that sends what it likes over the real gRPC API.
"""

from __future__ import annotations

import json
import threading
import time

import grpc
import pytest

from fedlora.audit import read_log_files
from fedlora.config import load_coordinator_config
from fedlora.coordinator import build_engine
from fedlora.coordinator._limits import BURST
from fedlora.crypto import (
    ciphertext_vector_digest,
    ciphertext_width,
    partial_decrypt,
    partial_statement_digest,
    sign_digest,
)
from fedlora.protocol import unpack_records
from fedlora.v1 import common_pb2, federation_pb2
from tests.adversarial import lying
from tests.integration import helpers as h
from tests.integration.helpers import prepare_federation

BITS = 512
ATTACKER = "bank-e"


def _events(state_dir):  # type: ignore[no-untyped-def]
    entries, _, _ = read_log_files(state_dir)
    return [json.loads(line) for line in entries.rstrip(b"\n").split(b"\n")]


def _wait(condition, seconds: float = 20) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert condition()


def _overflowing(layout, engine) -> tuple:  # type: ignore[no-untyped-def]
    """A validly signed contribution whose plaintexts fill every slot to the brim."""
    codec = engine.codec
    full = (1 << (codec.slots_per_ciphertext * codec.slot_bits)) - 1
    return h.contribution(layout, ATTACKER, 1, plaintexts=[full] * engine.record_count)


def _decrypt_round(layout, pids, round_number: int) -> None:  # type: ignore[no-untyped-def]
    """Real holders check the task, sign the ticket and release partials once the quorum shows."""
    holders = [lying.holder(layout, pid) for pid in pids]
    pending = [c for c in holders if not c.decrypt(round_number)]
    assert len(pending) == len(holders) - 1  # the last signer completed the quorum and released
    for c in pending[:2]:  # with it, t = 3 partials
        assert c.decrypt(round_number)


def _overflowed_round(layout, engine) -> None:  # type: ignore[no-untyped-def]
    """Four honest contributions and one that overflows every slot; holders decrypt; round 2 opens."""
    for pid in layout.client_configs:
        if pid != ATTACKER:
            h.upload(layout, pid, *h.contribution(layout, pid, 1))
    h.upload(layout, ATTACKER, *_overflowing(layout, engine))
    _wait(lambda: engine.stage.value == "ticketing")
    _decrypt_round(layout, ["bank-a", "bank-b", "hospital-c", "hospital-d"], 1)
    _wait(lambda: engine.round is not None and engine.round.number == 2)


def _cut_log(state_dir, keep: int) -> None:  # type: ignore[no-untyped-def]
    """Simulate a crash after entry ``keep - 1``: drop later entries and their checkpoints."""
    audit = state_dir / "audit"
    for name in ("entries.log", "checkpoints.log"):
        lines = (audit / name).read_bytes().splitlines(keepends=True)
        (audit / name).write_bytes(b"".join(lines[:keep]))


def test_an_overflowing_contribution_fails_its_round_and_the_next_opens(tmp_path) -> None:
    # Arrange: four honest contributions and one that overflows every slot of the sum.
    layout = prepare_federation(tmp_path, bits=BITS, rounds=2, participant_threshold=5)
    config = load_coordinator_config(layout.coordinator_config)
    running = h.serve(layout, config)
    engine = running.engine
    try:
        # Act: the honest holders decrypt; the sum cannot be decoded.
        _overflowed_round(layout, engine)
        status = h.stub(layout, "bank-a").GetRound(federation_pb2.RoundQuery())
    finally:
        running.stop(grace=1)
    # Assert: round 1 failed with the reason, nothing was published, round 2 is collecting.
    events = _events(config.state_dir)
    failed = [e for e in events if e["event"] == "round_failed"]
    assert len(failed) == 1 and failed[0]["round"] == 1 and failed[0]["stage"] == "combining"
    assert "overflowed" in failed[0]["reason"]
    assert not any(e["event"] == "round_closed" for e in events)
    assert status.round == 2 and status.stage == common_pb2.ROUND_STAGE_COLLECTING


def test_a_restart_into_the_same_fault_fails_the_round_instead_of_wedging(tmp_path) -> None:
    # Arrange: as above, then the coordinator "crashed" just before it wrote the failure: the
    # log is cut back to the last accepted partial decryption (real files, the real replay).
    layout = prepare_federation(tmp_path, bits=BITS, rounds=2, participant_threshold=5)
    config = load_coordinator_config(layout.coordinator_config)
    running = h.serve(layout, config)
    try:
        _overflowed_round(layout, running.engine)
    finally:
        running.stop(grace=1)
    events = _events(config.state_dir)
    last_partial = max(i for i, e in enumerate(events) if e["event"] == "partial_accepted")
    _cut_log(config.state_dir, last_partial + 1)
    # Act: restart; the replay lands in DECRYPTING with t partials, and the tick combines again.
    engine = build_engine(config)
    assert engine.stage.value == "decrypting" and len(engine.round.partials) >= 3  # type: ignore[union-attr]
    engine.tick()
    # Assert: the fault is a transition again: round 1 failed, round 2 opened, and so on.
    assert engine.round is not None and engine.round.number == 2
    assert engine.stage.value == "collecting"
    events = _events(config.state_dir)
    assert [e["event"] for e in events[last_partial + 1 :]][:3] == [
        "coordinator_restarted",
        "round_failed",
        "round_opened",
    ]


def test_a_huge_proof_response_is_refused_cheaply_rate_limited_and_counted(tmp_path) -> None:
    # Arrange: the quorum is reached and one honest partial is in; the attacker is a holder.
    layout = prepare_federation(tmp_path, bits=BITS, rounds=1, participant_threshold=5)
    config = load_coordinator_config(layout.coordinator_config)
    running = h.serve(layout, config)
    engine = running.engine
    try:
        for pid in layout.client_configs:
            h.upload(layout, pid, *h.contribution(layout, pid, 1))
        _wait(lambda: engine.stage.value == "ticketing")
        honest = [lying.holder(layout, pid) for pid in ("bank-a", "bank-b", "hospital-c")]
        assert not any(c.decrypt(1) for c in honest)
        assert lying.holder(layout, "hospital-d").decrypt(1)  # 4th signature: quorum, 1 partial
        attacker = lying.holder(layout, ATTACKER)
        assert attacker.member.key is not None and attacker.member.share is not None
        key, width = attacker.member.key, ciphertext_width(attacker.member.key.paillier)
        aggregate = unpack_records(engine.store.aggregate_path(1).read_bytes(), width)
        partial = partial_decrypt(key, attacker.member.share, aggregate)
        z = partial.proof.response << (1 << 20)  # a 1 Mibit response
        values = b"".join(v.to_bytes(width, "big") for v in partial.values)
        statement = partial_statement_digest(
            federation_id=config.federation_id,
            round_number=1,
            party_id=ATTACKER,
            ticket=engine.round.ticket,  # type: ignore[union-attr]
            first_record=0,  # the aggregate is one chunk here
            ciphertexts_digest=partial.ciphertexts_digest,
            values_digest=ciphertext_vector_digest(key.paillier, partial.values),
            challenge=partial.proof.challenge,
            response=z,
        )
        header = federation_pb2.PartialHeader(
            round=1,
            ciphertexts_digest=partial.ciphertexts_digest,
            proof_challenge=partial.proof.challenge.to_bytes(32, "big"),
            proof_response=z.to_bytes((z.bit_length() + 7) // 8, "big"),
            record_count=len(partial.values),
            ticket_digest=engine.round.ticket,  # type: ignore[union-attr]
            statement_signature=sign_digest(h.signing_key(layout, ATTACKER), statement),
        )
        stub = h.stub(layout, ATTACKER)
        codes, slowest = [], 0.0
        # Act: the attacker resends it again and again, each time a few bits longer (so each
        # refusal's text differs: de-duplication must not key on values the sender chooses).
        for i in range(BURST + 4):
            z = partial.proof.response << ((1 << 20) + 8 * i)
            header.proof_response = z.to_bytes((z.bit_length() + 7) // 8, "big")
            header.statement_signature = sign_digest(
                h.signing_key(layout, ATTACKER),
                partial_statement_digest(
                    federation_id=config.federation_id,
                    round_number=1,
                    party_id=ATTACKER,
                    ticket=engine.round.ticket,  # type: ignore[union-attr]
                    first_record=0,
                    ciphertexts_digest=partial.ciphertexts_digest,
                    values_digest=ciphertext_vector_digest(key.paillier, partial.values),
                    challenge=partial.proof.challenge,
                    response=z,
                ),
            )
            started = time.monotonic()
            try:
                stub.SubmitPartialDecryption(
                    iter(
                        [
                            federation_pb2.PartialChunk(header=header),
                            federation_pb2.PartialChunk(data=values),
                        ]
                    )
                )
                codes.append(grpc.StatusCode.OK)
            except grpc.RpcError as exc:
                codes.append(exc.code())  # type: ignore[attr-defined]
            slowest = max(slowest, time.monotonic() - started)
            status = h.stub(layout, "bank-a").GetRound(federation_pb2.RoundQuery())
            assert status.stage == common_pb2.ROUND_STAGE_DECRYPTING  # still answering
        # The honest holders finish the round regardless.
        assert all(c.decrypt(1) for c in honest[:2])
        _wait(lambda: engine.finished)
    finally:
        running.stop(grace=1)
    # Assert: each attempt is refused on its size (no exponentiation: well under a second), then
    # refused unexamined; one audit entry per distinct refusal, the repeats counted at round end.
    assert (
        codes
        == [grpc.StatusCode.INVALID_ARGUMENT] * BURST + [grpc.StatusCode.RESOURCE_EXHAUSTED] * 4
    )
    assert slowest < 1.0, slowest
    events = _events(config.state_dir)
    rejected = [e for e in events if e["event"] == "partial_rejected"]
    assert len(rejected) == 1 and "above the public bound" in rejected[0]["reason"]
    throttled = [e for e in events if e["event"] == "submission_throttled"]
    assert len(throttled) == 1 and throttled[0]["party"] == ATTACKER
    repeated = {
        e["rejected_event"]: e["count"] for e in events if e["event"] == "rejections_repeated"
    }
    assert repeated == {"partial_rejected": BURST - 1, "submission_throttled": 3}
    assert [e["event"] for e in events].count("round_closed") == 1


@pytest.mark.parametrize("what", ["manifest", "ticket"])
def test_ticket_signatures_for_another_ticket_are_refused_and_audited(tmp_path, what) -> None:
    layout = prepare_federation(tmp_path, bits=BITS, rounds=1, participant_threshold=5)
    config = load_coordinator_config(layout.coordinator_config)
    running = h.serve(layout, config)
    try:
        for pid in layout.client_configs:
            h.upload(layout, pid, *h.contribution(layout, pid, 1))
        _wait(lambda: running.engine.stage.value == "ticketing")
        other = b"\x07" * 32
        signature = sign_digest(h.signing_key(layout, ATTACKER), other)
        if what == "ticket":  # a signature on some other ticket
            request = federation_pb2.TicketSubmission(
                round=1, ticket_digest=other, signature=signature
            )
        else:  # the right ticket, a signature that does not verify
            request = federation_pb2.TicketSubmission(
                round=1, ticket_digest=running.engine.round.ticket, signature=signature
            )
        with pytest.raises(grpc.RpcError) as raised:
            h.stub(layout, ATTACKER).SubmitTicket(request)
    finally:
        running.stop(grace=1)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    events = _events(config.state_dir)
    assert [e["party"] for e in events if e["event"] == "ticket_rejected"] == [ATTACKER]
    assert not any(e["event"] == "ticket_signed" for e in events)


def _decrypting(tmp_path):  # type: ignore[no-untyped-def]
    """A round with its quorum and one accepted partial (from hospital-d)."""
    layout = prepare_federation(tmp_path, bits=BITS, rounds=1, participant_threshold=5)
    config = load_coordinator_config(layout.coordinator_config)
    running = h.serve(layout, config)
    for pid in layout.client_configs:
        h.upload(layout, pid, *h.contribution(layout, pid, 1))
    _wait(lambda: running.engine.stage.value == "ticketing")
    waiting = [lying.holder(layout, pid) for pid in ("bank-a", "bank-b", "hospital-c")]
    assert not any(c.decrypt(1) for c in waiting)
    assert lying.holder(layout, "hospital-d").decrypt(1)
    return layout, config, running, waiting


def _stalled_partial(layout, party: str, release: threading.Event, engine=None):  # type: ignore[no-untyped-def]
    """Open a partial-decryption stream that sends its header and then stalls (with ``engine``,
    a header that passes every check, so the stream is being examined while it stalls)."""
    header = federation_pb2.PartialHeader(round=1, ticket_digest=b"\x01" * 32)
    if engine is not None:
        header = federation_pb2.PartialHeader(
            round=1,
            ticket_digest=engine.round.ticket,
            ciphertexts_digest=engine.round.aggregate_digest,  # the aggregate is one chunk
            proof_challenge=b"\x01",
            proof_response=b"\x01",
            record_count=engine.record_count,
            statement_signature=b"\x00" * 64,
        )

    def messages():  # type: ignore[no-untyped-def]
        yield federation_pb2.PartialChunk(header=header)
        release.wait(30)
        yield federation_pb2.PartialChunk(data=b"\x00" * 16)

    outcome: dict[str, object] = {}

    def run() -> None:
        try:
            h.stub(layout, party).SubmitPartialDecryption(messages())
            outcome["code"] = grpc.StatusCode.OK
        except grpc.RpcError as exc:
            outcome["code"] = exc.code()  # type: ignore[attr-defined]

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


def test_a_stream_that_never_ends_freezes_nothing(tmp_path) -> None:
    # Arrange: hospital-d's partial is accepted; it resends one and stalls mid-stream, and
    # bank-e opens a stalled one of its own (with a wrong ticket).
    layout, config, running, waiting = _decrypting(tmp_path)
    release = threading.Event()
    try:
        stalled = [
            _stalled_partial(layout, "hospital-d", release, running.engine),
            _stalled_partial(layout, ATTACKER, release, running.engine),
        ]
        time.sleep(0.5)
        # Act / Assert: status, tickets and the other holders' partials go on meanwhile.
        started = time.monotonic()
        status = h.stub(layout, "bank-a").GetRound(federation_pb2.RoundQuery(), timeout=3)
        assert (
            time.monotonic() - started < 1.0 and status.stage == common_pb2.ROUND_STAGE_DECRYPTING
        )
        assert all(c.decrypt(1) for c in waiting[:2])
        _wait(lambda: running.engine.finished)
    finally:
        release.set()
        running.stop(grace=1)
    for thread, _ in stalled:
        thread.join(10)
    assert [e["event"] for e in _events(config.state_dir)].count("round_closed") == 1


def test_concurrent_submissions_from_one_identity_are_examined_one_at_a_time(tmp_path) -> None:
    # Arrange: the attacker holds one partial-decryption stream open (being examined)...
    layout, config, running, _ = _decrypting(tmp_path)
    release = threading.Event()
    try:
        thread, _ = _stalled_partial(layout, ATTACKER, release, running.engine)
        time.sleep(0.5)
        # Act: ...and fires more at the same time.
        codes = []
        for _ in range(5):
            with pytest.raises(grpc.RpcError) as raised:
                h.stub(layout, ATTACKER).SubmitPartialDecryption(
                    iter(
                        [federation_pb2.PartialChunk(header=federation_pb2.PartialHeader(round=1))]
                    )
                )
            codes.append(raised.value.code())
    finally:
        release.set()
        running.stop(grace=1)
        thread.join(10)
    # Assert: refused unexamined while the first is in flight; one audit entry, the rest counted.
    assert codes == [grpc.StatusCode.RESOURCE_EXHAUSTED] * 5
    throttled = [e for e in _events(config.state_dir) if e["event"] == "submission_throttled"]
    assert len(throttled) == 1 and "being examined" in throttled[0]["reason"]


def test_a_restart_between_the_last_ticket_signature_and_the_quorum_entry_moves_on(
    tmp_path,
) -> None:
    # Arrange: the quorum was reached, then the coordinator "crashed" before writing
    # ticket_quorum (the log is cut there: real files, the real replay).
    _, config, running, _ = _decrypting(tmp_path)
    running.stop(grace=1)
    cut = next(i for i, e in enumerate(_events(config.state_dir)) if e["event"] == "ticket_quorum")
    _cut_log(config.state_dir, cut)
    # Act
    engine = build_engine(config)
    assert engine.stage.value == "ticketing" and len(engine.round.ticket_signatures) >= 4  # type: ignore[union-attr]
    engine.tick()
    # Assert: the quorum is recognised; holders can release their partials again.
    assert engine.stage.value == "decrypting"
    assert _events(config.state_dir)[-1]["event"] == "ticket_quorum"


def test_audit_queries_out_of_range_are_refused_as_such(tmp_path) -> None:
    """A member asking for entries, proofs or sizes past the log gets OUT_OF_RANGE (its own
    mistake, said as one), never INTERNAL; the service goes on answering."""
    from fedlora.v1 import audit_pb2, audit_pb2_grpc

    layout = prepare_federation(tmp_path, bits=BITS, rounds=1)
    running = h.serve(layout)
    try:
        h.stub(layout, "bank-a").Join(h.join_request(layout, "bank-a"))
        audit = audit_pb2_grpc.AuditStub(h.channel(layout, "bank-a"))
        deadline = time.monotonic() + 10  # the round opens on the engine's tick: let it settle
        while b'"round_opened"' not in b"".join(running.engine.audit.entries()):
            assert time.monotonic() < deadline, "round 1 never opened"
            time.sleep(0.05)
        size = running.engine.audit.size
        asks = [
            lambda: list(audit.GetEntries(audit_pb2.AuditQuery(start=size + 1))),
            lambda: list(audit.GetEntries(audit_pb2.AuditQuery(start=(1 << 64) - 1, limit=5))),
            lambda: audit.GetInclusionProof(
                audit_pb2.InclusionQuery(index=10**12, tree_size=10**12 + 1)
            ),
            lambda: audit.GetInclusionProof(audit_pb2.InclusionQuery(index=3, tree_size=2)),
            lambda: audit.GetConsistencyProof(audit_pb2.ConsistencyQuery(from_size=5, to_size=2)),
            lambda: audit.GetConsistencyProof(
                audit_pb2.ConsistencyQuery(from_size=0, to_size=(1 << 64) - 1)
            ),
        ]
        for ask in asks:
            with pytest.raises(grpc.RpcError) as caught:
                ask()
            assert caught.value.code() == grpc.StatusCode.OUT_OF_RANGE, caught.value.details()
        # In range, all is served: the whole log, and the tail when a reader is up to date.
        assert len(list(audit.GetEntries(audit_pb2.AuditQuery(start=0)))) == size
        assert list(audit.GetEntries(audit_pb2.AuditQuery(start=size))) == []
    finally:
        running.stop(grace=1)


def test_undecodable_messages_make_one_log_line_not_tracebacks(tmp_path, caplog) -> None:
    """A client sending bytes that are not protobuf, fifty times: gRPC refuses each, and the
    coordinator's log gets one line naming the message type, not fifty tracebacks."""
    import logging

    layout = prepare_federation(tmp_path, bits=BITS, rounds=1)
    running = h.serve(layout)
    caplog.set_level(logging.INFO)
    try:
        channel = h.channel(layout, "bank-a")
        join = channel.unary_unary("/fedlora.v1.Federation/Join")
        for _ in range(50):
            with pytest.raises(grpc.RpcError):
                join(b"\xff\xff\xff\x07not protobuf")
        # The service is unharmed.
        assert h.stub(layout, "bank-a").Join(h.join_request(layout, "bank-a")).federation_id
    finally:
        running.stop(grace=1)
    lines = [r for r in caplog.records if "undecodable" in r.getMessage()]
    assert len(lines) == 1, [r.getMessage() for r in lines]
    assert lines[0].getMessage() == (
        "refused an undecodable fedlora.v1.JoinRequest from a client (not valid protobuf)"
    )
    assert not any(r.exc_info for r in caplog.records)
