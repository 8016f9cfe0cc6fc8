"""The audit log against a coordinator that cuts it short, forks it or forges receipts.

Every test plays the attacker on real files: a real :class:`AuditLog` writes ``entries.log`` and
``checkpoints.log``; receipts are built the way the coordinator builds them (the entry, its
inclusion proof and the newest signed checkpoint right after the append) and written where a
client keeps them (``<state_dir>/receipts/round-00001.json`` and ``<state_dir>/checkpoint.json``).
The attacker holds the coordinator's signing key, so tampered checkpoints are re-signed with it:
only the anchors held by others (a client's checkpoint, its receipts) can expose the change.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedlora.audit import (
    CHECKPOINTS,
    ENTRIES,
    AuditLog,
    Receipt,
    SignedCheckpoint,
    canonical_json,
    verify_checkpoint,
    verify_checkpoint_consistency,
    verify_log,
    verify_receipt,
)
from fedlora.cli import main
from fedlora.crypto import (
    EMPTY_ROOT,
    checkpoint_digest,
    ed25519_public_bytes,
    leaf_hash,
    merkle_root,
    receipt_digest,
    sign_digest,
    verify_consistency,
)
from fedlora.errors import FedLoraError, VerificationError

FED = "fed-x"
CLIENTS = ("bank-a", "bank-b", "hospital-c")
ROUNDS = 3


def _digest(*parts: object) -> str:
    return hashlib.sha256(repr(parts).encode()).hexdigest()


def issue_receipt(audit: AuditLog, key: Ed25519PrivateKey, index: int) -> dict[str, Any]:
    """What the coordinator hands a client for entry ``index`` (a ``contribution_accepted``)."""
    entry = audit.entries(index, 1)[0]
    event = json.loads(entry)
    checkpoint = audit.latest_signed_checkpoint()
    _, path = audit.inclusion(index, checkpoint.tree_size)
    contribution = bytes.fromhex(event["contribution_digest"])
    signature = sign_digest(
        key,
        receipt_digest(
            federation_id=audit.log_id,
            round_number=event["round"],
            client_id=event["client"],
            contribution=contribution,
            log_index=index,
            received_at_ms=event["time_ms"],
        ),
    )
    return {
        "federation_id": audit.log_id,
        "round": event["round"],
        "client_id": event["client"],
        "contribution_digest": contribution.hex(),
        "log_index": index,
        "received_at_ms": event["time_ms"],
        "signature": signature.hex(),
        "ciphertexts_digest": event["ciphertexts_digest"],
        "coordinator_signing_public_key": ed25519_public_bytes(key).hex(),
        "entry": entry.decode("ascii"),
        "inclusion": [h.hex() for h in path],
        "checkpoint": checkpoint.to_dict(),
    }


@dataclass
class Federation:
    """A coordinator's audit log and what each client kept of it."""

    audit: AuditLog
    key: Ed25519PrivateKey
    receipts: dict[str, list[dict[str, Any]]]
    newest: SignedCheckpoint  # the newest checkpoint every client saw (the last status poll)

    @property
    def public(self) -> bytes:
        return ed25519_public_bytes(self.key)

    def files(self) -> tuple[bytes, bytes]:
        return (
            (self.audit.folder / ENTRIES).read_bytes(),
            (self.audit.folder / CHECKPOINTS).read_bytes(),
        )

    def client_state(self, root: Path, client: str) -> Path:
        """Write ``client``'s receipts and checkpoint where a client keeps them."""
        state = root / client
        (state / "receipts").mkdir(parents=True)
        for doc in self.receipts[client]:
            (state / "receipts" / f"round-{doc['round']:05d}.json").write_text(
                json.dumps(doc, indent=2) + "\n"
            )
        (state / "checkpoint.json").write_text(json.dumps(self.newest.to_dict()) + "\n")
        return state


