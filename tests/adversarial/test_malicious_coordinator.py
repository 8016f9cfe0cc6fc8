"""A coordinator that deviates from the protocol learns no single client's update.

Each test runs the real coordinator (engine, store, audit log, gRPC server over mTLS) with its
decryption path replaced by attacker-chosen views (``tests/adversarial/lying.py``), against real
clients with their real, durable ledgers. Every attack is one that worked before this change:
the same round decrypted twice with different subsets, an old round relabelled as new, a manifest
whose round differs from the task's, a split view with 2t ≤ n holders, forged receipts, and a
forked or shortened audit log.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time

import gmpy2
import grpc
import pytest
import yaml

from fedlora.client._ledger import AnchorError, CheckpointAnchor
from fedlora.config import load_client_config, load_coordinator_config
from fedlora.coordinator import Coordinator, build_engine
from fedlora.coordinator._collecting import Collecting
from fedlora.crypto import encrypt_batch, receipt_digest, sign_digest
from fedlora.errors import ConfigError, VerificationError
from fedlora.protocol import unpack_records
from tests.adversarial import lying
from tests.integration import helpers as h
from tests.integration.helpers import prepare_federation

BITS = 512
SIX = (
    ("bank-a", "bank"),
    ("bank-b", "bank"),
    ("hospital-c", "hospital"),
    ("hospital-d", "hospital"),
    ("bank-e", "bank"),
    ("bank-f", "bank"),
)
VICTIM = "bank-b"


def _collect_round_1(layout, engine) -> list[str]:  # type: ignore[no-untyped-def]
    """Every party uploads a real, signed round-1 contribution; the engine fixes the aggregate."""
    pids = list(layout.client_configs)
    h.join_all(layout)  # every party is in: the round waits for all their uploads
    for pid in pids:
        h.upload(layout, pid, *h.contribution(layout, pid, 1))
    deadline = time.monotonic() + 20
    while engine.stage.value != "ticketing" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert engine.stage.value == "ticketing"
    return pids


@pytest.fixture()
def five(tmp_path):  # type: ignore[no-untyped-def]
    layout = prepare_federation(
        tmp_path, bits=BITS, rounds=3, participant_threshold=4, decryption_threshold=3
    )
    engine, running = lying.start(layout)
    h.join_all(layout)  # all five are in the federation: round 1 waits for all five uploads
    yield layout, engine
    running.stop(grace=1)


def test_the_same_round_twice_with_a_subset_is_refused_even_after_a_restart(five) -> None:
    # Arrange: round 1 is decrypted honestly once (a 3-of-5 key, quorum 4).
    layout, engine = five
    pids = _collect_round_1(layout, engine)
    engine.views[("*", 1)] = lying.view(engine, 1, pids)
    holders = {pid: lying.holder(layout, pid) for pid in pids}
    done = {pid: holders[pid].decrypt(1) for pid in pids[:4]}
    assert done == {pids[0]: False, pids[1]: False, pids[2]: False, pids[3]: True}
    assert all(holders[pid].decrypt(1) for pid in pids[:3])  # the quorum is now visible
    (t1,) = engine.signatures
    assert len(engine.partials) == 4 and {p.ticket_digest for _, p in engine.partials} == {t1}
    # Act: the attacker asks for round 1 again without the victim (4 >= min_participants),
    # to every holder, from fresh processes (a restart: only the ledger on disk remembers).
    without_victim = [p for p in pids if p != VICTIM]
    engine.views[("*", 1)] = lying.view(engine, 1, without_victim)
    for pid in pids[:4]:
        restarted = lying.holder(layout, pid)
        # Assert: each refuses, and says so in its own ledger.
        with pytest.raises(VerificationError, match="already signed a different decryption ticket"):
            restarted.decrypt(1)
        assert restarted.member.ledger.refusals()[-1]["round"] == 1
    # The one holder that never signed round 1 signs the subset's ticket, but alone with the
    # attacker it is far from the quorum: it releases nothing.
    assert lying.holder(layout, pids[4]).decrypt(1) is False
    assert len(engine.partials) == 4 and {p.ticket_digest for _, p in engine.partials} == {t1}
    assert "partial_released" not in lying.ledger_kinds(layout, pids[4])


def test_an_old_round_relabelled_as_new_is_refused(five) -> None:
    # Arrange: round 1's aggregate was decrypted; its signed contributions are on the attacker's disk.
    layout, engine = five
    pids = _collect_round_1(layout, engine)
    engine.views[("*", 1)] = lying.view(engine, 1, pids)
    holders = {pid: lying.holder(layout, pid) for pid in pids}
    for pid in pids[:4]:
        holders[pid].decrypt(1)
    without_victim = [p for p in pids if p != VICTIM]
    # Act 1: a "round 2" task whose manifest honestly says round 1 (the exact attack).
    engine.views[("*", 2)] = lying.view(engine, 1, without_victim)
    # Assert 1: the manifest's round must be the task's round.
    for pid in pids:
        with pytest.raises(
            VerificationError, match="manifest is for round 1, but the task is round 2"
        ):
            holders[pid].decrypt(2)
    # Act 2: the same contributions with the manifest relabelled round 2.
    engine.views[("*", 2)] = lying.view(engine, 1, without_victim, manifest_round=2)
    # Assert 2: every contribution was signed for round 1, so none verifies as round 2's.
    for pid in pids:
        with pytest.raises(VerificationError, match="not signed by that peer's key"):
            holders[pid].decrypt(2)
    # Nobody signed anything for round 2, and the only partials are round 1's.
    assert len(engine.signatures) == 1
    assert all(p.round_number == 1 for _, p in engine.partials)
    refusals = holders[pids[0]].member.ledger.refusals()
    assert [r["round"] for r in refusals] == [2, 2]


def test_a_manifest_for_another_round_than_the_task_is_refused_before_signing(five) -> None:
    layout, engine = five
    pids = _collect_round_1(layout, engine)
    engine.views[("*", 3)] = lying.view(engine, 1, pids)  # a task for round 3, manifest round 1
    holder = lying.holder(layout, pids[0])
    with pytest.raises(VerificationError, match="manifest is for round 1, but the task is round 3"):
        holder.decrypt(3)
    assert engine.signatures == {} and engine.partials == []
    assert lying.ledger_kinds(layout, pids[0]) == ["refused"]


def test_a_round_far_ahead_of_the_log_is_refused_and_honest_rounds_go_on(five) -> None:
    """A task for round 4·10⁹ (logged by the attacker as its `aggregated` entry) would, once
    signed, make the holder refuse every honest round as "old": it is refused first, on the
    anchored log's size, and leaves the ledger's round where it was."""
    from fedlora.protocol import check_round_in_log

    layout, engine = five
    pids = _collect_round_1(layout, engine)
    far = 4_000_000_000  # near the top of the wire format's uint32
    engine.views[("*", far)] = lying.view(engine, 1, pids, manifest_round=far)
    holder = lying.holder(layout, pids[0])
    with pytest.raises(VerificationError, match=f"round {far} runs ahead of the coordinator's"):
        holder.decrypt(far)
    assert holder.member.ledger.highest_round == 0 and engine.signatures == {}
    # Round 1 is still decrypted (the attacker's views keep every signature it is given).
    engine.views[("*", 1)] = lying.view(engine, 1, pids)
    holders = {pid: lying.holder(layout, pid) for pid in pids}
    assert [holders[pid].decrypt(1) for pid in pids[:4]][-1] is True
    # The bound itself: a log of n entries holds rounds 1..n // 2, and never round 0.
    check_round_in_log(3, 6)
    for bad in ((4, 7), (0, 100)):
        with pytest.raises(VerificationError, match="runs ahead"):
            check_round_in_log(*bad)


def test_a_colluding_contributor_cannot_cancel_the_others_out_of_the_aggregate(five) -> None:
    # Arrange: four honest uploads; the attacker gives the colluder bank-e three of them, and
    # bank-e uploads their inverse times E(0) — validly signed by bank-e, in Z*_(n²), bound to
    # the round — so that the round's "aggregate" decrypts to hospital-d's update alone.
    layout, engine = five
    honest = ["bank-a", "bank-b", "hospital-c", "hospital-d"]
    for pid in honest:
        h.upload(layout, pid, *h.contribution(layout, pid, 1))
    key = h.threshold_key(layout)
    pk, n2 = key.paillier, key.nsquare
    cancelled = None
    for pid in honest[:3]:
        cts = unpack_records(engine.store.contribution_path(1, pid).read_bytes(), engine.width)
        cancelled = cts if cancelled is None else [a * b % n2 for a, b in zip(cancelled, cts)]
    assert cancelled is not None
    zeros = encrypt_batch(pk, [0] * len(cancelled))
    mauled = [int(gmpy2.invert(c, n2)) * z % n2 for c, z in zip(cancelled, zeros)]
    # The colluder's best effort at a proof: a genuine one, for a vector it did encrypt itself.
    decoy = h.contribution(layout, "bank-e", 1)[0].knowledge_proof
    h.upload(
        layout, "bank-e", *h.contribution(layout, "bank-e", 1, ciphertexts=mauled, proof=decoy)
    )
    deadline = time.monotonic() + 20
    while engine.stage.value != "ticketing" and time.monotonic() < deadline:
        time.sleep(0.05)
    pids = list(layout.client_configs)
    engine.views[("*", 1)] = lying.view(engine, 1, pids)
    # Act / Assert: every honest holder refuses before signing anything.
    for pid in honest:
        with pytest.raises(VerificationError, match="'bank-e' carries no valid proof"):
            lying.holder(layout, pid).decrypt(1)
        assert lying.ledger_kinds(layout, pid) == ["refused"]
    assert engine.signatures == {} and engine.partials == []


def test_an_honest_coordinator_refuses_a_mauled_contribution_at_intake(tmp_path) -> None:
    layout = prepare_federation(tmp_path, bits=BITS, rounds=1, participant_threshold=5)
    config = load_coordinator_config(layout.coordinator_config)
    running = h.serve(layout, config)
    try:
        h.upload(layout, "bank-a", *h.contribution(layout, "bank-a", 1))
        key = h.threshold_key(layout)
        victim = unpack_records(
            running.engine.store.contribution_path(1, "bank-a").read_bytes(), running.engine.width
        )
        copied = h.contribution(layout, "bank-e", 1, ciphertexts=victim)  # a verbatim copy
        decoy = h.contribution(layout, "bank-e", 1)[0].knowledge_proof
        with pytest.raises(grpc.RpcError) as raised:
            h.upload(layout, "bank-e", copied[0], copied[1])
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        inverse = [int(gmpy2.invert(c, key.nsquare)) for c in victim]
        with pytest.raises(grpc.RpcError, match="does not know what it encrypted"):
            h.upload(
                layout,
                "bank-e",
                *h.contribution(layout, "bank-e", 1, ciphertexts=inverse, proof=decoy),
            )
    finally:
        running.stop(grace=1)
    rejected = [
        e
        for e in (
            json.loads(x)
            for x in (config.state_dir / "audit" / "entries.log").read_text().splitlines()
        )
        if e["event"] == "contribution_rejected" and e["client"] == "bank-e"
    ]
    assert len(rejected) == 2 and "plaintext knowledge" in rejected[1]["reason"]


def test_a_split_view_with_2t_le_n_holders_releases_nothing(tmp_path) -> None:
    # Arrange: 3-of-6 (2t <= n), quorum ⌈(6+3)/2⌉ = 5; two holders collude with the coordinator.
    layout = prepare_federation(
        tmp_path, bits=BITS, parties=SIX, rounds=2, participant_threshold=5, decryption_threshold=3
    )
    engine, running = lying.start(layout)
    try:
        pids = _collect_round_1(layout, engine)
        colluders, group_a, group_b = pids[4:], pids[:2], pids[2:4]
        full = lying.view(engine, 1, pids)
        without_victim = lying.view(engine, 1, [p for p in pids if p != VICTIM])
        for pid in group_a:
            engine.views[(pid, 1)] = full
        for pid in group_b + colluders:
            engine.views[(pid, 1)] = without_victim
        holders = {pid: lying.holder(layout, pid) for pid in group_a + group_b}
        # Act: each honest group checks its aggregate and signs its ticket...
        assert not any(holders[pid].decrypt(1) for pid in group_a + group_b)
        ticket_a, ticket_b = (
            next(t for t, s in engine.signatures.items() if set(s) == set(g))
            for g in (group_a, group_b)
        )
        # ...and the colluders sign both tickets, which the attacker shows each group.
        full.extra_signatures = {
            c: lying.sign_digest(h.signing_key(layout, c), ticket_a) for c in colluders
        }
        without_victim.extra_signatures = {
            c: lying.sign_digest(h.signing_key(layout, c), ticket_b) for c in colluders
        }
        released = [holders[pid].decrypt(1) for pid in group_a + group_b]
        # Assert: 4 valid signatures per ticket < 5: no honest holder releases a partial, and the
        # colluders' 2 partials are below t = 3 — neither aggregate can be decrypted.
        assert released == [False] * 4
        assert engine.partials == []
        for pid in group_a + group_b:
            assert "partial_released" not in lying.ledger_kinds(layout, pid)
        # The split view is on the record: both tickets had to be logged for holders to sign.
        logged = [
            json.loads(x)["ticket"]
            for x in engine.audit.entries()
            if json.loads(x)["event"] == "aggregated" and json.loads(x)["round"] == 1
        ]
        assert {ticket_a.hex(), ticket_b.hex()} <= set(logged)
        # Showing group B the other ticket with every signature gathered is refused outright.
        engine.views[(group_b[0], 1)] = full
        with pytest.raises(VerificationError, match="already signed a different decryption ticket"):
            lying.holder(layout, group_b[0]).decrypt(1)
        # Control, beyond the threat model: with t = 3 colluders the quorum is reached (the
        # signatures above were counted; the bound of t - 1 colluders is tight).
        full.extra_signatures[group_b[1]] = lying.sign_digest(
            h.signing_key(layout, group_b[1]), ticket_a
        )
        assert holders[group_a[0]].decrypt(1) is True
        assert [p for p, _ in engine.partials] == [group_a[0]]
    finally:
        running.stop(grace=1)


def test_a_ticket_that_is_not_in_the_log_is_not_signed(five) -> None:
    # The attacker serves a subset's aggregate with the round's honest `aggregated` entry,
    # hoping to keep its second ticket out of the anchored log.
    layout, engine = five
    pids = _collect_round_1(layout, engine)
    engine.views[("*", 1)] = lying.view(engine, 1, [p for p in pids if p != VICTIM], log=False)
    holder = lying.holder(layout, pids[0])
    with pytest.raises(VerificationError, match="does not record this ticket"):
        holder.decrypt(1)
    assert engine.signatures == {} and lying.ledger_kinds(layout, pids[0]) == ["refused"]


def test_a_client_refuses_a_quorum_that_cannot_prevent_a_split_view(tmp_path) -> None:
    # A 3-of-6 key with a quorum of t = 3 would let two disjoint groups each decrypt.
    layout = prepare_federation(
        tmp_path, bits=BITS, parties=SIX, rounds=1, participant_threshold=5, decryption_threshold=3
    )
    path = layout.client_configs["bank-a"]
    doc = yaml.safe_load(path.read_text())
    doc.setdefault("policy", {})["ticket_quorum"] = 3
    path.write_text(yaml.safe_dump(doc))
    running = h.serve(layout)
    try:
        with pytest.raises(ConfigError, match=r"policy\.ticket_quorum: 3 is outside 5\.\.6"):
            lying.client(layout, "bank-a")
    finally:
        running.stop(grace=1)


def test_the_coordinator_refuses_a_quorum_below_the_safe_bound(tmp_path) -> None:
    layout = prepare_federation(
        tmp_path, bits=BITS, parties=SIX, rounds=1, participant_threshold=5, decryption_threshold=3
    )
    doc = yaml.safe_load(layout.coordinator_config.read_text())
    doc["federated_learning"]["ticket_quorum"] = 4
    layout.coordinator_config.write_text(yaml.safe_dump(doc))
    with pytest.raises(
        ConfigError, match=r"federated_learning\.ticket_quorum: 4 is outside 5\.\.6"
    ):
        build_engine(load_coordinator_config(layout.coordinator_config))


class ReceiptForger(Collecting):
    """Stores the victim's contribution but hands it a receipt that is not its own."""

    forge = "other-client"

    def _receipt(self, number, c, *, duplicate=False):  # type: ignore[no-untyped-def]
        real = super()._receipt(number, c, duplicate=duplicate)
        if c.client_id != VICTIM:
            return real
        if self.forge == "other-client":  # a genuine receipt, but of another client's upload
            other = next(x for p, x in self.e.round.contributions.items() if p != VICTIM)  # type: ignore[union-attr]
            return super()._receipt(number, other)
        fields = dict(
            federation_id="another-federation",
            round_number=number,
            client_id=c.client_id,
            contribution=c.contribution_digest,
            log_index=c.log_index,
            received_at_ms=c.received_at_ms,
        )
        return dataclasses.replace(
            real,
            federation_id="another-federation",
            signature=sign_digest(self.e.signing_key, receipt_digest(**fields)),
        )


