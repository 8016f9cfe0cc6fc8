from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedlora.audit import CHECKPOINTS, ENTRIES, AuditLog, read_log_files, verify_log
from fedlora.crypto import ed25519_public_bytes, leaf_hash, verify_inclusion
from fedlora.errors import VerificationError


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