def run_federation(
    folder: Path,
    key: Ed25519PrivateKey,
    *,
    log_id: str = FED,
    rounds: int = ROUNDS,
    skip: frozenset[tuple[int, str]] = frozenset(),
) -> Federation:
    """A federation's whole audit trail; ``skip`` leaves some contributions out (a rewrite)."""
    audit = AuditLog(folder, log_id, key)
    audit.append("federation_started", federation_id=log_id, rounds=rounds)
    receipts: dict[str, list[dict[str, Any]]] = {c: [] for c in CLIENTS}
    for number in range(1, rounds + 1):
        audit.append("round_opened", round=number, global_digest=_digest("global", number))
        for client in CLIENTS:
            if (number, client) in skip:
                continue
            index = audit.append(
                "contribution_accepted",
                round=number,
                client=client,
                weight=100,
                record_count=100,
                ciphertexts_digest=_digest("ciphertexts", number, client),
                contribution_digest=_digest("contribution", number, client),
                signature=(_digest("client signature", number, client) * 2),
            )
            receipts[client].append(issue_receipt(audit, key, index))
        audit.append("round_closed", round=number, global_digest=_digest("global", number + 1))
    return Federation(audit, key, receipts, audit.latest_signed_checkpoint())


def resign(cp: dict[str, Any], key: Ed25519PrivateKey, **changes: Any) -> bytes:
    """A checkpoints.log line with ``changes`` applied and signed again with the real key."""
    doc = {**cp, **changes}
    digest = checkpoint_digest(
        log_id=doc["log_id"],
        tree_size=doc["tree_size"],
        root_hash=bytes.fromhex(doc["root"]),
        timestamp_ms=doc["timestamp_ms"],
    )
    doc["signature"] = sign_digest(key, digest).hex()
    return canonical_json(doc)


def cut_short(fed: Federation, k: int) -> None:
    """Drop the last ``k`` entries and their checkpoints, leaving a log that verifies on its own."""
    entries, checkpoints = fed.files()
    kept = entries.split(b"\n")[:-1][:-k]
    (fed.audit.folder / ENTRIES).write_bytes(b"".join(line + b"\n" for line in kept))
    kept_cps = checkpoints.split(b"\n")[:-1][:-k]
    (fed.audit.folder / CHECKPOINTS).write_bytes(b"".join(line + b"\n" for line in kept_cps))


@pytest.fixture()
def fed(tmp_path: Path) -> Federation:
    return run_federation(tmp_path / "coordinator" / "audit", Ed25519PrivateKey.generate())


def all_receipts(fed: Federation) -> list[dict[str, Any]]:
    return [doc for docs in fed.receipts.values() for doc in docs]


# -- the honest run --------------------------------------------------------------------------


def test_an_honest_log_holds_every_anchor(fed: Federation) -> None:
    # Arrange
    entries, checkpoints = fed.files()
    # Act
    summary = verify_log(
        entries, checkpoints, fed.public, trusted=[fed.newest], receipts=all_receipts(fed)
    )
    # Assert
    assert summary.entries == 1 + ROUNDS * (2 + len(CLIENTS))
    assert summary.log_id == FED
    for doc in all_receipts(fed):
        verify_receipt(Receipt.from_dict(doc), fed.public)


# -- (a) cut short ---------------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 2, 5, 15])
def test_a_log_cut_short_still_verifies_alone_but_not_against_a_trusted_checkpoint(
    fed: Federation, k: int
) -> None:
    # Arrange: the coordinator drops its last k entries together with their checkpoints.
    total = fed.audit.size
    cut_short(fed, k)
    entries, checkpoints = fed.files()
    # Act / Assert: on its own the shorter log is consistent, which is exactly the weakness.
    assert verify_log(entries, checkpoints, fed.public).entries == total - k
    with pytest.raises(
        VerificationError,
        match=rf"the log holds {total - k} entries but a trusted checkpoint covers {total}: "
        "entries were removed",
    ):
        verify_log(entries, checkpoints, fed.public, trusted=[fed.newest])


