"""Attacks on the Flower adapter: a lying ServerApp (or SuperLink), lying or failing nodes.

The real strategy, engine, mod, clients, keys and logs, through the one-process grid of
:mod:`tests.adversarial.flower_grid` (four banks, 2-of-4 key, ticket quorum 3, three
contributions per aggregate). Each test names the guarantee it attacks.
"""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Message

from fedlora.client._ledger import DecryptorLedger
from fedlora.config import load_client_config, load_coordinator_config
from fedlora.errors import ConfigError
from fedlora.flower import _client, _nodes, _server
from fedlora.flower import _wire as w
from fedlora.v1 import federation_pb2
from tests.adversarial import flower_grid as g
from tests.integration.helpers import prepare_federation

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _run(tmp_path, *, rounds=2, flower_rounds=None, grid=None, **kw):  # type: ignore[no-untyped-def]
    layout = g.federation(tmp_path, rounds=rounds)
    grid = grid or g.Grid(tmp_path)
    strategy = g.strategy(layout, **kw)
    return layout, grid, strategy


def _start(strategy, grid, rounds):  # type: ignore[no-untyped-def]
    strategy.start(grid, g.initial_arrays(), num_rounds=rounds)


def _member(layout, node):  # type: ignore[no-untyped-def]
    return load_client_config(layout.client_configs[f"bank-{node - g.FIRST_ID:02d}"])


def _participants(layout, number):  # type: ignore[no-untyped-def]
    closed = [e for e in g.events(layout) if e["event"] == "round_closed" and e["round"] == number]
    return closed[0]["participants"] if closed else None


def _zip_array() -> Array:
    """A byte array whose payload is a zip archive (np.load would hand back an NpzFile)."""
    return Array(dtype="uint8", shape=(22,), stype="numpy.ndarray", data=b"PK\x05\x06" + bytes(18))


# --- a lying ServerApp --------------------------------------------------------------------------


def test_a_server_that_sends_one_node_another_model_to_train_is_refused_by_it(tmp_path) -> None:
    """Model inconsistency (a "dead" model to all but one node, say): every node must train on
    the global model the log publishes, in the log's layout, or not at all."""
    layout, grid, strategy = _run(tmp_path)
    lies = {
        g.FIRST_ID + 3: lambda a: ArrayRecord(
            {k: Array(np.full(v.shape, 123.0, np.float32)) for k, v in a.items()}
        ),
        g.FIRST_ID + 2: lambda a: ArrayRecord({"b": a["b"], "a": a["a"]}),  # keys swapped
    }

    def tamper(node: int, message: Message) -> Message:
        if node in lies and w.step_of(message.content) == w.TRAIN:
            message.content["arrays"] = lies[node](message.content["arrays"])
        return message

    grid.tamper = tamper
    # Act
    _start(strategy, grid, 2)
    # Assert: neither node trained on what it was sent, and both say why; their ledgers record
    # it; with two of four missing, the rounds fail below participant_threshold, with reasons.
    for node, what in ((g.FIRST_ID + 3, "is not global version"), (g.FIRST_ID + 2, "named")):
        assert grid.trained.get(node, 0) == 0
        assert any(what in r and "does not train on it" in r for r in grid.refusals(node))
        member = _member(layout, node)
        ledger = DecryptorLedger(member.state_dir, member.federation_id)
        assert ledger.refusals()[-1]["what"] == "global model"
    failed = [e for e in g.events(layout) if e["event"] == "round_failed"]
    assert [e["round"] for e in failed] == [1, 2]
    for e in failed:
        assert "below participant_threshold" in e["reason"]
        assert "is not global version 0 as the log publishes it" in e["reason"]


def test_a_holder_checks_an_aggregate_against_the_model_it_trained_from_in_an_earlier_message(
    tmp_path,
) -> None:
    """Each message is a fresh process on Flower: what a holder trained from is on its disk."""
    layout, grid, strategy = _run(tmp_path)
    victim = g.FIRST_ID

    def tamper(node: int, message: Message) -> Message:
        if node == victim and w.step_of(message.content) == w.DECRYPT:
            manifest = federation_pb2.DecryptionManifest()
            manifest.ParseFromString(w.blob(message.content, "manifest"))
            manifest.global_digest = bytes(32)
            g.replace_blob(message, "manifest", manifest.SerializeToString())
        return message

    grid.tamper = tamper
    # Act
    _start(strategy, grid, 2)
    # Assert: refused for the model it trained from (checked before any signature); the other
    # three holders make the quorum, so the rounds close.
    assert any("trained from another global model" in r for r in grid.refusals(victim))
    assert g.outcomes(layout) == [("round_closed", 1), ("round_closed", 2)]


def test_a_receipt_whose_message_was_lost_is_sent_again_until_the_node_answers(tmp_path) -> None:
    layout, grid, strategy = _run(tmp_path)
    node, lost = g.FIRST_ID + 2, []

    def tamper(n: int, message: Message) -> Message | None:
        if n == node and w.step_of(message.content) == w.DECRYPT and not lost:
            lost.append(w.blob(message.content, "receipt", required=False))
            return None  # the message that carried round 1's receipt never arrives
        return message

    grid.tamper = tamper
    # Act
    _start(strategy, grid, 2)
    # Assert: the receipt was in the lost message, and the node holds it (and round 2's) anyway.
    assert lost and lost[0]
    receipts = sorted(p.name for p in (_member(layout, node).state_dir / "receipts").iterdir())
    assert receipts == ["round-00001.json", "round-00002.json"]


