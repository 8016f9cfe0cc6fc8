"""Key generation without a dealer over Flower: the ServerApp relays, one message per step.

On Flower the server pushes and a node answers each message; so the ServerApp drives the
holders' rounds through the coordinator's own relay (:class:`fedlora.coordinator._keygen.
KeygenService`, which checks, bounds and audits exactly as over gRPC): it asks every node who
it is (a signature over a fresh challenge; a holder adds its nonce), announces the attempt,
then carries each round's sealed messages to their recipients until every holder signed the
key statement, and finally hands every member the outcome, which each accepts only with a
quorum of holders' signatures (:class:`fedlora.client._keygen.PushKeygen`). A holder that
reports a fault, or does not answer, ends the attempt with blame in the audit log; the holders
start again up to :data:`ATTEMPTS` times. Runs before round 1 (and before the engine exists).
"""

from __future__ import annotations

import logging
import os
import time

from flwr.app import Message, MessageType, RecordDict
from flwr.serverapp import Grid

from fedlora.ceremony._generate import KeygenOutcome, KeygenStart
from fedlora.config import CoordinatorConfig
from fedlora.coordinator._keygen import KeygenService
from fedlora.crypto import verify_signature
from fedlora.errors import ConfigError, FedLoraError, ProtocolError
from fedlora.flower import _wire as w
from fedlora.flower._identity import join_digest

log = logging.getLogger("fedlora.flower")
ATTEMPTS = 3


def keygen_binding(nonce: bytes) -> str:
    """What a node's identity signature binds besides the challenge: its holder nonce."""
    return "keygen:" + nonce.hex()