def test_a_log_cut_short_is_refused_by_the_receipts_of_the_client_it_dropped(
    fed: Federation,
) -> None:
    # Arrange: cut round 3's close and hospital-c's round-3 contribution (the last one).
    total = fed.audit.size
    cut_short(fed, 2)
    entries, checkpoints = fed.files()
    assert verify_log(entries, checkpoints, fed.public).entries == total - 2
    # Act / Assert: bank-a's receipts are all still in the log, hospital-c's last one is not.
    verify_log(entries, checkpoints, fed.public, receipts=fed.receipts["bank-a"])
    with pytest.raises(
        VerificationError,
        match=r"receipt \(round 3, client hospital-c\): the log holds \d+ entries but a receipt's "
        r"checkpoint covers \d+: entries were removed",
    ):
        verify_log(entries, checkpoints, fed.public, receipts=fed.receipts["hospital-c"])


def test_an_emptied_log_is_refused_by_a_trusted_checkpoint(fed: Federation) -> None:
    # Arrange: nothing left at all; an empty log is trivially consistent.
    cut_short(fed, fed.audit.size)
    entries, checkpoints = fed.files()
    assert entries == b"" and verify_log(entries, checkpoints, fed.public).entries == 0
    # Act / Assert
    with pytest.raises(VerificationError, match="the log holds 0 entries"):
        verify_log(entries, checkpoints, fed.public, trusted=[fed.newest])
    with pytest.raises(VerificationError, match="entries were removed"):
        verify_log(entries, checkpoints, fed.public, receipts=fed.receipts["bank-a"])


# -- (b) fork --------------------------------------------------------------------------------


def test_a_forked_log_is_caught_by_consistency_and_by_a_trusted_checkpoint(
    fed: Federation, tmp_path: Path
) -> None:
    # Arrange: the key holder rebuilds history without bank-b's round-1 contribution and pads the
    # log so that it is as long as the original (a shorter one would be "cut short" instead).
    old_mid = SignedCheckpoint.from_dict(json.loads(fed.files()[1].split(b"\n")[5]))
    forked = run_federation(tmp_path / "forked" / "audit", fed.key, skip=frozenset({(1, "bank-b")}))
    forked.audit.append("round_opened", round=ROUNDS + 1, global_digest=_digest("pad"))
    forked.audit.append("round_opened", round=ROUNDS + 2, global_digest=_digest("pad"))
    new = forked.audit.latest_signed_checkpoint()
    verify_checkpoint(new, fed.public, log_id=FED)  # signed by the real key: not a forgery
    proof = forked.audit.consistency(old_mid.tree_size, new.tree_size)
    # Act / Assert: the fork's own proof cannot connect the old checkpoint to the new one.
    with pytest.raises(VerificationError, match="forked or was rewritten"):
        verify_checkpoint_consistency(old_mid, new, proof)
    with pytest.raises(VerificationError, match="forked or was rewritten"):
        verify_checkpoint_consistency(fed.newest, new, proof)
    same_size = SignedCheckpoint.from_dict(
        json.loads(forked.files()[1].split(b"\n")[fed.newest.tree_size - 1])
    )
    with pytest.raises(VerificationError, match="forked: two different roots"):
        verify_checkpoint_consistency(fed.newest, same_size, [])
    # The forked log verifies on its own but not against a checkpoint a client kept.
    entries, checkpoints = forked.files()
    assert verify_log(entries, checkpoints, fed.public).entries == fed.newest.tree_size + 1
    with pytest.raises(
        VerificationError,
        match=rf"the log was rewritten: it differs from the trusted checkpoint of "
        rf"{fed.newest.tree_size} entries",
    ):
        verify_log(entries, checkpoints, fed.public, trusted=[fed.newest])
    with pytest.raises(VerificationError, match=r"receipt \(round 1, client bank-a\)"):
        verify_log(entries, checkpoints, fed.public, receipts=fed.receipts["bank-a"])