def test_a_server_announcing_other_settings_than_it_logged_is_refused_by_the_node(tmp_path) -> None:
    """The join info a message carries is not signed; the log's federation_started entry is.
    A ServerApp that tells one node a wider clip (its updates would then be encoded for another
    codec than the others') is refused by that node before it trains."""
    layout, grid, strategy = _run(tmp_path)
    node = g.FIRST_ID + 2

    def tamper(n: int, message: Message) -> Message:
        if n == node and w.step_of(message.content) == w.TRAIN:
            info = federation_pb2.JoinResponse()
            info.ParseFromString(w.blob(message.content, "join"))
            info.codec.clip *= 4
            g.replace_blob(message, "join", info.SerializeToString())
        return message

    grid.tamper = tamper
    _start(strategy, grid, 2)
    assert grid.trained.get(node, 0) == 0
    assert any(
        "announced other settings than its audit log records" in r for r in grid.refusals(node)
    )
    member = _member(layout, node)
    ledger = DecryptorLedger(member.state_dir, member.federation_id)
    assert "federation settings" in [r["what"] for r in ledger.refusals()]
    closed = [e for e in g.events(layout) if e["event"] == "round_closed"]
    assert closed and all(member.id not in e["participants"] for e in closed)


def test_wrongly_typed_fields_from_the_server_are_refusals_the_round_survives(tmp_path) -> None:
    layout, grid, strategy = _run(tmp_path)
    node = g.FIRST_ID + 1

    def tamper(n: int, message: Message) -> Message:
        if n == node and w.step_of(message.content) == w.DECRYPT:
            g.set_scalar(message, "round", "one")
        if n == node and w.step_of(message.content) == w.RELEASE:
            g.set_scalar(message, "quorum", "many")
        return message

    grid.tamper = tamper
    _start(strategy, grid, 2)
    assert any("names no round" in r for r in grid.refusals(node))
    assert g.outcomes(layout) == [("round_closed", 1), ("round_closed", 2)]


# --- lying or failing nodes ---------------------------------------------------------------------


def test_a_node_that_lies_about_what_it_holds_cannot_stop_the_run(tmp_path) -> None:
    """Marks beyond the log (anchor, entries read, versions kept) would make the server ask its
    log for proofs it cannot give."""
    layout, grid, strategy = _run(tmp_path)
    liar = g.FIRST_ID + 3

    def on_reply(node: int, reply: Message) -> Message:
        if node == liar and not reply.has_error():
            for name, value in (("anchor", 10**9), ("scanned", 10**9), ("kept", 10**6)):
                g.set_scalar(reply, name, value)
        return reply

    grid.on_reply = on_reply
    _start(strategy, grid, 2)  # Act / Assert: no exception
    assert g.outcomes(layout) == [("round_closed", 1), ("round_closed", 2)]


def test_malformed_byte_arrays_from_a_node_are_refused_not_a_crash(tmp_path) -> None:
    layout, grid, strategy = _run(tmp_path)
    bad = g.FIRST_ID + 3

    def on_reply(node: int, reply: Message) -> Message:
        if node == bad and not reply.has_error() and w.step_of(reply.content) == w.TRAIN:
            blobs = reply.content.array_records[w.BLOBS]
            blobs["header"] = Array(dtype="uint8", shape=(0,), stype="numpy.ndarray", data=b"")
            blobs["records"] = _zip_array()
        return reply

    grid.on_reply = on_reply
    _start(strategy, grid, 2)  # Act / Assert: no exception; the others' rounds close
    assert g.outcomes(layout) == [("round_closed", 1), ("round_closed", 2)]
    assert "bank-03" not in _participants(layout, 1)


def test_a_node_whose_join_answers_never_verify_is_asked_a_bounded_number_of_times(
    tmp_path,
) -> None:
    layout, grid, strategy = _run(tmp_path)
    bad = g.FIRST_ID + 3

    def on_reply(node: int, reply: Message) -> Message:
        if node == bad and not reply.has_error() and w.step_of(reply.content) == w.JOIN:
            reply.content.array_records[w.BLOBS]["signature"] = _zip_array()
        return reply

    grid.on_reply = on_reply
    _start(strategy, grid, 5)  # Act / Assert: no exception; the node is not admitted
    assert bad not in strategy.nodes and len(strategy.nodes) == 3
    asked = [step for node, step, _ in grid.seen if node == bad]
    assert (
        asked == [w.JOIN] * _server.MAX_JOIN_FAILURES
    )  # a fresh challenge each time, then no more
    assert g.outcomes(layout) == []  # min_clients 4: the federation waits for the fourth


def test_a_node_whose_join_answer_was_refused_once_joins_with_a_fresh_challenge(
    tmp_path,
) -> None:
    """Low: one bad join answer used to lock a node id out for the ServerApp's life."""
    layout, grid, strategy = _run(tmp_path)
    node, spoiled, nonces = g.FIRST_ID + 2, [], []

    def tamper(n: int, message: Message) -> Message:
        if n == node and w.step_of(message.content) == w.JOIN:
            nonces.append(w.blob(message.content, "nonce"))
        return message

    def on_reply(n: int, reply: Message) -> Message:
        if n == node and w.step_of(reply.content) == w.JOIN and not spoiled:
            spoiled.append(n)
            g.replace_blob(reply, "signature", bytes(64))  # a signature that does not verify
        return reply

    grid.tamper, grid.on_reply = tamper, on_reply
    _start(strategy, grid, 3)  # Flower round 1 waits for it; rounds 2 and 3 are the federation's
    assert node in strategy.nodes
    assert len(nonces) == 2 and nonces[0] != nonces[1]
    assert g.outcomes(layout) == [("round_closed", 1), ("round_closed", 2)]
    assert "bank-02" in _participants(layout, 1)


def test_a_node_whose_join_answer_was_lost_joins_at_the_next_round(tmp_path) -> None:
    layout, grid, strategy = _run(tmp_path)
    late, dropped = g.FIRST_ID + 3, []

    def on_reply(node: int, reply: Message) -> Message | None:
        if node == late and not dropped:
            dropped.append(node)
            return None
        return reply

    grid.on_reply = on_reply
    _start(strategy, grid, 3)  # Flower round 1 waits; rounds 2 and 3 are the federation's two
    assert g.outcomes(layout) == [("round_closed", 1), ("round_closed", 2)]
    assert "bank-03" in _participants(layout, 1)