@pytest.mark.parametrize("forge", ["other-client", "other-federation"])
def test_a_receipt_that_is_not_the_clients_own_is_refused(tmp_path, forge) -> None:
    layout = prepare_federation(tmp_path, bits=BITS, rounds=1, aggregation_frequency=2)
    config = load_coordinator_config(layout.coordinator_config)
    engine = build_engine(config)
    engine.collecting = forger = ReceiptForger(engine)
    forger.forge = forge
    running = h.serve(layout, config, engine)
    try:
        h.upload(layout, "bank-a", *h.contribution(layout, "bank-a", 1))  # someone to point at
        victim = lying.client(layout, VICTIM)
        status = victim.transport.round_status()
        assert victim.fed is not None
        with pytest.raises(VerificationError, match=r"the receipt's .* is not this upload's"):
            victim.contribute(victim.fed, status)
    finally:
        running.stop(grace=1)
    refusal = victim.member.ledger.refusals()[-1]
    assert refusal["what"] == "receipt" and refusal["round"] == 1
    assert not (layout.root / "clients" / VICTIM / "receipts" / "round-00001.json").exists()


def test_a_forked_audit_log_stops_the_client(tmp_path) -> None:
    # Arrange: bank-a contributes once and keeps the checkpoint its receipt carried.
    layout = prepare_federation(tmp_path, bits=BITS, rounds=1, aggregation_frequency=2)
    config = load_coordinator_config(layout.coordinator_config)
    running = h.serve(layout, config)
    backup = tmp_path / "backup"
    try:
        h.upload(layout, "bank-e", *h.contribution(layout, "bank-e", 1))
        shutil.copytree(config.state_dir, backup)  # the coordinator's copy before bank-a's upload
        honest = lying.client(layout, "bank-a")
        status = honest.transport.round_status()
        assert honest.fed is not None
        honest.contribute(honest.fed, status)
        kept = honest.member.anchor.current
        assert kept is not None
    finally:
        running.stop(grace=1)
    # Act: the key holder restores the old state and carries on: the same key, another history.
    shutil.rmtree(config.state_dir)
    shutil.copytree(backup, config.state_dir)
    running = h.serve(layout, config)
    try:
        h.join_all(layout)  # bank-a is in the federation: the round waits for its upload
        for pid in ("bank-b", "hospital-c", "hospital-d"):  # grow the forked log past the kept one
            h.upload(layout, pid, *h.contribution(layout, pid, 1))
        # Assert: a restarted bank-a (the kept checkpoint is on disk) reads the log at join,
        # before it contributes: the checkpoint does not extend the kept one — it stops.
        with pytest.raises(AnchorError, match=r"forked|cannot prove|shrank"):
            lying.client(layout, "bank-a")
    finally:
        running.stop(grace=1)
    state = layout.root / "clients" / "bank-a"
    ledger = [json.loads(x) for x in (state / "decryptor-ledger.jsonl").open()]
    assert ledger[-1]["what"] == "audit checkpoint"
    key = bytes.fromhex(
        load_client_config(layout.client_configs["bank-a"]).keys.coordinator_signing_public_key
    )
    anchor = CheckpointAnchor(state, config.federation_id, key)
    assert anchor.current == kept  # the fork did not replace the anchor
    events = [json.loads(x) for x in (config.state_dir / "audit" / "entries.log").open()]
    assert not [e for e in events if e.get("client") == "bank-a" and "contribution" in e["event"]]