# -- (c) forged and damaged receipts ---------------------------------------------------------


def test_a_receipt_whose_entry_was_altered_is_refused(fed: Federation) -> None:
    # Arrange: the receipt now claims a larger weight for bank-a's round-2 contribution.
    receipt = dict(fed.receipts["bank-a"][1])
    event = json.loads(receipt["entry"])
    receipt["entry"] = canonical_json({**event, "weight": 1000}).decode()
    entries, checkpoints = fed.files()
    # Act / Assert
    with pytest.raises(
        VerificationError, match=r"receipt \(round 2, client bank-a\): its entry and inclusion"
    ):
        verify_receipt(Receipt.from_dict(receipt), fed.public)
    with pytest.raises(VerificationError, match=r"receipt \(round 2, client bank-a\)"):
        verify_log(entries, checkpoints, fed.public, receipts=[receipt])


def test_a_receipt_from_another_federation_is_refused(fed: Federation, tmp_path: Path) -> None:
    # Arrange: the same coordinator key runs a second federation with another log id.
    other = run_federation(tmp_path / "other" / "audit", fed.key, log_id="fed-y")
    receipt = other.receipts["bank-a"][0]
    verify_receipt(Receipt.from_dict(receipt), fed.public)  # genuine, but for fed-y
    entries, checkpoints = fed.files()
    # Act / Assert
    with pytest.raises(
        VerificationError,
        match=r"receipt \(round 1, client bank-a\) is for federation 'fed-y', but this log is 'fed-x'",
    ):
        verify_log(entries, checkpoints, fed.public, receipts=[receipt])
    # Relabelled as fed-x, the coordinator's signature over the receipt no longer holds.
    relabelled = {**receipt, "federation_id": FED}
    with pytest.raises(VerificationError, match="not signed by the coordinator's key"):
        verify_log(entries, checkpoints, fed.public, receipts=[relabelled])
    # A fed-y checkpoint is not a trusted checkpoint for fed-x either.
    with pytest.raises(VerificationError, match="checkpoint is for log 'fed-y', expected 'fed-x'"):
        verify_log(entries, checkpoints, fed.public, trusted=[other.newest])


@pytest.mark.parametrize("damage", ["flipped hash", "dropped hash", "another entry's path"])
def test_a_receipt_with_a_wrong_inclusion_path_is_refused(fed: Federation, damage: str) -> None:
    # Arrange
    receipt = dict(fed.receipts["bank-b"][2])
    path = list(receipt["inclusion"])
    if damage == "flipped hash":
        path[0] = bytes(b ^ (i == 0) for i, b in enumerate(bytes.fromhex(path[0]))).hex()
    elif damage == "dropped hash":
        path = path[:-1]
    else:
        path = fed.receipts["bank-a"][2]["inclusion"]
    receipt["inclusion"] = path
    entries, checkpoints = fed.files()
    # Act / Assert
    with pytest.raises(
        VerificationError,
        match=r"receipt \(round 3, client bank-b\): its entry and inclusion proof do not match",
    ):
        verify_log(entries, checkpoints, fed.public, receipts=[receipt])


def test_a_signed_receipt_pointing_at_another_clients_entry_is_refused(fed: Federation) -> None:
    # Arrange: the coordinator signs bank-a a receipt whose index, entry and proof are bank-b's.
    honest = fed.receipts["bank-a"][0]
    theirs = fed.receipts["bank-b"][0]
    receipt = {
        **honest,
        "log_index": theirs["log_index"],
        "entry": theirs["entry"],
        "inclusion": theirs["inclusion"],
        "checkpoint": theirs["checkpoint"],
    }
    receipt["signature"] = sign_digest(
        fed.key,
        receipt_digest(
            federation_id=FED,
            round_number=1,
            client_id="bank-a",
            contribution=bytes.fromhex(honest["contribution_digest"]),
            log_index=theirs["log_index"],
            received_at_ms=honest["received_at_ms"],
        ),
    ).hex()
    entries, checkpoints = fed.files()
    # Act / Assert
    with pytest.raises(
        VerificationError,
        match=r"receipt \(round 1, client bank-a\): its entry .* is not this receipt's "
        r"contribution: its client is 'bank-b'",
    ):
        verify_log(entries, checkpoints, fed.public, receipts=[receipt])