def test_a_train_message_run_twice_gets_the_same_contribution_and_the_round_closes(
    tmp_path,
) -> None:
    """Flower may run a message again (a retry); a node seals each round once."""
    layout, grid, strategy = _run(tmp_path)
    node, real, replies = g.FIRST_ID + 1, grid.mod, []

    def twice(msg, context, call_next):  # type: ignore[no-untyped-def]
        if context.node_id == node and w.step_of(msg.content) == w.TRAIN:
            first = real(copy.deepcopy(msg), context, call_next)
            again = real(msg, context, call_next)
            replies.append((first, again))
            return first  # the server keeps the first
        return real(msg, context, call_next)

    grid.mod = twice
    _start(strategy, grid, 2)
    # Assert: the same signed contribution both times, one training per round, no refusal.
    for first, again in replies:
        assert w.blob(first.content, "header") == w.blob(again.content, "header")
        assert w.blob(first.content, "records") == w.blob(again.content, "records")
    assert len(replies) == 2 and grid.trained[node] == 2
    assert grid.refusals(node) == []
    assert g.outcomes(layout) == [("round_closed", 1), ("round_closed", 2)]
    assert "bank-01" in _participants(layout, 1) and "bank-01" in _participants(layout, 2)


def test_a_nodes_next_round_obfuscators_outlive_its_message_and_are_each_used_once(
    tmp_path, monkeypatch
) -> None:
    """A session lasts one message: the pool a node starts after sealing round 1 is kept in its
    process, round 2 seals with exactly those obfuscators, none twice, and none is kept after
    the last round (it would be computed for nothing)."""
    monkeypatch.setattr(_client, "_AHEAD", {})
    _layout, grid, strategy = _run(tmp_path)
    real, ready, used = grid.mod, {}, {}

    def watching(msg, context, call_next):  # type: ignore[no-untyped-def]
        reply = real(msg, context, call_next)
        for pid, pool in list(_client._AHEAD.items()):
            if pid in ready:
                continue
            pool.fill()  # what the background finishes while the round is decrypted
            ready[pid] = {v for _, v in pool._ready}
            assert len(ready[pid]) == pool.capacity
            taken: list[int] = []
            take = pool.take_with_witness

            def spied(count, take=take, taken=taken):  # type: ignore[no-untyped-def]
                values, witness = take(count)
                taken.extend(values)
                return values, witness

            pool.take_with_witness = spied
            used[pid] = taken
        return reply

    grid.mod = watching
    _start(strategy, grid, 2)
    assert sorted(ready) == [f"bank-{i:02d}" for i in range(g.NODES)]
    for pid, values in ready.items():
        assert sorted(used[pid]) == sorted(values)  # round 2 sealed warm, each value once
    assert _client._AHEAD == {}  # the last round computed nothing ahead


def test_consistency_proofs_for_a_node_that_never_answers_stay_bounded(tmp_path) -> None:
    layout, grid, strategy = _run(tmp_path, rounds=6)
    silent, counts = g.FIRST_ID + 3, []

    def tamper(node: int, message: Message) -> Message:
        if node == silent:
            counts.append(
                sum(
                    1
                    for k in message.content.array_records[w.BLOBS]
                    if k.startswith("consistency:")
                )
            )
        return message

    def on_reply(node: int, reply: Message) -> Message | None:
        if node == silent and not reply.has_error() and w.step_of(reply.content) != w.JOIN:
            return None
        return reply

    grid.tamper, grid.on_reply = tamper, on_reply
    _start(strategy, grid, 6)
    assert [o for o, _ in g.outcomes(layout)] == ["round_closed"] * 6
    assert max(counts) <= 2 * _nodes.MAX_CANDIDATES + 1, counts
    assert len(counts) > 2 * 6  # it was sent the train and decrypt steps of every round


def test_a_node_that_claims_to_have_kept_nothing_gets_a_few_versions_per_message(
    tmp_path,
) -> None:
    layout, grid, strategy = _run(tmp_path, rounds=6)
    liar, versions = g.FIRST_ID + 2, []

    def on_reply(node: int, reply: Message) -> Message:
        if node == liar and not reply.has_error():
            g.set_scalar(reply, "kept", 0)
            g.set_scalar(reply, "scanned", 0)
        return reply

    def tamper(node: int, message: Message) -> Message:
        if node == liar:
            versions.append(
                sum(1 for k in message.content.array_records[w.BLOBS] if k.startswith("global:"))
            )
        return message

    grid.tamper, grid.on_reply = tamper, on_reply
    _start(strategy, grid, 6)
    assert [o for o, _ in g.outcomes(layout)] == ["round_closed"] * 6
    assert 0 < max(versions) <= _nodes.MODELS_PER_MESSAGE
    # the honest members keep all six versions
    for node in (g.FIRST_ID, g.FIRST_ID + 1, g.FIRST_ID + 3):
        models = _member(layout, node).state_dir / "models"
        assert sorted(p.name for p in models.iterdir()) == [f"v{v:05d}" for v in range(1, 7)]


def test_a_serverapp_restarted_while_decrypting_resumes_that_round(tmp_path) -> None:
    """Flower counts rounds afresh after a restart; the engine's round is decrypted, not
    Flower's, and the federation goes on."""

    class Crash(BaseException):
        pass

    layout, grid, strategy = _run(tmp_path)

    def tamper(node: int, message: Message) -> Message:
        if w.step_of(message.content) == w.RELEASE:
            raise Crash  # the ServerApp dies after the tickets, before any partial
        return message

    grid.tamper = tamper
    with pytest.raises(Crash):
        _start(strategy, grid, 2)
    assert g.outcomes(layout) == []
    # Act: a new ServerApp on the same state folder, the same nodes.
    grid.tamper = None
    _start(g.strategy(layout), grid, 2)
    # Assert: round 1 was finished first, then round 2 trained.
    assert g.outcomes(layout) == [("round_closed", 1), ("round_closed", 2)]


