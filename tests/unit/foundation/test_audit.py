from __future__ import annotations

import json

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedlora.audit import (
    CHECKPOINTS,
    ENTRIES,
    AuditLog,
    Receipt,
    SignedCheckpoint,
    canonical_json,
    read_log_files,
    verify_checkpoint,
    verify_log,
)
from fedlora.crypto import (
    checkpoint_digest,
    ed25519_public_bytes,
    leaf_hash,
    sign_digest,
    verify_consistency,
    verify_inclusion,
)
from fedlora.errors import FedLoraError, VerificationError


@pytest.fixture()
def log(tmp_path):
    key = Ed25519PrivateKey.generate()
    audit = AuditLog(tmp_path / "audit", "fed-test", key)
    audit.append("round_opened", round=1, global_digest="ab" * 32)
    audit.append("contribution_accepted", round=1, client="bank-a", digest="cd" * 32)
    audit.append("contribution_rejected", round=1, client="bank-b", reason="bad signature")
    audit.append("aggregated", round=1, participants=["bank-a", "hospital-c"])
    audit.append("round_closed", round=1, global_digest="ef" * 32)
    return audit, ed25519_public_bytes(key)


def _files(audit):
    return (audit.folder / ENTRIES).read_bytes(), (audit.folder / CHECKPOINTS).read_bytes()


def test_a_written_log_verifies(log) -> None:
    audit, public = log
    summary = verify_log(*_files(audit), public)
    assert summary.entries == 5 and summary.checkpoints == 5
    assert summary.events[0]["event"] == "round_opened"
    assert read_log_files(audit.folder.parent)[2] == audit.folder


def test_every_flipped_byte_anywhere_is_caught(log) -> None:
    audit, public = log
    entries, checkpoints = _files(audit)
    for name, data in (("entries", entries), ("checkpoints", checkpoints)):
        for pos in range(len(data)):
            flipped = bytearray(data)
            flipped[pos] ^= 0x01
            args = (bytes(flipped), checkpoints) if name == "entries" else (entries, bytes(flipped))
            with pytest.raises(VerificationError):
                verify_log(*args, public)


def test_the_first_bad_entry_is_named(log) -> None:
    audit, public = log
    entries, checkpoints = _files(audit)
    lines = entries.split(b"\n")
    lines[2] = lines[2].replace(b"bad signature", b"bad signaturf")
    with pytest.raises(
        VerificationError, match="audit entry 2 does not match the signed checkpoint"
    ):
        verify_log(b"\n".join(lines), checkpoints, public)


def test_reordered_truncated_and_foreign_logs_are_caught(log) -> None:
    audit, public = log
    entries, checkpoints = _files(audit)
    lines = entries.rstrip(b"\n").split(b"\n")
    swapped = b"\n".join([lines[1], lines[0], *lines[2:]]) + b"\n"
    with pytest.raises(VerificationError, match="entry 0 carries index 1"):
        verify_log(swapped, checkpoints, public)
    with pytest.raises(VerificationError, match="truncated"):
        verify_log(b"\n".join(lines[:3]) + b"\n", checkpoints, public)
    with pytest.raises(VerificationError, match="not covered by any signed checkpoint"):
        verify_log(entries, b"\n".join(checkpoints.split(b"\n")[:3]) + b"\n", public)
    with pytest.raises(VerificationError, match="not signed by the coordinator"):
        verify_log(entries, checkpoints, ed25519_public_bytes(Ed25519PrivateKey.generate()))


def test_inclusion_proofs_from_the_writer_verify(log) -> None:
    audit, _ = log
    summary_root = verify_log(*_files(audit), log[1]).root
    for i in range(audit.size):
        leaf, path = audit.inclusion(i, audit.size)
        assert leaf == leaf_hash(audit.entries(i, 1)[0])
        verify_inclusion(leaf, i, audit.size, path, summary_root)


def test_a_torn_last_line_is_repaired_on_restart(tmp_path) -> None:
    key = Ed25519PrivateKey.generate()
    folder = tmp_path / "audit"
    audit = AuditLog(folder, "fed", key)
    audit.append("a", round=1)
    audit.append("b", round=1)
    # Simulate a crash mid-append: half an entry written, no checkpoint for it.
    with open(folder / ENTRIES, "ab") as fh:
        fh.write(b'{"event":"c","ind')
    reopened = AuditLog(folder, "fed", key)
    assert reopened.size == 2
    reopened.append("c", round=1)
    assert verify_log(*_files(reopened), ed25519_public_bytes(key)).entries == 3


def test_a_missing_last_checkpoint_is_resigned_on_restart(tmp_path) -> None:
    key = Ed25519PrivateKey.generate()
    folder = tmp_path / "audit"
    audit = AuditLog(folder, "fed", key)
    audit.append("a", round=1)
    audit.append("b", round=1)
    cps = (folder / CHECKPOINTS).read_bytes().split(b"\n")
    (folder / CHECKPOINTS).write_bytes(cps[0] + b"\n")  # crash between entry 1 and its checkpoint
    reopened = AuditLog(folder, "fed", key)
    assert verify_log(*_files(reopened), ed25519_public_bytes(key)).entries == 2


def test_the_latest_signed_checkpoint_is_the_last_checkpoint_line(log) -> None:
    # Arrange
    audit, public = log
    last = json.loads((audit.folder / CHECKPOINTS).read_bytes().split(b"\n")[-2])
    # Act
    cp = audit.latest_signed_checkpoint()
    # Assert
    assert cp.to_dict() == last == audit.latest_checkpoint()
    assert cp.tree_size == audit.size and cp.log_id == "fed-test"
    verify_checkpoint(cp, public, log_id="fed-test")
    assert SignedCheckpoint.from_dict(cp.to_dict()) == cp