class Downgrader(Coordinator):
    """Tells clients the federation is plaintext, hoping for their raw updates."""

    def join_info(self, party, spec_json=""):  # type: ignore[no-untyped-def]
        return dataclasses.replace(super().join_info(party, spec_json), encryption_type="none")


def test_a_coordinator_cannot_switch_clients_to_plaintext(tmp_path) -> None:
    layout = prepare_federation(tmp_path, bits=BITS, rounds=1)
    config = load_coordinator_config(layout.coordinator_config)
    real = build_engine(config)
    running = h.serve(layout, config, Downgrader(config, real.key, real.signing_key))
    try:
        with pytest.raises(VerificationError, match="announces encryption_type 'none'"):
            lying.client(layout, "bank-a")
        events = [
            json.loads(x)
            for x in (config.state_dir / "audit" / "entries.log").read_text().splitlines()
        ]
    finally:
        running.stop(grace=1)
    assert not any(e["event"] == "contribution_accepted" for e in events)


class Misannouncer(Coordinator):
    """Tells one member another codec and round size than its signed log records (a wider
    clip, another minimum of contributors), hoping it contributes under them."""

    def join_info(self, party, spec_json=""):  # type: ignore[no-untyped-def]
        info = super().join_info(party, spec_json)
        codec = dataclasses.replace(info.codec, clip=info.codec.clip * 4)
        return dataclasses.replace(info, codec=codec, min_clients=info.min_clients + 5)