def test_evaluation_goes_to_admitted_members_only(tmp_path) -> None:
    """A registered SuperNode that is no fedlora party gets no model to evaluate."""
    from flwr.serverapp.strategy import FedAvg

    from fedlora.flower import FedloraStrategy

    layout = g.federation(tmp_path)
    grid = g.Grid(tmp_path, nodes=g.NODES + 1)  # the fifth node has no client YAML
    strategy = FedloraStrategy(
        FedAvg(fraction_train=1.0, fraction_evaluate=1.0, min_train_nodes=4, min_available_nodes=4),
        layout.coordinator_config,
        timeout=30,
    )
    stranger = g.FIRST_ID + g.NODES
    _start(strategy, grid, 2)
    assert stranger not in strategy.nodes
    # it is asked to join before each round (it may be configured later), and sent nothing else
    assert {step for node, step, _ in grid.seen if node == stranger} == {w.JOIN}
    assert any(step == w.EVALUATE for node, step, _ in grid.seen if node == g.FIRST_ID)
    assert g.outcomes(layout) == [("round_closed", 1), ("round_closed", 2)]


def test_blobs_are_bounded_and_read_strictly(tmp_path) -> None:
    from flwr.app import RecordDict

    content = w.put(RecordDict(), w.TRAIN, {"ok": b"abc", "big": bytes(100)})
    assert w.blob(content, "ok", max_bytes=3) == b"abc"
    with pytest.raises(Exception, match="has 100 bytes; at most 99"):
        w.blob(content, "big", max_bytes=99)
    blobs = content.array_records[w.BLOBS]
    for bad in (
        _zip_array(),
        Array(dtype="uint8", shape=(0,), stype="numpy.ndarray", data=b""),
        Array(np.zeros(3, dtype=np.int64)),  # not bytes
        Array(np.zeros((2, 2), dtype=np.uint8)),  # not 1-D
        Array(dtype="uint8", shape=(3,), stype="torch.Tensor", data=b"abc"),
    ):
        blobs["x"] = bad
        with pytest.raises(Exception, match="is not a byte array"):
            w.blob(content, "x")
    # a header that claims fewer bytes than follow
    honest = Array(np.frombuffer(b"abcd", dtype=np.uint8).copy())
    blobs["x"] = Array(dtype="uint8", shape=(4,), stype="numpy.ndarray", data=honest.data + b"!")
    with pytest.raises(Exception, match="is not a byte array"):
        w.blob(content, "x")
    assert json.loads(json.dumps(list(w.blob(content, "ok"))))  # plain bytes


def test_holders_release_their_partials_in_chunks_through_flower(tmp_path, monkeypatch) -> None:
    from fedlora.protocol import _decryptor

    monkeypatch.setattr(_decryptor, "PARTIAL_CHUNK", 5)
    layout, grid, strategy = _run(tmp_path)
    _start(strategy, grid, 2)
    assert g.outcomes(layout) == [("round_closed", 1), ("round_closed", 2)]
    firsts = {e["first_record"] for e in g.events(layout) if e["event"] == "partial_accepted"}
    assert len(firsts) >= 3 and sorted(firsts) == list(range(0, 5 * len(firsts), 5))


def test_a_release_reply_with_more_chunks_than_the_aggregate_has_is_refused(
    tmp_path, monkeypatch
) -> None:
    from fedlora.protocol import _decryptor

    monkeypatch.setattr(_decryptor, "PARTIAL_CHUNK", 5)
    layout, grid, strategy = _run(tmp_path)
    flooder = g.FIRST_ID

    def on_reply(node: int, reply: Message) -> Message:
        if node == flooder and not reply.has_error() and w.step_of(reply.content) == "released":
            blobs = reply.content.array_records[w.BLOBS]
            for k in range(50):
                blobs[f"{w.PARTIAL_HEADER}{1000 + k}"] = Array(np.zeros(8, dtype=np.uint8))
        return reply

    grid.on_reply = on_reply
    _start(strategy, grid, 2)  # Act / Assert: refused; the others decrypt
    assert g.outcomes(layout) == [("round_closed", 1), ("round_closed", 2)]
    decrypted = [e for e in g.events(layout) if e["event"] == "decrypted"]
    assert all("bank-00" not in e["decryptors"] for e in decrypted)


# --- only fedlora's steps reach the user's code (issue 17) --------------------------------------


def _plain(node: int, arrays: ArrayRecord, kind: str = "train", **content) -> Message:  # type: ignore[no-untyped-def]
    """An ordinary Flower message, as FedAvg builds one: the arrays and a config record."""
    from flwr.app import ConfigRecord, RecordDict

    records = RecordDict({"arrays": arrays, "config": ConfigRecord({"server-round": 3})})
    for name, record in content.items():
        records[name] = record
    return Message(records, dst_node_id=node, message_type=kind)


def _ledger_refusals(layout, node, what):  # type: ignore[no-untyped-def]
    member = _member(layout, node)
    ledger = DecryptorLedger(member.state_dir, member.federation_id)
    return [r for r in ledger.refusals() if r["what"] == what]


def test_a_plain_train_message_is_refused_and_never_reaches_the_users_training(tmp_path) -> None:
    """Critical: a ServerApp (or a relay) sends an ordinary train message with the global model
    after an honest round. The member must not train and reply with its update in the clear."""
    layout, grid, strategy = _run(tmp_path)
    _start(strategy, grid, 2)
    trained = dict(grid.trained)
    # Act: the attacker's plain train message to every member, with the published model.
    replies = grid.send_and_receive([_plain(n, strategy.global_arrays()) for n in grid.ids])
    # Assert: an error from each, nothing trained, no arrays or metrics back, a ledger entry.
    assert len(replies) == g.NODES
    for reply in replies:
        assert reply.has_error(), reply.content
        assert "is not one of fedlora's steps" in reply.error.reason
    assert grid.trained == trained
    for node in grid.ids:
        (entry,) = _ledger_refusals(layout, node, "flower message")
        assert "'train' message" in entry["reason"]