def test_a_receipt_with_an_altered_field_loses_its_signature(fed: Federation) -> None:
    receipt = {**fed.receipts["hospital-c"][0], "round": 2}
    entries, checkpoints = fed.files()
    with pytest.raises(
        VerificationError,
        match=r"receipt \(round 2, client hospital-c\) is not signed by the coordinator's key",
    ):
        verify_log(entries, checkpoints, fed.public, receipts=[receipt])


# -- (d) checkpoint hygiene inside the log ---------------------------------------------------


def _checkpoint_docs(fed: Federation) -> list[dict[str, Any]]:
    return [json.loads(line) for line in fed.files()[1].split(b"\n")[:-1]]


def _write_checkpoints(fed: Federation, lines: list[bytes]) -> None:
    (fed.audit.folder / CHECKPOINTS).write_bytes(b"".join(line + b"\n" for line in lines))


def test_a_checkpoint_log_id_changed_mid_log_is_caught(fed: Federation) -> None:
    # Arrange: from checkpoint 7 on, the key holder signs under another log id.
    docs = _checkpoint_docs(fed)
    lines = [canonical_json(d) for d in docs[:7]]
    lines += [resign(d, fed.key, log_id="fed-other") for d in docs[7:]]
    _write_checkpoints(fed, lines)
    # Act / Assert
    with pytest.raises(
        VerificationError,
        match="checkpoint 7 is for log 'fed-other', but checkpoint 0 is for 'fed-x': the log id "
        "changed mid-log",
    ):
        verify_log(*fed.files(), fed.public)


def test_checkpoints_under_another_id_than_the_federation_started_are_caught(
    fed: Federation,
) -> None:
    _write_checkpoints(fed, [resign(d, fed.key, log_id="fed-z") for d in _checkpoint_docs(fed)])
    with pytest.raises(
        VerificationError,
        match="checkpoint 0 is for log 'fed-z', but audit entry 0 starts federation 'fed-x'",
    ):
        verify_log(*fed.files(), fed.public)


def test_checkpoint_time_going_backwards_is_caught(fed: Federation) -> None:
    # Arrange: checkpoint 9 is dated before checkpoint 8 (entry times stay untouched).
    docs = _checkpoint_docs(fed)
    docs[8] = json.loads(resign(docs[8], fed.key, timestamp_ms=docs[8]["timestamp_ms"] + 5000))
    lines = [canonical_json(d) for d in docs]
    lines[9] = resign(docs[9], fed.key, timestamp_ms=docs[8]["timestamp_ms"] - 1)
    _write_checkpoints(fed, lines)
    # Act / Assert
    with pytest.raises(
        VerificationError, match=r"checkpoint 9 has time \d+ ms, before checkpoint 8's"
    ):
        verify_log(*fed.files(), fed.public)


def test_a_checkpoint_with_a_boolean_size_is_refused_as_malformed(fed: Federation) -> None:
    """The log's checkpoints are parsed as every other reader parses them (SignedCheckpoint): a
    `true` where a size belongs (it equals 1) is named as the wrong type, not as a bad signature."""
    docs = _checkpoint_docs(fed)
    assert docs[0]["tree_size"] == 1
    docs[0]["tree_size"] = True
    lines = [canonical_json(d) for d in docs]
    _write_checkpoints(fed, lines)
    with pytest.raises(VerificationError, match="checkpoint 0: checkpoint has fields of the wrong"):
        verify_log(*fed.files(), fed.public)


# -- (e) consistency proofs ------------------------------------------------------------------