def test_an_empty_log_has_no_checkpoint_yet(tmp_path) -> None:
    audit = AuditLog(tmp_path / "audit", "fed", Ed25519PrivateKey.generate())
    with pytest.raises(FedLoraError, match="no checkpoint yet"):
        audit.latest_signed_checkpoint()
    with pytest.raises(FedLoraError, match="no checkpoint yet"):
        audit.latest_checkpoint()
    assert audit.consistency(0, 0) == []


def test_consistency_proofs_link_every_checkpoint_to_the_newest(log) -> None:
    audit, _ = log
    cps = [
        SignedCheckpoint.from_dict(json.loads(line))
        for line in (audit.folder / CHECKPOINTS).read_bytes().split(b"\n")[:-1]
    ]
    newest = cps[-1]
    for cp in cps:
        proof = audit.consistency(cp.tree_size, newest.tree_size)
        verify_consistency(cp.tree_size, newest.tree_size, cp.root, newest.root, proof)
    with pytest.raises(FedLoraError, match="from tree size 3 to 6"):
        audit.consistency(3, 6)


def test_each_own_checkpoint_is_a_valid_trusted_checkpoint(log) -> None:
    audit, public = log
    entries, checkpoints = _files(audit)
    trusted = [SignedCheckpoint.from_dict(json.loads(x)) for x in checkpoints.split(b"\n")[:-1]]
    assert verify_log(entries, checkpoints, public, trusted=trusted).entries == 5


def test_a_trusted_checkpoint_must_be_signed_for_this_log(log) -> None:
    # Arrange
    audit, public = log
    entries, checkpoints = _files(audit)
    cp = audit.latest_signed_checkpoint()
    stranger = Ed25519PrivateKey.generate()
    digest = checkpoint_digest(
        log_id=cp.log_id, tree_size=9, root_hash=cp.root, timestamp_ms=cp.timestamp_ms
    )
    forged = SignedCheckpoint(cp.log_id, 9, cp.root, cp.timestamp_ms, sign_digest(stranger, digest))
    # Act / Assert
    with pytest.raises(VerificationError, match=r"trusted checkpoint 0: checkpoint .* not signed"):
        verify_log(entries, checkpoints, public, trusted=[forged])
    with pytest.raises(VerificationError, match="trusted checkpoint 1: checkpoint is for log"):
        verify_log(
            entries, checkpoints, public, trusted=[cp, SignedCheckpoint("other", *_rest(cp))]
        )


def _rest(cp: SignedCheckpoint) -> tuple[int, bytes, int, bytes]:
    return cp.tree_size, cp.root, cp.timestamp_ms, cp.signature


def test_a_malformed_receipt_is_named_with_its_field(log) -> None:
    audit, public = log
    entries, checkpoints = _files(audit)
    base = {
        "federation_id": "fed-test",
        "round": 1,
        "client_id": "bank-a",
        "contribution_digest": "cd" * 32,
        "log_index": 1,
        "received_at_ms": 5,
        "signature": "00" * 64,
        "entry": "{}",
        "inclusion": [],
        "checkpoint": json.loads(checkpoints.splitlines()[-1]),
    }
    for change, says in (
        ({"log_index": None}, "field 'log_index' must be an integer >= 0"),
        ({"round": True}, "field 'round' must be an integer >= 0"),
        ({"signature": "zz"}, "field 'signature' is not hex"),
        ({"contribution_digest": "cd"}, "field 'contribution_digest' must be 32 bytes"),
        ({"inclusion": "ab"}, "field 'inclusion' must be a list of hex hashes"),
        ({"entry": None}, "field 'entry' must be a string"),
        ({"checkpoint": {"tree_size": 1}}, "its checkpoint"),
    ):
        doc = {**base, **change}
        with pytest.raises(
            VerificationError, match=r"receipt \(round .*, client bank-a\) is malformed"
        ):
            verify_log(entries, checkpoints, public, receipts=[doc])
        with pytest.raises(VerificationError, match=says):
            Receipt.from_dict(doc)
    for name in ("received_at_ms", "entry", "checkpoint"):
        missing = dict(base)
        del missing[name]
        with pytest.raises(VerificationError, match=f"field '{name}' is missing"):
            Receipt.from_dict(missing)


def test_reopening_a_log_under_another_id_is_refused(log) -> None:
    audit, _ = log
    with pytest.raises(FedLoraError, match="is for log 'fed-test', not 'fed-other'"):
        AuditLog(audit.folder, "fed-other", Ed25519PrivateKey.generate())


def test_checkpoint_time_never_goes_backwards_after_a_clock_jump(tmp_path) -> None:
    # Arrange: the last checkpoint was signed while the clock ran an hour fast.
    key = Ed25519PrivateKey.generate()
    folder = tmp_path / "audit"
    AuditLog(folder, "fed", key).append("a", round=1)
    last = json.loads((folder / CHECKPOINTS).read_bytes())
    last["timestamp_ms"] += 3_600_000
    last["signature"] = sign_digest(
        key,
        checkpoint_digest(
            log_id="fed",
            tree_size=1,
            root_hash=bytes.fromhex(last["root"]),
            timestamp_ms=last["timestamp_ms"],
        ),
    ).hex()
    (folder / CHECKPOINTS).write_bytes(canonical_json(last) + b"\n")
    # Act: the coordinator restarts with the right time and appends.
    reopened = AuditLog(folder, "fed", key)
    reopened.append("b", round=1)
    # Assert
    assert reopened.latest_signed_checkpoint().timestamp_ms >= last["timestamp_ms"]
    assert verify_log(*_files(reopened), ed25519_public_bytes(key)).entries == 2