@pytest.mark.parametrize(
    ("kind", "step"),
    [
        ("query", None),  # a message type the federation does not use
        ("train.custom", None),  # an action of the user's the federation does not use
        ("evaluate", None),  # evaluation without fedlora's checks
        ("query", w.TRAIN),  # fedlora's train step in the wrong message type
        ("evaluate", w.TRAIN),
        ("train", "exfiltrate"),  # no such fedlora step
    ],
)
def test_every_message_that_is_not_a_fedlora_step_is_refused(tmp_path, kind, step) -> None:
    layout, grid, strategy = _run(tmp_path, rounds=1)
    _start(strategy, grid, 1)
    node = g.FIRST_ID + 1
    message = _plain(node, strategy.global_arrays(), kind=kind)
    if step is not None:
        w.put(message.content, step, {})
    before = (dict(grid.trained), dict(grid.evaluated))
    # Act
    (reply,) = grid.send_and_receive([message])
    # Assert
    assert reply.has_error() and "is not one of fedlora's steps" in reply.error.reason
    assert (grid.trained, grid.evaluated) == before
    assert len(_ledger_refusals(layout, node, "flower message")) == 1


def test_a_flood_of_plain_messages_writes_one_ledger_entry_a_minute(tmp_path, monkeypatch) -> None:
    from fedlora.flower import _client

    layout, grid, strategy = _run(tmp_path, rounds=1)
    _start(strategy, grid, 1)
    node = g.FIRST_ID
    # Act: 30 plain messages at once, then one more once the minute has passed.
    replies = grid.send_and_receive([_plain(node, strategy.global_arrays()) for _ in range(30)])
    monkeypatch.setattr(_client, "RECORD_EVERY_S", 1e-6)
    replies += grid.send_and_receive([_plain(node, strategy.global_arrays())])
    # Assert: each refused; two entries, the second counting the 29 not written one by one.
    assert all(r.has_error() for r in replies) and len(replies) == 31
    entries = _ledger_refusals(layout, node, "flower message")
    assert len(entries) == 2
    assert "(29 more refused since the last entry)" in entries[1]["reason"]


def test_a_train_message_with_two_models_is_refused_by_every_node(tmp_path) -> None:
    """High: the honest global first under another name, a shifted model under "arrays" (the
    record the user's code reads). The node checks and trains one model: exactly one."""
    layout, grid, strategy = _run(tmp_path)

    def tamper(node: int, message: Message) -> Message:
        if w.step_of(message.content) == w.TRAIN:
            from flwr.app import RecordDict

            honest = message.content["arrays"]
            shifted = ArrayRecord({k: Array(v.numpy() + 5.0) for k, v in honest.items()})
            rest = {k: v for k, v in message.content.items() if k != "arrays"}
            message.content = RecordDict({"honest": honest, "arrays": shifted, **rest})
        return message

    grid.tamper = tamper
    _start(strategy, grid, 2)
    # Assert: nobody trained; each node says why and records it; the rounds fail.
    assert grid.trained == {}
    for node in grid.ids:
        assert any("carries 2 model array records" in r for r in grid.refusals(node))
        assert _ledger_refusals(layout, node, "global model")
    assert [o for o, _ in g.outcomes(layout)] == ["round_failed", "round_failed"]


def test_the_users_code_is_given_the_verified_model_and_nothing_of_fedloras(tmp_path) -> None:
    layout, grid, strategy = _run(tmp_path)
    strategy = g.strategy(layout, evaluate=True)
    _start(strategy, grid, 2)
    assert g.outcomes(layout) == [("round_closed", 1), ("round_closed", 2)]
    kinds = {kind for _, kind, _ in grid.given}
    assert kinds == {"train", "evaluate"}
    for _, _, content in grid.given:
        assert list(content.array_records) == ["arrays"]
        assert not any(name.startswith("fedlora.") for name in content)
        assert list(content["arrays"].keys()) == ["a", "b"]


def test_evaluation_runs_only_on_the_model_the_log_publishes(tmp_path) -> None:
    layout, grid, strategy = _run(tmp_path)
    strategy = g.strategy(layout, evaluate=True)
    victim = g.FIRST_ID + 2

    def tamper(node: int, message: Message) -> Message:
        if node == victim and w.step_of(message.content) == w.EVALUATE:
            arrays = message.content["arrays"]
            message.content["arrays"] = ArrayRecord(
                {k: Array(v.numpy() * 0.5) for k, v in arrays.items()}
            )
        return message

    grid.tamper = tamper
    _start(strategy, grid, 2)
    # Assert: the victim never evaluated; the others did, each round; the rounds close.
    assert grid.evaluated.get(victim, 0) == 0
    assert all(grid.evaluated[n] == 2 for n in grid.ids if n != victim)
    assert any("does not evaluate on it" in r for r in grid.refusals(victim))
    assert _ledger_refusals(layout, victim, "global model")
    assert g.outcomes(layout) == [("round_closed", 1), ("round_closed", 2)]


def _user_metrics(reply: Message) -> dict[str, dict[str, object]]:
    return {k: dict(r.items()) for k, r in reply.content.metric_records.items()}


def test_user_metrics_stay_on_the_node_unless_its_yaml_shares_them(tmp_path) -> None:
    """Medium: the user's train metrics (example counts, losses) and evaluation results went to
    the server, through the SuperLink, in the clear."""
    layout, grid, _ = _run(tmp_path)
    strategy = g.strategy(layout, evaluate=True)
    result = strategy.start(grid, g.initial_arrays(), num_rounds=2)
    # Assert: no reply carried a metric of the user's; each member kept its evaluations.
    for _, step, reply in grid.seen:
        assert reply.has_error() or _user_metrics(reply) == {}, (step, _user_metrics(reply))
    assert result.evaluate_metrics_clientapp == {}
    for node in grid.ids:
        kept = json.loads((_member(layout, node).state_dir / "flower-evaluations.json").read_text())
        assert sorted(kept) == ["1", "2"]
        assert kept["2"]["metrics"]["metrics"]["accuracy"] == 0.5 + (node - g.FIRST_ID) / 100