@pytest.fixture()
def nine(tmp_path: Path) -> tuple[AuditLog, Ed25519PrivateKey]:
    key = Ed25519PrivateKey.generate()
    audit = AuditLog(tmp_path / "nine", FED, key)
    audit.append("federation_started", federation_id=FED)
    for i in range(1, 9):
        audit.append("round_opened", round=i, global_digest=_digest(i))
    return audit, key


def test_consistency_proofs_verify_for_every_pair_of_sizes(nine) -> None:
    # Arrange
    audit, _ = nine
    leaves = [leaf_hash(line) for line in audit.entries()]
    roots = [EMPTY_ROOT] + [merkle_root(leaves[:m]) for m in range(1, 10)]
    assert audit.size == 9
    # Act / Assert
    for old in range(10):
        for new in range(old, 10):
            proof = audit.consistency(old, new)
            verify_consistency(old, new, roots[old], roots[new], proof)
            if 0 < old < new:
                with pytest.raises(VerificationError):
                    verify_consistency(old, new, roots[old - 1], roots[new], proof)


@pytest.mark.parametrize("sizes", [(-1, 3), (4, 3), (0, 10), (10, 10), (True, 3)])
def test_consistency_refuses_sizes_out_of_range(nine, sizes) -> None:
    audit, _ = nine
    with pytest.raises(FedLoraError, match="no consistency proof from tree size"):
        audit.consistency(*sizes)


def test_checkpoint_consistency_accepts_honest_growth_and_refuses_the_rest(nine) -> None:
    # Arrange
    audit, key = nine
    cps = [
        SignedCheckpoint.from_dict(json.loads(line))
        for line in (audit.folder / CHECKPOINTS).read_bytes().split(b"\n")[:-1]
    ]
    # Act / Assert: every later checkpoint extends every earlier one.
    for i, old in enumerate(cps):
        for new in cps[i:]:
            verify_checkpoint_consistency(old, new, audit.consistency(old.tree_size, new.tree_size))
    old, new = cps[2], cps[7]
    proof = audit.consistency(old.tree_size, new.tree_size)
    with pytest.raises(VerificationError, match="shrank"):
        verify_checkpoint_consistency(new, old, proof)
    earlier = SignedCheckpoint.from_dict(
        json.loads(resign(new.to_dict(), key, timestamp_ms=old.timestamp_ms - 1))
    )
    with pytest.raises(VerificationError, match="time went backwards"):
        verify_checkpoint_consistency(old, earlier, proof)
    forked = SignedCheckpoint.from_dict(
        json.loads(resign(new.to_dict(), key, root=leaf_hash(b"another history").hex()))
    )
    with pytest.raises(VerificationError, match="forked or was rewritten"):
        verify_checkpoint_consistency(old, forked, proof)
    with pytest.raises(VerificationError, match="log id changed"):
        verify_checkpoint_consistency(old, replace(new, log_id="fed-y"), proof)


# -- the command line ------------------------------------------------------------------------


