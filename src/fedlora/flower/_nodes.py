"""What the Flower server knows of each node, and what every fedlora message to a node carries.

Flower pushes: a node answers the message it is given and cannot ask for anything. So each
message carries what the node's member will ask its transport for (:class:`fedlora.flower.
_client.PushTransport` serves it): the join info and round status, the current checkpoint, the
consistency proofs from every checkpoint the node may hold (the one it last reported, or one
sent since whose reply was lost) to the ones it is shown, its receipt until it confirms it, and
the log entries and versions it does not keep yet. All of it comes from the engine's public
calls and its audit log, as the gRPC servicers' answers do.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Iterator
from typing import Any

from flwr.app import Message, RecordDict

from fedlora import rpc
from fedlora.config import Party
from fedlora.coordinator import Coordinator
from fedlora.errors import FedLoraError
from fedlora.flower import _wire as w
from fedlora.protocol import Receipt

log = logging.getLogger("fedlora.flower")
MODELS_PER_MESSAGE = 4  # kept versions a message carries for a member that is behind
MAX_CANDIDATES = 8  # checkpoints a node may hold after lost replies, proofs sent for each


class Nodes:
    """The admitted nodes (Flower node id → fedlora party), what each one holds, and the
    refusals gathered in the step at hand (see the module docstring)."""

    def __init__(self) -> None:
        self.engine: Coordinator | None = None  # set once the federation starts
        self.nodes: dict[int, Party] = {}  # Flower node id -> fedlora party
        self.anchors: dict[int, int] = {}  # node -> tree size of the checkpoint it keeps
        self.scanned: dict[int, int] = {}  # node -> audit entries it has read (keeping models)
        self.kept: dict[int, int] = {}  # node -> v: it keeps versions 1 … v
        self.sent: dict[int, set[int]] = {}  # node -> checkpoint sizes sent since its anchor
        self.receipts: dict[int, bytes] = {}  # node -> its last receipt, sent until it replies
        self.receipt_sizes: dict[int, int] = {}  # node -> tree size of that receipt's checkpoint
        self.carrying: set[int] = set()  # nodes whose message in flight carries their receipt
        self._lines: list[bytes] = []  # the audit log as read so far
        self._publications: list[tuple[int, int]] = []  # (entry index, version) published
        self._finished_at: int | None = None  # the newest federation_finished entry
        self.refusals: list[str] = []

    def keep_receipt(self, node: int, receipt: Receipt) -> None:
        """The receipt for a node's contribution: sent with its messages until it replies."""
        self.receipts[node] = rpc.receipt_to_proto(receipt).SerializeToString()
        self.receipt_sizes[node] = receipt.checkpoint.tree_size if receipt.checkpoint else 0

    def refused(self, node: int, reply: Message) -> None:
        raw = ""
        try:
            raw = (
                str(reply.error.reason or "")
                if reply.has_error()
                else str(w.scalar(reply.content, "reason") or "")
            )
            if not reply.has_error():
                self.marks(node, reply.content)  # a refusal still says what the node holds
        except Exception:  # a reply that is not even a readable refusal
            raw = raw or "an unreadable reply"
        # One short line per node: a ClientApp's traceback belongs in its own log, not ours.
        lines = re.sub(r"\x1b\[[0-9;]*m", "", raw).strip().splitlines()
        reason = lines[0][:300] if lines else "no reason"
        party = self.nodes.get(node)
        self.refusals.append(f"{party.id if party else node}: {reason}")
        log.warning(f"node {node} ({party.id if party else '?'}) refused: {reason}")

    def answers(
        self, replies: Iterable[Message], steps: Iterable[str]
    ) -> Iterator[tuple[int, Party, Message]]:
        """Each admitted node's first reply that is one of fedlora's ``steps``, with its node id
        and party; any other reply of a node is its refusal, and a second reply (a relay's
        copy) is dropped."""
        expected, answered = set(steps), set()
        for reply in replies:
            node = reply.metadata.src_node_id
            party = self.nodes.get(node)
            if party is None or node in answered:
                continue
            answered.add(node)
            if reply.has_error() or w.step_of(reply.content) not in expected:
                self.refused(node, reply)
                continue
            yield node, party, reply

    def marks(self, node: int, content: RecordDict) -> None:
        """What a node's reply says it holds: its anchored checkpoint, the log entries it read,
        the versions it keeps. A value beyond the log (a lying node, or a ServerApp restarted
        with a fresh state folder) is taken as nothing held, so no proof is asked of the log
        that it cannot give."""
        if w.STEP not in content.config_records:
            return
        engine = self.engine
        assert engine is not None
        size = engine.audit.size
        bounds = {"anchor": size, "scanned": size, "kept": engine.global_version}
        for into, name in (
            (self.anchors, "anchor"),
            (self.scanned, "scanned"),
            (self.kept, "kept"),
        ):
            value = w.scalar(content, name)
            ok = type(value) is int and 0 <= value <= bounds[name]
            into[node] = value if ok else 0
        anchor = self.anchors[node]
        self.sent[node] = {size for size in self.sent.get(node, set()) if size >= anchor}

    def replied(self, node: int) -> None:
        """A node answered a message it could read: the receipt that message carried is its."""
        if node in self.carrying:
            self.carrying.discard(node)
            self.receipts.pop(node, None)
            self.receipt_sizes.pop(node, None)

    def _read_log(self, tree_size: int) -> None:
        """Read the audit entries up to ``tree_size`` not read yet; note the publications."""
        engine = self.engine
        assert engine is not None
        start = len(self._lines)
        if tree_size <= start:
            return
        for offset, line in enumerate(engine.audit.entries(start, tree_size - start)):
            self._lines.append(line)
            doc = json.loads(line)
            event = doc.get("event")
            if event == "global_published" and isinstance(doc.get("version"), int):
                self._publications.append((start + offset, doc["version"]))
            elif event == "federation_finished":
                self._finished_at = start + offset

    def _models(self, node: int, tree_size: int) -> dict[str, bytes]:
        """What a member needs to keep every published version: the log entries since it last
        read the log, and for the (at most ``MODELS_PER_MESSAGE``) oldest versions it does not
        keep yet, their inclusion proofs and bytes (it catches up over several messages); the
        newest ``federation_finished`` entry's proof."""
        engine = self.engine
        assert engine is not None
        self._read_log(tree_size)
        start = min(self.scanned.get(node, 0), tree_size)
        blobs = {"entries": w.pack_lines(self._lines[start:tree_size])}
        kept = self.kept.get(node, 0)
        wanted = [(i, v) for i, v in self._publications if v > kept and i < tree_size]
        indices = [i for i, _ in wanted[:MODELS_PER_MESSAGE]]
        if self._finished_at is not None and self._finished_at < tree_size:
            indices.append(self._finished_at)
        for index in indices:
            blobs[f"inclusion:{index}:{tree_size}"] = b"".join(
                engine.audit.inclusion(index, tree_size)[1]
            )
        for _, version in wanted[:MODELS_PER_MESSAGE]:
            if version != engine.global_version:
                blobs[f"global:{version}"] = b"".join(engine.global_chunks(version)[1])
        blobs["global"] = b"".join(engine.global_chunks(engine.global_version)[1])
        return blobs

    def carry(self, node: int, party: Party, *, models: bool = False) -> dict[str, bytes]:
        engine = self.engine
        assert engine is not None
        cp = engine.checkpoint()
        blobs = {
            "join": rpc.join_to_proto(engine.member_info(party)).SerializeToString(),
            "status": rpc.status_to_proto(engine.status(party)).SerializeToString(),
            "checkpoint": rpc.checkpoint_to_proto(cp).SerializeToString(),
        }
        # Consistency proofs the node will ask for: from the checkpoint it keeps to its
        # receipt's and to the current one, and from its receipt's to the current one. The
        # checkpoint it keeps is the one it last reported, or one sent since whose reply was
        # lost (a node that anchored it and then failed): one proof per candidate, not per pair.
        sent = set(sorted(self.sent.get(node, set()))[-(MAX_CANDIDATES - 1) :])
        self.sent[node] = sent
        receipt_size = self.receipt_sizes.get(node, 0)
        candidates = {self.anchors.get(node, 0), *sent}
        pairs = {(old, new) for old in candidates for new in (receipt_size, cp.tree_size)}
        pairs.add((receipt_size, cp.tree_size))
        sent.add(cp.tree_size)
        for old, new in sorted(pairs):
            old, new = min(old, new), max(old, new)
            if 0 < old < new:
                try:
                    blobs[f"consistency:{old}:{new}"] = b"".join(engine.audit.consistency(old, new))
                except FedLoraError:
                    continue  # a size the log never had: the node's check fails cleanly
        receipt = self.receipts.get(node)  # sent until the node answers a message with it
        if receipt is not None:
            blobs["receipt"] = receipt
            self.carrying.add(node)
        if models:
            blobs.update(self._models(node, cp.tree_size))
        return blobs

    def addressed(
        self, node: int, party: Party, content: RecordDict, step: str
    ) -> RecordDict | None:
        """A copy of ``content`` with fedlora's ``step`` for ``node`` added (strategies such as
        FedAvg give all their messages one RecordDict; fedlora's part differs per node: its
        receipt, proofs, log entries), or None when the engine refuses to address it (that
        node is left out of this step, not the others)."""
        try:
            blobs = self.carry(node, party, models=True)
        except FedLoraError as exc:
            self.refusals.append(f"coordinator: {party.id}: {exc}")
            log.warning(f"node {node} ({party.id}) is left out of the {step} step: {exc}")
            return None
        return w.put(RecordDict(dict(content.items())), step, blobs, **self.scalars(node))

    def scalars(self, node: int) -> dict[str, Any]:
        engine = self.engine
        assert engine is not None
        return {"global_version": engine.global_version, "entries_start": self.scanned.get(node, 0)}


def grouped(refusals: list[str]) -> str:
    """``"who: why"`` lines grouped by reason: ``"why (a, b, c); other (d)"``."""
    by: dict[str, list[str]] = {}
    for line in refusals:
        who, _, why = line.partition(": ")
        by.setdefault(why, []).append(who)
    return "; ".join(f"{why} ({', '.join(who)})" for why, who in by.items())