class FlowerKeygen:
    """The ServerApp's side of one federation's key generation (see the module docstring)."""

    def __init__(
        self, config: CoordinatorConfig, service: KeygenService, grid: Grid, timeout: float
    ) -> None:
        self.config, self.service, self.grid, self.timeout = config, service, grid, timeout
        service.poll_s = 0  # the server pushes: nothing to wait for inside the relay
        self.nodes: dict[str, int] = {}  # party -> node

    def run(self) -> KeygenOutcome:
        """Generate the key (several attempts if one fails), then hand every member the outcome.

        Raises:
            ConfigError: no key after :data:`ATTEMPTS` attempts (the last reason, with blame).
        """
        last = ""
        for _ in range(ATTEMPTS):
            try:
                outcome = self._attempt()
            except FedLoraError as exc:
                last = str(exc)
                log.warning(f"key generation attempt failed: {exc}")
                continue
            self._hand_out(outcome)
            return outcome
        raise ConfigError(f"the holders could not generate the key in {ATTEMPTS} attempts: {last}")

    def _send(self, contents: dict[int, RecordDict]) -> dict[int, Message]:
        messages = [
            Message(content, dst_node_id=node, message_type=MessageType.TRAIN)
            for node, content in contents.items()
        ]
        replies: dict[int, Message] = {}
        for reply in self.grid.send_and_receive(messages, timeout=self.timeout):
            node = reply.metadata.src_node_id
            if node in contents and node not in replies:
                replies[node] = reply
        return replies

    def _hello(self) -> KeygenStart:
        """Who every node is; a holder's nonce; the attempt's announcement."""
        holders = self.service.holders
        deadline = time.monotonic() + self.timeout  # SuperNodes register as they start
        while len(list(self.grid.get_node_ids())) < len(holders) and time.monotonic() < deadline:
            time.sleep(0.5)
        challenges = {n: os.urandom(32) for n in self.grid.get_node_ids()}
        replies = self._send(
            {
                n: w.put(RecordDict(), w.KEYGEN, {"challenge": c}, phase="hello")
                for n, c in challenges.items()
            }
        )
        start: KeygenStart | list[str] = list(holders)
        for node, reply in replies.items():
            if reply.has_error() or w.step_of(reply.content) != w.KEYGEN:
                continue
            if w.scalar(reply.content, "reason"):
                log.warning(f"node {node}: {w.scalar(reply.content, 'reason')}")
                continue
            try:
                party = self.config.party(str(w.scalar(reply.content, "party")))
                if party is None or party.revoked:
                    raise ProtocolError(f"node {node} names no enrolled, unrevoked party")
                nonce = w.blob(reply.content, "nonce", required=False, max_bytes=64)
                verify_signature(
                    bytes.fromhex(party.signing_public_key),
                    join_digest(
                        self.config.federation_id, node, challenges[node], keygen_binding(nonce)
                    ),
                    w.blob(reply.content, "signature", max_bytes=w.SMALL),
                )
            except FedLoraError as exc:
                log.warning(f"node {node} is not admitted to key generation: {exc}")
                continue
            self.nodes[party.id] = node
            if party.id in holders:
                start = self.service.hello(party.id, nonce)
        if isinstance(start, list):
            raise ProtocolError(
                f"holders did not answer: {', '.join(h for h in holders if h not in self.nodes)}"
            )
        return start

    def _attempt(self) -> KeygenOutcome:
        start = self._hello()
        session = self.service.current.session if self.service.current else b""
        holders = start.holders
        announce = {
            "holders": "\n".join(holders).encode(),
            "nonces": b"".join(start.nonces),
        }
        contents = {
            self.nodes[h]: w.put(
                RecordDict(),
                w.KEYGEN,
                announce,
                phase="start",
                attempt=start.attempt,
                threshold=start.threshold,
                bits=start.bits,
            )
            for h in holders
        }
        number = 1
        while True:
            replies = self._send(contents)
            signed = 0
            for holder in holders:
                reply = replies.get(self.nodes[holder])
                self._take(holder, session, number, reply)
                if reply is not None and w.scalar(reply.content, "done"):
                    signed += 1
            if signed == len(holders):
                outcome = self.service.outcome
                if outcome is None or outcome.session != session:
                    raise ProtocolError("the holders signed, but no key was accepted")
                return outcome
            if signed:
                raise ProtocolError("some holders finished the generation and others did not")
            contents = {
                self.nodes[h]: w.put(
                    RecordDict(),
                    w.KEYGEN,
                    {f"in.{s}": self._collected(h, session, number, s) for s in holders if s != h},
                    phase="round",
                    round=number,
                )
                for h in holders
            }
            number += 1

    def _take(self, holder: str, session: bytes, number: int, reply: Message | None) -> None:
        """A holder's answer to a round: its sealed messages, or its signed statement."""
        service = self.service
        if reply is None or reply.has_error() or w.step_of(reply.content) != w.KEYGEN:
            reason = f"{holder} did not answer round {number}"
            if reply is not None and reply.has_error():
                reason = f"{holder} failed in round {number}: {reply.error.reason}"
            service.end(session, reason, holder)
            raise ProtocolError(reason)
        refusal = w.scalar(reply.content, "reason")
        if refusal:
            blamed = w.scalar(reply.content, "blame")
            service.abort(holder, session, str(refusal), str(blamed) if blamed else None)
            raise ProtocolError(f"{holder} stopped the attempt: {refusal}")
        if w.scalar(reply.content, "done"):
            service.signed(
                holder,
                session,
                w.blob(reply.content, "key", max_bytes=1 << 20).decode(),
                w.blob(reply.content, "transcript", max_bytes=64),
                w.blob(reply.content, "signature", max_bytes=64),
            )
            return
        for recipient in service.holders:
            if recipient == holder:
                continue
            message = w.blob(reply.content, f"out.{recipient}")
            step = service.chunk_bytes
            for offset in range(0, len(message), step):
                service.post(
                    holder,
                    session,
                    number,
                    recipient,
                    offset,
                    len(message),
                    message[offset : offset + step],
                )

    def _collected(self, holder: str, session: bytes, number: int, sender: str) -> bytes:
        out = bytearray()
        while True:
            total, chunk = self.service.collect(holder, session, number, sender, len(out))
            if total == 0:
                raise ProtocolError(f"{sender} sent {holder} nothing in round {number}")
            out += chunk
            if len(out) == total:
                return bytes(out)

    def _hand_out(self, outcome: KeygenOutcome) -> None:
        """Every member gets the key and the holders' signatures, and checks them itself."""
        blobs = {
            "session": outcome.session,
            "key": outcome.public_key.to_json(),
            "transcript": outcome.transcript,
            **{f"sig.{h}": s for h, s in outcome.signatures.items()},
        }
        replies = self._send(
            {
                node: w.put(RecordDict(), w.KEYGEN, blobs, phase="outcome")
                for node in self.nodes.values()
            }
        )
        accepted = sum(
            1
            for r in replies.values()
            if not r.has_error()
            and w.step_of(r.content) == w.KEYGEN
            and w.scalar(r.content, "accepted")
        )
        log.info(f"{accepted} of {len(self.nodes)} members accepted the generated key")