def test_only_the_metrics_a_node_shares_are_sent_and_aggregated(tmp_path) -> None:
    layout, grid, _ = _run(tmp_path)
    g.share_metrics(layout, ["accuracy", "num-examples"])
    strategy = g.strategy(layout, evaluate=True)
    result = strategy.start(grid, g.initial_arrays(), num_rounds=2)
    train_replies = [r for _, step, r in grid.seen if step == w.TRAIN]
    assert train_replies and all(
        _user_metrics(r) == {"metrics": {"num-examples": 1 + (n - g.FIRST_ID) % 4}}
        for (n, step, r) in grid.seen
        if step == w.TRAIN
    )  # never train-loss
    weights = [1 + i % 4 for i in range(g.NODES)]
    expected = sum((0.5 + i / 100) * wt for i, wt in enumerate(weights)) / sum(weights)
    assert result.evaluate_metrics_clientapp[2]["accuracy"] == pytest.approx(expected)
    assert g.outcomes(layout) == [("round_closed", 1), ("round_closed", 2)]


@pytest.mark.parametrize("spoil", ["second record", "other keys", "arrays", "not a number"])
def test_a_malformed_evaluate_reply_is_that_nodes_refusal_not_a_crashed_serverapp(
    tmp_path, spoil, caplog
) -> None:
    """Medium: a second MetricRecord in one reply reached FedAvg and ended the ServerApp."""
    from flwr.app import ConfigRecord, MetricRecord

    layout, grid, _ = _run(tmp_path)
    g.share_metrics(layout, ["accuracy", "num-examples"])
    strategy = g.strategy(layout, evaluate=True)
    liar = g.FIRST_ID + 3

    def on_reply(node: int, reply: Message) -> Message:
        if node == liar and not reply.has_error() and w.step_of(reply.content) == "evaluated":
            if spoil == "second record":
                reply.content["more"] = MetricRecord({"accuracy": 1.0, "num-examples": 1})
            elif spoil == "other keys":
                reply.content["metrics"] = MetricRecord({"loss": 0.1})
            elif spoil == "arrays":
                reply.content["leak"] = ArrayRecord({"x": Array(np.zeros(3, np.float32))})
                reply.content["cfg"] = ConfigRecord({"x": 1})
            else:
                reply.content["metrics"] = MetricRecord(
                    {"accuracy": float("nan"), "num-examples": 1}
                )
        return reply

    grid.on_reply = on_reply
    # Act / Assert: no exception; the three honest members' evaluation is aggregated.
    result = strategy.start(grid, g.initial_arrays(), num_rounds=2)
    weights = [1 + i % 4 for i in range(3)]
    expected = sum((0.5 + i / 100) * wt for i, wt in enumerate(weights)) / sum(weights)
    assert result.evaluate_metrics_clientapp[2]["accuracy"] == pytest.approx(expected)
    refused = [r.message for r in caplog.records if "evaluation replies refused" in r.message]
    assert len(refused) == 2 and all(line.endswith("(bank-03)") for line in refused), refused


# --- the federation spec on Flower (issue 17) ---------------------------------------------------


def _announce_spec(layout, spec) -> None:  # type: ignore[no-untyped-def]
    import yaml

    path = layout.root / "federation-spec.json"
    path.write_text(json.dumps(spec))
    doc = yaml.safe_load(layout.coordinator_config.read_text())
    doc["model"]["spec"] = str(path)
    layout.coordinator_config.write_text(yaml.safe_dump(doc, sort_keys=False))


def _join_refusals(layout, party):  # type: ignore[no-untyped-def]
    return [e for e in g.events(layout) if e["event"] == "join_refused" and e["client"] == party]


def test_a_node_with_another_class_count_is_refused_at_join_on_both_sides(tmp_path) -> None:
    """Medium: the strategy built its engine with no spec, so a node of another model of the
    same size was averaged in silently (the same node is refused on the gRPC path)."""
    layout = g.federation(tmp_path, min_clients=3)
    _announce_spec(
        layout,
        {"model.kind": "linear", "model.num_parameters": 300, "training.num_classes": 2},
    )
    g.edit_client(layout, "bank-03", lambda doc: doc["training"].update({"num_classes": 3}))
    grid, strategy = g.Grid(tmp_path), g.strategy(layout)
    # Act
    _start(strategy, grid, 4)
    # Assert: refused at each of its (bounded) joins, audited with the setting named; its own
    # ledger says the same; the three others' rounds close without it.
    odd = g.FIRST_ID + 3
    assert odd not in strategy.nodes
    refused = _join_refusals(layout, "bank-03")
    assert len(refused) == _server.MAX_JOIN_FAILURES
    assert "training.num_classes is 3 here, 2 in the federation" in refused[0]["reason"]
    (entry,) = _ledger_refusals(layout, odd, "federation spec")
    assert "training.num_classes is 3 here, 2 in the federation" in entry["reason"]
    assert g.outcomes(layout) == [("round_closed", 1), ("round_closed", 2)]
    assert "bank-03" not in _participants(layout, 1)


