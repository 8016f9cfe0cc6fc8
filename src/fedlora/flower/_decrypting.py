"""Decrypting a round on Flower: tickets from every share holder, then partial decryptions.

The holders' messages carry the decryption task (``decrypt``) or only its manifest with the
ticket signatures (``release``: the holder kept the aggregate it verified); their replies carry
ticket signatures and partial decryption chunks, which the engine checks and combines exactly
as it does over gRPC.
"""

from __future__ import annotations

from flwr.app import Message, MessageType, RecordDict
from flwr.serverapp import Grid

from fedlora import rpc
from fedlora.config import Party
from fedlora.coordinator import Coordinator
from fedlora.errors import FedLoraError, ProtocolError
from fedlora.flower import _wire as w
from fedlora.flower._nodes import Nodes, grouped
from fedlora.protocol import Stage, assemble_task, chunk_ranges
from fedlora.v1 import federation_pb2


class Decryption:
    """One round's decryption on Flower, driven by :meth:`run`."""

    def __init__(self, engine: Coordinator, nodes: Nodes, grid: Grid, timeout: float) -> None:
        self.engine, self.nodes, self.grid, self.timeout = engine, nodes, grid, timeout

    def chunk_bytes(self) -> int:
        """The size of the largest chunk of a partial decryption."""
        engine = self.engine
        first, stop = chunk_ranges(engine.record_count)[0]
        return (stop - first) * engine.width

    def holders(self) -> list[tuple[int, Party]]:
        engine = self.engine
        assert engine.key is not None
        holders = set(engine.key.party_ids)
        return [(n, p) for n, p in self.nodes.nodes.items() if p.id in holders]

    def task(self, node: int, party: Party, step: str, round_number: int) -> Message:
        """A holder's decrypt message (the whole task) or release message (the manifest with
        the ticket signatures only: the holder kept the aggregate it verified)."""
        engine = self.engine
        manifest_only = step == w.RELEASE
        manifest, stream = engine.decryption_task(party, round_number, manifest_only=manifest_only)
        blobs = self.nodes.carry(node, party)
        blobs["manifest"] = rpc.manifest_to_proto(manifest).SerializeToString()
        task = assemble_task(manifest, stream)
        blobs.update({f"c:{k}": v for k, v in task.contributions.items()})
        if task.aggregate:
            blobs["aggregate"] = task.aggregate
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

    def run(self, round_number: int) -> None:
        """Tickets from every share holder; then partial decryptions from ``t`` of those that
        signed, and from the other signers only if some of those ``t`` fail (each release costs
        a holder one exponentiation per ciphertext, and ``t`` partials decrypt). The round ends
        either way."""
        engine = self.engine
        assert engine.key is not None
        holders = self.holders()
        self.send_tasks(w.DECRYPT, holders, round_number)
        released: set[int] = set()
        while engine.stage is Stage.DECRYPTING:
            signed = engine.ticket_signers()
            have = engine.complete_partials()
            ready = [(n, p) for n, p in holders if p.id in signed and n not in released]
            needed = engine.key.threshold - len(have)
            if not ready or needed <= 0:
                break
            batch = ready[:needed]
            released.update(n for n, _ in batch)
            self.send_tasks(w.RELEASE, batch, round_number)
        if engine.stage in (Stage.TICKETING, Stage.DECRYPTING):
            reasons = grouped(self.nodes.refusals) or "holders did not answer"
            engine.end_decryption(f"decryption ended on Flower without a result: {reasons}")

    def send_tasks(self, step: str, holders: list[tuple[int, Party]], round_number: int) -> None:
        engine, grid = self.engine, self.grid
        messages = []
        for holder, member in holders:
            try:
                messages.append(self.task(holder, member, step, round_number))
            except FedLoraError as exc:  # the engine moved on (its deadline passed, say)
                self.nodes.refusals.append(f"coordinator: {member.id}: {exc}")
        if not messages:
            return
        replies = grid.send_and_receive(messages, timeout=self.timeout)
        for node, party, reply in self.nodes.answers(replies, ("signed", "released")):
            self.accept(node, party, reply.content, round_number)
        engine.tick()

    def accept(self, node: int, party: Party, content: RecordDict, round_number: int) -> None:
        engine = self.engine
        try:
            self.nodes.marks(node, content)
            self.nodes.replied(node)
            ticket = w.blob(content, "ticket", required=False, max_bytes=w.SMALL)
            if ticket:
                engine.accept_ticket(
                    party,
                    round_number,
                    ticket,
                    w.blob(content, "ticket_signature", max_bytes=w.SMALL),
                )
            for name in self.partial_chunks(content):
                header = rpc.partial_header_from_proto(
                    w.parse(
                        federation_pb2.PartialHeader(),
                        w.blob(content, name, max_bytes=w.SMALL),
                        "partial header",
                    )
                )
                first = name[len(w.PARTIAL_HEADER) :]
                if str(header.first_record) != first:
                    raise ProtocolError(f"the partial decryption chunk {first} names another")
                partial = w.blob(content, f"{w.PARTIAL}{first}", max_bytes=self.chunk_bytes())
                engine.accept_partial(party, header, [partial])
        except FedLoraError as exc:
            self.nodes.refusals.append(f"{party.id}: {exc}")
        except Exception as exc:  # a reply no honest node sends: refused, the run goes on
            self.nodes.refusals.append(f"{party.id}: malformed reply ({type(exc).__name__})")

    def partial_chunks(self, content: RecordDict) -> list[str]:
        """The partial decryption chunks' header blobs a reply carries, at most one per chunk of
        the aggregate (a reply with more is refused before any is read)."""
        engine = self.engine
        blobs = content.array_records.get(w.BLOBS)
        names = [n for n in (blobs or {}) if n.startswith(w.PARTIAL_HEADER)]
        if len(names) > len(chunk_ranges(engine.record_count)):
            raise ProtocolError(f"the reply carries {len(names)} partial decryption chunks")
        return names