def _verify_command(fed: Federation, *extra: str) -> subprocess.CompletedProcess[str]:
    command = [
        sys.executable,
        "-m",
        "fedlora",
        "audit",
        "verify",
        str(fed.audit.folder.parent),
        "--public-key",
        fed.public.hex(),
        *extra,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def test_the_verify_command_refuses_a_log_cut_short_in_one_line(
    fed: Federation, tmp_path: Path
) -> None:
    # Arrange
    bank = fed.client_state(tmp_path / "clients", "hospital-c")
    ok = _verify_command(
        fed,
        "--trusted-checkpoint",
        str(bank / "checkpoint.json"),
        "--receipts",
        str(bank / "receipts"),
    )
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "audit log OK" in ok.stdout and "1 trusted checkpoint(s) and 3 receipt(s)" in ok.stdout
    cut_short(fed, 2)
    assert _verify_command(fed).returncode == 0  # alone, the cut is invisible
    # Act
    bad = _verify_command(fed, "--trusted-checkpoint", str(bank / "checkpoint.json"))
    by_receipts = _verify_command(fed, "--receipts", str(bank / "receipts"))
    # Assert
    for result in (bad, by_receipts):
        assert result.returncode == 1, result.stdout + result.stderr
        assert result.stdout.count("\n") == 1, result.stdout
        assert result.stdout.startswith("audit log INVALID: ")
        assert "entries were removed" in result.stdout
    assert "receipt (round 3, client hospital-c)" in by_receipts.stdout


def test_the_verify_command_exits_2_on_unreadable_anchor_files(
    fed: Federation, tmp_path: Path, capsys
) -> None:
    # Arrange
    not_json = tmp_path / "checkpoint.json"
    not_json.write_text("{not json")
    empty = tmp_path / "no-receipts"
    empty.mkdir()
    base = ["audit", "verify", str(fed.audit.folder.parent), "--public-key", fed.public.hex()]
    # Act / Assert
    for extra, says in (
        (["--trusted-checkpoint", str(not_json)], "is not JSON"),
        (["--trusted-checkpoint", str(tmp_path / "missing.json")], "does not exist"),
        (["--receipts", str(empty)], "holds no *.json receipts"),
    ):
        assert main([*base, *extra]) == 2
        err = capsys.readouterr().err
        assert says in err and err.count("\n") == 1, err


def test_the_prove_command_proves_a_receipt_offline(
    fed: Federation, tmp_path: Path, capsys
) -> None:
    # Arrange
    bank = fed.client_state(tmp_path / "clients", "bank-b")
    receipt = bank / "receipts" / "round-00002.json"
    # Act
    code = main(["audit", "prove", str(receipt)])
    # Assert
    out = capsys.readouterr().out
    assert code == 0, out
    assert "receipt OK" in out and "proved offline from the receipt alone" in out
    # With the auditor's own key, and against the log itself.
    assert main(["audit", "prove", str(receipt), "--public-key", fed.public.hex()]) == 0
    assert main(["audit", "prove", str(receipt), "--log", str(fed.audit.folder.parent)]) == 0
    capsys.readouterr()
    # Another key, or an altered entry, and the receipt is INVALID (exit 1, one line).
    other = ed25519_public_bytes(Ed25519PrivateKey.generate()).hex()
    assert main(["audit", "prove", str(receipt), "--public-key", other]) == 1
    doc = json.loads(receipt.read_text())
    doc["entry"] = doc["entry"].replace('"weight":100', '"weight":101')
    receipt.write_text(json.dumps(doc))
    assert main(["audit", "prove", str(receipt)]) == 1
    out = capsys.readouterr().out
    assert out.count("\n") == 2 and "receipt INVALID: receipt (round 2, client bank-b)" in out


def test_a_receipt_stripped_of_its_proof_is_refused_and_a_cut_log_is_caught(
    fed: Federation, tmp_path: Path, capsys
) -> None:
    # Arrange: a receipt whose entry, inclusion proof or checkpoint was removed.
    full = dict(fed.receipts["bank-a"][0])
    for key in ("entry", "inclusion", "checkpoint"):
        doc = {k: v for k, v in full.items() if k != key}
        receipt = tmp_path / f"without-{key}.json"
        receipt.write_text(json.dumps(doc))
        # Act / Assert: one line naming the missing field, with or without the log.
        assert main(["audit", "prove", str(receipt), "--log", str(fed.audit.folder.parent)]) == 2
        err = capsys.readouterr().err
        assert "is not a fedlora receipt" in err and key in err
    receipt = tmp_path / "round-00001.json"
    receipt.write_text(json.dumps(full))
    assert main(["audit", "prove", str(receipt), "--log", str(fed.audit.folder.parent)]) == 0
    cut_short(fed, fed.audit.size - full["log_index"])
    assert main(["audit", "prove", str(receipt), "--log", str(fed.audit.folder.parent)]) == 1
    assert "entries were removed" in capsys.readouterr().out