def test_a_relay_cannot_swap_the_spec_a_node_signed(tmp_path) -> None:
    layout = g.federation(tmp_path, min_clients=3)
    spec = {"model.kind": "linear", "model.num_parameters": 300, "training.num_classes": 2}
    _announce_spec(layout, spec)
    g.edit_client(layout, "bank-03", lambda doc: doc["training"].update({"num_classes": 3}))
    grid, strategy = g.Grid(tmp_path), g.strategy(layout)
    odd = g.FIRST_ID + 3

    def on_reply(node: int, reply: Message) -> Message:
        if node == odd and w.step_of(reply.content) == w.JOIN:  # the federation's spec instead
            g.replace_blob(
                reply, "spec", json.dumps(spec, sort_keys=True, separators=(",", ":")).encode()
            )
        return reply

    grid.on_reply = on_reply
    _start(strategy, grid, 2)
    assert odd not in strategy.nodes
    assert g.outcomes(layout) == [("round_closed", 1), ("round_closed", 2)]


def _tabular(tmp_path):  # type: ignore[no-untyped-def]
    """Six banks with a LoRA model on the tabular base (a 2-of-6 key, ticket quorum 4)."""
    return prepare_federation(
        tmp_path,
        bits=512,
        parties=[(f"bank-{i:02d}", "bank") for i in range(6)],
        rounds=1,
        participant_threshold=3,
        decryption_threshold=2,
        insecure=True,
        model_kind="tabular",
        workload="bank",
        rows=40,
        min_clients=4,
    )


def test_nodes_with_another_lora_seed_or_base_model_of_the_same_size_are_refused(
    tmp_path,
) -> None:
    from fedlora._setup import _tabular_base

    layout = _tabular(tmp_path)
    g.edit_client(layout, "bank-04", lambda doc: doc["model"]["lora"].update({"seed": 7}))
    other = tmp_path / "models" / "other-base"
    _tabular_base(other, np.random.default_rng(3).normal(0, 1, (50, 8)), seed=5)
    g.edit_client(layout, "bank-05", lambda doc: doc["model"].update({"base_model": str(other)}))
    size = load_coordinator_config(layout.coordinator_config).model.num_parameters
    grid = g.Grid(tmp_path, nodes=6)
    strategy = g.strategy(layout)
    # Act
    strategy.start(grid, ArrayRecord({"adapter": Array(np.zeros(size, np.float32))}), num_rounds=1)
    # Assert
    assert sorted(p.id for p in strategy.nodes.values()) == [f"bank-0{i}" for i in range(4)]
    assert (
        "model.lora.seed is 7 here, 0 in the federation"
        in _join_refusals(layout, "bank-04")[0]["reason"]
    )
    assert "model.base_model is " in _join_refusals(layout, "bank-05")[0]["reason"]
    assert g.outcomes(layout) == [("round_closed", 1)]


def test_a_serverapp_whose_arrays_are_not_the_spec_s_model_does_not_start(tmp_path) -> None:
    layout = _tabular(tmp_path)
    strategy = g.strategy(layout)
    with pytest.raises(ConfigError, match="the size of the ServerApp's initial arrays"):
        strategy.start(
            g.Grid(tmp_path, nodes=6),
            ArrayRecord({"adapter": Array(np.zeros(7, np.float32))}),
            num_rounds=1,
        )


# --- found by review: the ServerApp, a node's disk and what the audit log carries -------------


_LINEAR_SPEC = {"model.kind": "linear", "model.num_parameters": 300, "training.num_classes": 2}


def test_a_member_that_spends_its_rejection_budget_does_not_stop_the_serverapp(tmp_path) -> None:
    """With a spec, the per-message join info went through admission's throttle: a member whose
    contributions and ticket signatures were refused 16 times made configure_train raise."""
    layout = g.federation(tmp_path, rounds=12, min_clients=3)
    _announce_spec(layout, _LINEAR_SPEC)
    grid, strategy = g.Grid(tmp_path), g.strategy(layout)
    liar, spoiled = g.FIRST_ID + 3, []

    def on_reply(node: int, reply: Message) -> Message:
        step = None if reply.has_error() else w.step_of(reply.content)
        if node == liar and step in (w.TRAIN, "signed"):
            name = "records" if step == w.TRAIN else "ticket_signature"
            data = bytearray(w.blob(reply.content, name))
            data[0] ^= 1
            g.replace_blob(reply, name, bytes(data))
            spoiled.append(step)
        return reply

    grid.on_reply = on_reply
    _start(strategy, grid, 12)  # Act / Assert: no exception
    assert len(spoiled) > 16
    assert [o for o, _ in g.outcomes(layout)] == ["round_closed"] * 12
    assert all("bank-03" not in _participants(layout, r) for r in range(1, 13))


def test_a_relays_copies_of_a_reply_count_once(tmp_path) -> None:
    layout, grid, strategy = _run(tmp_path, rounds=1)
    copied = g.FIRST_ID + 1

    class Copying(g.Grid):
        def send_and_receive(self, messages, *, timeout=None):  # type: ignore[no-untyped-def]
            replies = super().send_and_receive(messages, timeout=timeout)
            return replies + [r for r in replies if r.metadata.src_node_id == copied] * 5

    grid = Copying(tmp_path)
    result = strategy.start(grid, g.initial_arrays(), num_rounds=1)
    assert result.train_metrics_clientapp[1]["fedlora-contributions"] == g.NODES
    assert g.outcomes(layout) == [("round_closed", 1)]


def test_a_nodes_ledger_grows_by_one_entry_a_minute_whatever_it_is_sent(
    tmp_path, monkeypatch
) -> None:
    """Every kind of refusal on Flower, not only stray messages: here 50 keep messages with a
    forged checkpoint signature (a relay flipping bits)."""
    from flwr.app import RecordDict

    from fedlora.flower import _client
    from fedlora.v1 import common_pb2

    layout, grid, strategy = _run(tmp_path, rounds=1)
    _start(strategy, grid, 1)
    node = g.FIRST_ID

    def forged() -> Message:
        party = strategy.nodes[node]
        blobs = strategy.members.carry(node, party, models=True)
        cp = common_pb2.Checkpoint()
        cp.ParseFromString(blobs["checkpoint"])
        cp.signature = bytes(64)
        blobs["checkpoint"] = cp.SerializeToString()
        content = w.put(RecordDict(), w.KEEP, blobs, **strategy.members.scalars(node))
        return Message(content, dst_node_id=node, message_type="train")

    replies = grid.send_and_receive([forged() for _ in range(50)])
    assert all(w.step_of(r.content) == "refused" for r in replies)
    assert len(_ledger_refusals(layout, node, "audit checkpoint")) == 1
    monkeypatch.setattr(_client, "RECORD_EVERY_S", 1e-6)
    grid.send_and_receive([forged()])
    (_, last) = _ledger_refusals(layout, node, "audit checkpoint")
    assert "(49 more refused since the last entry)" in last["reason"]