def test_a_coordinator_announcing_other_settings_than_it_logged_is_refused_at_join(
    tmp_path,
) -> None:
    layout = prepare_federation(tmp_path, bits=BITS, rounds=1)
    config = load_coordinator_config(layout.coordinator_config)
    real = build_engine(config)
    running = h.serve(layout, config, Misannouncer(config, real.key, real.signing_key))
    try:
        with pytest.raises(VerificationError, match="announced other settings than its audit") as e:
            lying.client(layout, "bank-a")
    finally:
        running.stop(grace=1)
    clip = config.codec.clip
    assert f"codec.clip {clip * 4!r} (logged {clip!r})" in str(e.value)
    logged = (
        config.federated_learning.min_clients or config.federated_learning.participant_threshold
    )
    assert f"federated_learning.min_clients {logged + 5} (logged {logged})" in str(e.value)
    ledger = layout.root / "clients" / "bank-a" / "decryptor-ledger.jsonl"
    assert [json.loads(x)["what"] for x in ledger.read_text().splitlines()] == [
        "federation settings"
    ]
    events = [json.loads(x)["event"] for x in (config.state_dir / "audit" / "entries.log").open()]
    assert "contribution_accepted" not in events


@pytest.mark.parametrize("attack", ["records-before-manifest", "second-manifest"])
def test_a_task_stream_out_of_order_is_refused_before_anything_is_signed(
    tmp_path, monkeypatch, attack
) -> None:
    """The coordinator's gRPC stream, not its engine, lies: a task whose records come before
    the manifest that bounds them, or a second manifest swapped in mid-stream."""
    from fedlora.coordinator._servicer import FederationServicer

    honest = FederationServicer.GetDecryptionTask
    served: list[int] = []

    def hostile(self, request, context):  # type: ignore[no-untyped-def]
        chunks = list(honest(self, request, context))
        manifest, data = chunks[0], chunks[1:]
        served.append(len(chunks))
        if attack == "records-before-manifest":
            yield from [data[0], manifest, *data[1:]]
        else:
            yield from [manifest, data[0], manifest, *data[1:]]

    # gRPC binds the servicer's methods when the server starts: patch before.
    monkeypatch.setattr(FederationServicer, "GetDecryptionTask", hostile)
    layout = prepare_federation(
        tmp_path, bits=BITS, rounds=1, participant_threshold=4, decryption_threshold=3
    )
    engine, running = lying.start(layout)
    try:
        _collect_round_1(layout, engine)
        holder = lying.holder(layout, "bank-a")
        expected = (
            "does not start with its manifest"
            if attack == "records-before-manifest"
            else "sends a second manifest"
        )
        with pytest.raises(VerificationError, match=expected):
            holder.decrypt(1)
    finally:
        running.stop(grace=1)
    assert served and served[0] > 2  # the honest task had records to reorder
    assert engine.signatures == {} and engine.partials == []
    assert lying.ledger_kinds(layout, "bank-a") == ["refused"]
    assert expected in holder.member.ledger.refusals()[0]["reason"]
