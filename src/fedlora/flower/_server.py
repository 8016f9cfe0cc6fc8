"""The server side on Flower: :class:`FedloraStrategy`, secure aggregation around any strategy.

``FedloraStrategy(FedAvg(...), "coordinator.yaml")`` is used where the inner strategy would be
(``strategy.start(grid, initial_arrays, num_rounds)``, Flower's Message API). The inner strategy
still samples the nodes and configures training and evaluation; fedlora replaces the
aggregation. Behind it runs the same coordinator engine as the standalone service
(:class:`fedlora.coordinator.Coordinator`): admission, intake checks, proofs, the ticket quorum,
combination, the audit log — one implementation of the protocol. Each Flower round is:

1. ``train``: the inner strategy's messages, plus fedlora's (join info, round status, the global
   vector and the receipt of the node's last contribution); replies carry encrypted
   contributions, which the engine checks and stores exactly as over gRPC.
2. ``decrypt``: every share holder gets the decryption task and signs the round's ticket.
3. ``release``: with the quorum of ticket signatures, holders send proven partial decryptions;
   the engine combines them and publishes the new global version.

A node that refuses (its policy, its ledger, a quorum it does not see) ends the round cleanly:
the reason goes to the audit log (``round_failed``), the model stays as it was, the next round
starts. Nodes are identified as fedlora parties by a signed challenge
(:mod:`fedlora.flower._identity`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result, Strategy

from fedlora import rpc
from fedlora.config import CoordinatorConfig, Party, load_coordinator_config
from fedlora.coordinator import Coordinator, build_engine
from fedlora.crypto import ModexpBackend, verify_signature
from fedlora.errors import ConfigError, FedLoraError, ProtocolError
from fedlora.flower import _wire as w
from fedlora.flower._client import flatten
from fedlora.flower._identity import join_digest
from fedlora.protocol import FLOWER_LAYOUT, Stage
from fedlora.v1 import federation_pb2

log = logging.getLogger("fedlora.flower")
RUN_CONFIG_PREFIX = "fedlora."


class FedloraStrategy(Strategy):
    """Threshold-Paillier secure aggregation around a Flower strategy (see the module doc)."""

    def __init__(
        self,
        inner: Strategy,
        config: CoordinatorConfig | str | Path,
        *,
        run_config: Mapping[str, Any] | None = None,
        timeout: float = 600.0,
        backend: ModexpBackend | None = None,
    ) -> None:
        """``run_config``: the Flower run config; its ``fedlora.<dotted key>`` entries (e.g.
        ``fedlora.federated_learning.participant_threshold``) replace the YAML's values and are
        validated exactly as the YAML is."""
        self.inner = inner
        overrides = {
            k[len(RUN_CONFIG_PREFIX) :]: v
            for k, v in (run_config or {}).items()
            if k.startswith(RUN_CONFIG_PREFIX)
        }
        if isinstance(config, CoordinatorConfig):
            if overrides:
                raise ConfigError("run-config overrides need the coordinator YAML's path")
            self.config = config
        else:
            self.config = load_coordinator_config(Path(config), overrides)
        self.timeout = timeout
        self.backend = backend
        self.engine: Coordinator | None = None
        self.grid: Grid | None = None
        self.nodes: dict[int, Party] = {}  # Flower node id -> fedlora party
        self.anchors: dict[int, int] = {}  # node -> tree size of the checkpoint it keeps
        self.scanned: dict[int, int] = {}  # node -> audit entries it has read (keeping models)
        self.sent: dict[int, set[int]] = {}  # node -> checkpoint sizes sent since its anchor
        self.receipts: dict[int, bytes] = {}  # node -> its last receipt, delivered next time
        self.receipt_sizes: dict[int, int] = {}  # node -> tree size of that receipt's checkpoint
        self.template: ArrayRecord | None = None
        self.base: np.ndarray | None = None  # the initial arrays, flattened
        self.refusals: list[str] = []

    # -- set-up ------------------------------------------------------------------------------
    def _start(self, arrays: ArrayRecord) -> Coordinator:
        self.template = arrays
        self.base = flatten(arrays)
        # On Flower the model is the ServerApp's arrays: their size is the shared vector's, and
        # the peft template and spec of a standalone federation do not apply.
        model = dataclasses.replace(
            self.config.model,
            num_parameters=int(self.base.size),
            adapter_template=None,
            spec=None,
        )
        self.config = dataclasses.replace(self.config, model=model)
        # Version 0 is the initial arrays, so every published version is the whole model, and
        # members keep it as such; a restart with other initial arrays is refused.
        # The arrays' layout goes into the log's federation_started entry: members render the
        # versions they keep with the layout the log names, not one a message brings.
        layout = [[k, list(a.shape), str(a.dtype)] for k, a in arrays.items()]
        self.engine = build_engine(
            self.config,
            backend=self.backend,
            initial=self.base,
            extra_settings={FLOWER_LAYOUT: layout},
        )
        return self.engine

    def _join(self, grid: Grid) -> None:
        """Identify every node as an enrolled party by a signed, fresh challenge."""
        engine = self.engine
        assert engine is not None
        wanted = engine.min_clients
        deadline = time.monotonic() + self.timeout
        while len(list(grid.get_node_ids())) < wanted and time.monotonic() < deadline:
            time.sleep(0.5)  # SuperNodes register as they start
        nodes = list(grid.get_node_ids())
        challenges = {n: os.urandom(32) for n in nodes}
        messages = [
            Message(
                w.put(RecordDict(), w.JOIN, {"nonce": challenges[n]}),
                dst_node_id=n,
                message_type=MessageType.TRAIN,  # mods wrap registered functions; as SecAgg+ does
            )
            for n in nodes
        ]
        for reply in grid.send_and_receive(messages, timeout=self.timeout):
            node = reply.metadata.src_node_id
            if reply.has_error() or w.step_of(reply.content) != w.JOIN:
                self._refused(node, reply)
                continue
            party = engine.config.party(str(w.scalar(reply.content, "party")))
            digest = join_digest(self.config.federation_id, node, challenges[node])
            try:
                if party is None:
                    raise ProtocolError(f"node {node} names no enrolled party")
                verify_signature(
                    bytes.fromhex(party.signing_public_key),
                    digest,
                    w.blob(reply.content, "signature"),
                )
                if party in self.nodes.values():
                    raise ProtocolError(f"{party.id} answered from two nodes")
                engine.authenticate(party.id, "Flower join")
            except FedLoraError as exc:
                log.warning(f"node {node} is not admitted: {exc}")
                continue
            self.nodes[node] = party
            self._marks(node, reply.content)
            engine.join_info(party)
        log.info(f"{len(self.nodes)} of {len(nodes)} nodes joined as fedlora parties")

    def _refused(self, node: int, reply: Message) -> None:
        raw = (
            str(reply.error.reason or "")
            if reply.has_error()
            else str(w.scalar(reply.content, "reason") or "")
        )
        # One short line per node: a ClientApp's traceback belongs in its own log, not ours.
        lines = re.sub(r"\x1b\[[0-9;]*m", "", raw).strip().splitlines()
        reason = lines[0][:300] if lines else "no reason"
        if not reply.has_error():
            self._marks(node, reply.content)  # a refusal still says what the node holds
        party = self.nodes.get(node)
        self.refusals.append(f"{party.id if party else node}: {reason}")
        log.warning(f"node {node} ({party.id if party else '?'}) refused: {reason}")

    def _marks(self, node: int, content: RecordDict) -> None:
        """What a node's reply says it holds: its anchored checkpoint, the log entries it read."""
        if w.STEP not in content.config_records:
            return
        for into, name in ((self.anchors, "anchor"), (self.scanned, "scanned")):
            value = w.scalar(content, name)
            into[node] = value if isinstance(value, int) and value >= 0 else 0
        anchor = self.anchors[node]
        self.sent[node] = {size for size in self.sent.get(node, set()) if size >= anchor}

    def _models(self, node: int, tree_size: int) -> dict[str, bytes]:
        """What a member needs to keep every version published since it last read the log: the
        entries since, inclusion proofs for the ones it keeps, and those versions' bytes."""
        engine = self.engine
        assert engine is not None
        start = min(self.scanned.get(node, 0), tree_size)
        lines = engine.audit.entries(start, tree_size - start) if tree_size > start else []
        blobs = {"entries": w.pack_lines(lines)}
        for offset, line in enumerate(lines):
            index = start + offset
            doc = json.loads(line)
            event, version = doc.get("event"), doc.get("version", doc.get("global_version"))
            if event not in ("global_published", "federation_finished"):
                continue
            blobs[f"inclusion:{index}:{tree_size}"] = b"".join(
                engine.audit.inclusion(index, tree_size)[1]
            )
            if event == "global_published" and version and version != engine.global_version:
                blobs[f"global:{version}"] = engine.store.global_path(version).read_bytes()
        blobs["global"] = engine.store.global_path(engine.global_version).read_bytes()
        return blobs

    # -- what every fedlora message to a node carries ------------------------------------------
    def _common(self, node: int, party: Party, *, models: bool = False) -> dict[str, bytes]:
        engine = self.engine
        assert engine is not None
        cp = engine.checkpoint()
        blobs = {
            "join": rpc.join_to_proto(engine.join_info(party)).SerializeToString(),
            "status": rpc.status_to_proto(engine.status(party)).SerializeToString(),
            "checkpoint": rpc.checkpoint_to_proto(cp).SerializeToString(),
        }
        # Consistency proofs the node will ask for: from the checkpoint it keeps, through its
        # receipt's, to the current one. The checkpoint it keeps is the one it last reported, or
        # one sent since, whose reply was lost (a node that anchored it and then failed).
        sent = self.sent.setdefault(node, set())
        sizes = sorted(
            {self.anchors.get(node, 0), self.receipt_sizes.get(node, 0), cp.tree_size, *sent}
        )
        sent.add(cp.tree_size)
        for i, old in enumerate(sizes):
            for new in sizes[i + 1 :]:
                if old > 0:
                    blobs[f"consistency:{old}:{new}"] = b"".join(engine.audit.consistency(old, new))
        receipt = self.receipts.pop(node, None)  # delivered once: the node anchors it then
        if receipt is not None:
            blobs["receipt"] = receipt
        if models:
            blobs.update(self._models(node, cp.tree_size))
        return blobs

    def _scalars(self, node: int) -> dict[str, Any]:
        engine = self.engine
        assert engine is not None
        return {"global_version": engine.global_version, "entries_start": self.scanned.get(node, 0)}

    def global_arrays(self) -> ArrayRecord:
        """The current global model (the published version, in the initial arrays' layout)."""
        engine, template, base = self.engine, self.template, self.base
        assert engine is not None and template is not None and base is not None
        vector = engine.store.load_global(engine.global_version)
        out, offset = {}, 0
        for key, array in template.items():
            shape = array.shape
            n = int(np.prod(shape)) if shape else 1
            out[key] = Array(vector[offset : offset + n].reshape(shape).astype(array.numpy().dtype))
            offset += n
        return ArrayRecord(out)

    # -- Strategy ------------------------------------------------------------------------------
    def start(
        self,
        grid: Grid,
        initial_arrays: ArrayRecord,
        num_rounds: int = 3,
        timeout: float = 3600,
        train_config: ConfigRecord | None = None,
        evaluate_config: ConfigRecord | None = None,
        evaluate_fn: Any = None,
    ) -> Result:
        """Flower's strategy loop; then every member is sent what it needs to keep the versions
        published since it last read the log (the final one included), as the standalone client
        keeps them."""
        if num_rounds != self.config.federated_learning.rounds:
            log.warning(
                f"num_rounds is {num_rounds}, the federation's federated_learning.rounds is "
                f"{self.config.federated_learning.rounds}: the federation finishes (and members "
                "mark a final model) only after that many rounds"
            )
        result = super().start(
            grid, initial_arrays, num_rounds, timeout, train_config, evaluate_config, evaluate_fn
        )
        self.handover(grid)
        return result

    def handover(self, grid: Grid) -> None:
        """Send every admitted node the ``keep`` step (the log since it last read it, the proofs
        and the versions), so each member keeps every published version with its proof."""
        engine = self.engine
        if engine is None or not self.nodes:
            return
        messages = [
            Message(
                w.put(RecordDict(), w.KEEP, self._common(n, p, models=True), **self._scalars(n)),
                dst_node_id=n,
                message_type=MessageType.TRAIN,
            )
            for n, p in self.nodes.items()
        ]
        self.refusals = []
        kept = 0
        for reply in grid.send_and_receive(messages, timeout=self.timeout):
            node = reply.metadata.src_node_id
            if reply.has_error() or w.step_of(reply.content) != "kept":
                self._refused(node, reply)
                continue
            self._marks(node, reply.content)
            kept += 1
        log.info(
            f"{kept} of {len(self.nodes)} members keep global version {engine.global_version}"
            + (f"; {_grouped(self.refusals)}" if self.refusals else "")
        )

    def summary(self) -> None:
        self.inner.summary()
        log.info(
            f"\t└──> secure aggregation: fedlora threshold Paillier, federation "
            f"{self.config.federation_id!r}"
        )

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self.grid = grid
        engine = self.engine or self._start(arrays)
        if not self.nodes:
            self._join(grid)
        engine.tick()  # round 1 opens once min_clients parties have joined
        if engine.stage is not Stage.COLLECTING:
            log.warning(
                f"round {server_round}: the federation is {engine.stage.value}; no training"
            )
            return []
        messages = []
        current = self.global_arrays()
        for message in self.inner.configure_train(server_round, current, config, grid):
            node = message.metadata.dst_node_id
            party = self.nodes.get(node)
            if party is None:
                continue  # not an admitted fedlora party: it gets nothing to train
            # Strategies such as FedAvg give all their messages one RecordDict; fedlora's part
            # differs per node (its receipt, proofs, log entries), so each gets its own.
            message.content = RecordDict(dict(message.content.items()))
            w.put(
                message.content,
                w.TRAIN,
                self._common(node, party, models=True),
                **self._scalars(node),
            )
            messages.append(message)
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        engine = self.engine
        assert engine is not None
        self.refusals = []
        accepted = 0
        for reply in replies:
            node = reply.metadata.src_node_id
            party = self.nodes.get(node)
            if party is None:
                continue
            if reply.has_error() or w.step_of(reply.content) != w.TRAIN:
                self._refused(node, reply)
                continue
            self._marks(node, reply.content)
            try:
                header = rpc.contribution_header_from_proto(
                    w.parse(
                        federation_pb2.ContributionHeader(),
                        w.blob(reply.content, "header"),
                        "contribution header",
                    )
                )
                receipt = engine.accept_contribution(
                    party, header, [w.blob(reply.content, "records")]
                )
            except FedLoraError as exc:
                self.refusals.append(f"{party.id}: contribution refused: {exc}")
                continue
            self.receipts[node] = rpc.receipt_to_proto(receipt).SerializeToString()
            self.receipt_sizes[node] = receipt.checkpoint.tree_size if receipt.checkpoint else 0
            accepted += 1
        before = engine.global_version
        engine.close_collection()  # the push transport collected all it will get
        engine.tick()  # aggregates (or fails the round below participant_threshold)
        if engine.stage is Stage.TICKETING:
            self._decrypt(server_round)
        closed = engine.global_version > before
        metrics = MetricRecord(
            {"fedlora-contributions": accepted, "fedlora-round-closed": int(closed)}
        )
        return self.global_arrays(), metrics

    def _holders(self) -> list[tuple[int, Party]]:
        engine = self.engine
        assert engine is not None and engine.key is not None
        holders = set(engine.key.party_ids)
        return [(n, p) for n, p in self.nodes.items() if p.id in holders]

    def _task(self, node: int, party: Party, step: str, round_number: int) -> Message:
        """A holder's decrypt message (the whole task) or release message (the manifest with
        the ticket signatures only: the holder kept the aggregate it verified)."""
        engine = self.engine
        assert engine is not None
        manifest_only = step == w.RELEASE
        manifest, stream = engine.decryption_task(party, round_number, manifest_only=manifest_only)
        blobs = self._common(node, party)
        blobs["manifest"] = rpc.manifest_to_proto(manifest).SerializeToString()
        parts: dict[str, bytearray] = {}
        for client_id, chunk in stream:
            parts.setdefault(f"c:{client_id}" if client_id else "aggregate", bytearray()).extend(
                chunk
            )
        blobs.update({k: bytes(v) for k, v in parts.items()})
        return Message(
            w.put(
                RecordDict(),
                step,
                blobs,
                round=round_number,
                signatures=len(manifest.ticket_signatures),
                quorum=engine.quorum,
                manifest_only=manifest_only,
            ),
            dst_node_id=node,
            message_type=MessageType.TRAIN,  # mods wrap registered functions; as SecAgg+ does
        )

    def _decrypt(self, round_number: int) -> None:
        """Tickets, then partial decryptions, from the share holders; the round ends either way."""
        engine, grid = self.engine, self.grid
        assert engine is not None and grid is not None
        holders = self._holders()
        for step in (w.DECRYPT, w.RELEASE):
            messages = [self._task(n, p, step, round_number) for n, p in holders]
            for reply in grid.send_and_receive(messages, timeout=self.timeout):
                node = reply.metadata.src_node_id
                party = self.nodes.get(node)
                if party is None:
                    continue
                if reply.has_error() or w.step_of(reply.content) not in ("signed", "released"):
                    self._refused(node, reply)
                    continue
                self._marks(node, reply.content)
                self._accept(party, reply.content, round_number)
            engine.tick()
            if engine.stage is not Stage.DECRYPTING:
                break
        if engine.stage in (Stage.TICKETING, Stage.DECRYPTING):
            reasons = _grouped(self.refusals) or "holders did not answer"
            engine.end_decryption(f"decryption ended on Flower without a result: {reasons}")

    def _accept(self, party: Party, content: RecordDict, round_number: int) -> None:
        engine = self.engine
        assert engine is not None
        try:
            ticket = w.blob(content, "ticket", required=False)
            if ticket:
                engine.accept_ticket(
                    party, round_number, ticket, w.blob(content, "ticket_signature")
                )
            header_data = w.blob(content, "partial_header", required=False)
            if header_data:
                header = rpc.partial_header_from_proto(
                    w.parse(federation_pb2.PartialHeader(), header_data, "partial header")
                )
                engine.accept_partial(party, header, [w.blob(content, "partial")])
        except FedLoraError as exc:
            self.refusals.append(f"{party.id}: {exc}")

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self.inner.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        return self.inner.aggregate_evaluate(server_round, replies)


__all__ = ["FedloraStrategy"]


def _grouped(refusals: list[str]) -> str:
    """``"who: why"`` lines grouped by reason: ``"why (a, b, c); other (d)"``."""
    by: dict[str, list[str]] = {}
    for line in refusals:
        who, _, why = line.partition(": ")
        by.setdefault(why, []).append(who)
    return "; ".join(f"{why} ({', '.join(who)})" for why, who in by.items())