def _train_message(strategy, node: int, round_number: int) -> Message:  # type: ignore[no-untyped-def]
    """A fedlora train message for ``node`` whose (unsigned) round status names another round."""
    from flwr.app import RecordDict

    party = strategy.nodes[node]
    blobs = strategy.members.carry(node, party, models=True)
    status = federation_pb2.RoundStatus()
    status.ParseFromString(blobs["status"])
    status.round = round_number
    blobs["status"] = status.SerializeToString()
    content = RecordDict({"arrays": strategy.global_arrays()})
    return Message(
        w.put(content, w.TRAIN, blobs, **strategy.members.scalars(node)),
        dst_node_id=node,
        message_type="train",
    )


def test_a_node_trains_only_for_rounds_the_log_opens_and_never_an_older_one(tmp_path) -> None:
    """The round status is not signed: rounds a server or relay made up made a node train and
    seal again and again, and after 32 of them it sealed an old round a second time."""
    layout, grid, strategy = _run(tmp_path, rounds=2)
    _start(strategy, grid, 2)
    node = g.FIRST_ID
    trained = grid.trained[node]
    # Act: rounds the log never opened; a round the node sealed; an older one that it no longer
    # remembers sealing (it remembers the newest 32).
    replies = grid.send_and_receive([_train_message(strategy, node, r) for r in range(1000, 1040)])
    trained_from = _member(layout, node).state_dir / "trained-from.json"
    remembered = json.loads(trained_from.read_text())
    trained_from.write_text(json.dumps({"2": remembered["2"]}))
    again = grid.send_and_receive(
        [_train_message(strategy, node, 2), _train_message(strategy, node, 1)]
    )
    # Assert
    assert grid.trained[node] == trained
    assert all("does not open round" in w.scalar(r.content, "reason") for r in replies)
    assert "sealed its contribution to round 2 already" in w.scalar(again[0].content, "reason")
    assert "older than round 2" in w.scalar(again[1].content, "reason")
    assert len(_ledger_refusals(layout, node, "round")) == 1  # throttled
    pending = _member(layout, node).state_dir / "flower-pending"
    assert len(list(pending.glob("*"))) <= 2 * _client_keep_pending()


def _client_keep_pending() -> int:
    from fedlora.flower import _client

    return _client.KEEP_PENDING


def test_what_the_users_code_raises_stays_on_the_node(tmp_path) -> None:
    """An exception's text can carry local data; the server put it in round_failed, which every
    member reads in the audit log."""
    layout, _, strategy = _run(tmp_path, rounds=1)

    class Leaky(g.Grid):
        def _user(self, msg, context):  # type: ignore[no-untyped-def]
            if context.node_id == g.FIRST_ID + 2:
                raise RuntimeError("secret: loss=0.1234 on 812 rows")
            return super()._user(msg, context)

    grid = Leaky(tmp_path)
    _start(strategy, grid, 1)
    log = json.dumps(g.events(layout))
    assert "secret" not in log and "812 rows" not in log
    assert any("raised RuntimeError" in r for r in grid.refusals(g.FIRST_ID + 2))
    assert g.outcomes(layout) == [("round_closed", 1)]


@pytest.mark.parametrize("kind", ["zip", "huge header", "big-endian", "fortran"])
def test_a_served_model_array_is_read_strictly_and_its_refusal_recorded(tmp_path, kind) -> None:
    import io

    layout, grid, strategy = _run(tmp_path, rounds=1)
    strategy = g.strategy(layout, evaluate=True)
    victim = g.FIRST_ID + 1

    def bad_array() -> Array:
        if kind == "zip":
            return _zip_array()
        header = io.BytesIO()
        descr = {"huge header": "<f4", "big-endian": ">f4", "fortran": "<f4"}[kind]
        shape = (10**12,) if kind == "huge header" else (10, 10)
        np.lib.format.write_array_header_1_0(
            header, {"descr": descr, "fortran_order": kind == "fortran", "shape": shape}
        )
        return Array(
            dtype="float32", shape=(10, 10), stype="numpy.ndarray",
            data=header.getvalue() + bytes(400),
        )  # fmt: skip

    def tamper(node: int, message: Message) -> Message:
        if node == victim and w.step_of(message.content) in (w.TRAIN, w.EVALUATE):
            message.content["arrays"]["a"] = bad_array()
        return message

    grid.tamper = tamper
    _start(strategy, grid, 1)
    assert grid.trained.get(victim, 0) == 0 and grid.evaluated.get(victim, 0) == 0
    assert any("is not global version 0" in r for r in grid.refusals(victim))
    assert _ledger_refusals(layout, victim, "global model")


def test_a_supernode_that_never_answers_its_join_is_asked_a_bounded_number_of_times(
    tmp_path,
) -> None:
    layout, grid, strategy = _run(tmp_path)
    layout = g.federation(tmp_path / "b", min_clients=3)
    grid, strategy = g.Grid(tmp_path / "b"), g.strategy(layout)
    mute = g.FIRST_ID + 3
    grid.on_reply = lambda node, reply: None if node == mute else reply
    _start(strategy, grid, 5)
    asked = [step for node, step, _ in grid.seen if node == mute]
    assert asked == [w.JOIN] * _server.MAX_JOIN_FAILURES
    assert [o for o, _ in g.outcomes(layout)] == ["round_closed"] * 2
