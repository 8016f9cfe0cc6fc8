"""A Flower grid in one process, for attacks on the Flower adapter.

:class:`Grid` delivers each of the strategy's messages to the real ``fedlora_mod`` of the node it
is addressed to (each node with its own Flower ``Context`` and its own state folder), copying the
message's content as Flower's transport would, and hands back the replies. Between the two it
lets a test be the attacker: ``tamper(node, message)`` rewrites what the server sends (a lying
ServerApp or SuperLink), ``on_reply(node, reply)`` rewrites or drops what a node answers (a lying
node, or a lost reply). Everything else is real: the coordinator engine, the fedlora clients,
threshold Paillier, proofs, ledgers and the audit log on disk. The engines Flower ships are
exercised in tests/integration/test_flower.py.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from flwr.app import (
    Array,
    ArrayRecord,
    Context,
    Error,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.serverapp.strategy import FedAvg

from fedlora._setup import Layout
from fedlora.audit import read_log_files
from fedlora.config import load_coordinator_config
from fedlora.flower import FedloraStrategy, make_fedlora_mod
from fedlora.flower import _wire as w
from tests.integration import flower_apps as apps
from tests.integration.helpers import prepare_federation

NODES = 4
FIRST_ID = 101


def federation(
    root: Path, *, rounds: int = 2, min_clients: int = NODES, generate_key: bool = False
) -> Layout:
    """Four banks, a 2-of-4 test key (ticket quorum 3), three contributions per aggregate;
    ``generate_key``: the four generate it before round 1 (no dealer)."""
    return prepare_federation(
        root,
        bits=512,
        parties=[(f"bank-{i:02d}", "bank") for i in range(NODES)],
        rounds=rounds,
        participant_threshold=3,
        decryption_threshold=2,
        insecure=True,
        model_kind="linear",
        min_clients=min_clients,
        generate_key=generate_key,
    )


def train(msg: Message, context: Context) -> Message:
    """The user's training: add the node's known delta to the arrays it was sent, and report a
    training loss besides its example count."""
    reply = apps.train_reply(msg, int(context.node_config["partition-id"]))
    reply.content["metrics"]["train-loss"] = 0.25
    return reply


def evaluate(msg: Message, context: Context) -> Message:
    """The user's evaluation: an accuracy and an example count (no arrays)."""
    partition = int(context.node_config["partition-id"])
    metrics = {"accuracy": 0.5 + partition / 100, "num-examples": apps.weight_for(partition)}
    return Message(RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)


def _set_task_identity() -> None:
    """Flower 1.42 stamps new messages with the process's task identity, which its runtimes set."""
    try:
        from flwr.supercore.task_identity import TaskIdentity
    except ImportError:  # Flower 1.41: messages carry no task identity
        return
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0


Tamper = Callable[[int, Message], Message | None]
OnReply = Callable[[int, Message], Message | None]


class Grid:
    """Enough of Flower's ``Grid`` for a strategy: node ids, and ``send_and_receive``."""

    def __init__(self, root: Path, nodes: int = NODES) -> None:
        _set_task_identity()
        self.mod = make_fedlora_mod(root)
        self.ids = [FIRST_ID + i for i in range(nodes)]
        self.contexts = {
            node: Context(
                run_id=1,
                node_id=node,
                node_config={"partition-id": i},
                state=RecordDict(),
                run_config={},
            )
            for i, node in enumerate(self.ids)
        }
        self.tamper: Tamper | None = None
        self.on_reply: OnReply | None = None
        self.trained: dict[int, int] = {}  # node -> how often the user's training ran
        self.evaluated: dict[int, int] = {}  # node -> how often the user's evaluation ran
        self.given: list[tuple[int, str, RecordDict]] = []  # what the user's code was given
        self.seen: list[tuple[int, str | None, Message]] = []  # (node, step, reply)

    def get_node_ids(self) -> list[int]:
        return list(self.ids)

    def _user(self, msg: Message, context: Context) -> Message:
        """The user's ClientApp behind the mod: its train and evaluate functions."""
        node, kind = context.node_id, msg.metadata.message_type
        self.given.append((node, kind, msg.content))
        if kind == MessageType.EVALUATE:
            self.evaluated[node] = self.evaluated.get(node, 0) + 1
            return evaluate(msg, context)
        self.trained[node] = self.trained.get(node, 0) + 1
        return train(msg, context)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None):  # type: ignore[no-untyped-def]
        replies = []
        for message in messages:
            node = message.metadata.dst_node_id
            # Flower serializes each message: nothing one node is sent is shared with another.
            delivered: Message | None = Message(
                RecordDict(copy.deepcopy(dict(message.content.items()))),
                dst_node_id=node,
                message_type=message.metadata.message_type,
            )
            if self.tamper is not None and delivered is not None:
                delivered = self.tamper(node, delivered)
            if delivered is None:
                continue
            step = w.step_of(delivered.content)  # the mod gives the user's code other content
            try:
                reply = self.mod(delivered, self.contexts[node], self._user)
            except Exception as exc:  # as Flower turns a ClientApp's exception into an error
                reply = Message(
                    Error(code=0, reason=f"{type(exc).__name__}: {exc}"), reply_to=delivered
                )
            self.seen.append((node, step, reply))
            if self.on_reply is not None:
                reply = self.on_reply(node, reply)
            if reply is not None:
                replies.append(reply)
        return replies

    def refusals(self, node: int) -> list[str]:
        """What ``node`` refused, in order (its fedlora refusals and its errors)."""
        out = []
        for n, _, reply in self.seen:
            if n != node:
                continue
            if reply.has_error():
                out.append(str(reply.error.reason))
            elif w.step_of(reply.content) == "refused":
                out.append(str(w.scalar(reply.content, "reason")))
        return out


def strategy(layout: Layout, *, evaluate: bool = False, **kw: Any) -> FedloraStrategy:
    return FedloraStrategy(
        FedAvg(
            fraction_train=1.0,
            fraction_evaluate=1.0 if evaluate else 0.0,
            min_train_nodes=NODES,
            min_evaluate_nodes=NODES,
            min_available_nodes=NODES,
        ),
        layout.coordinator_config,
        timeout=30,
        **kw,
    )


def edit_client(layout: Layout, party: str, change: Callable[[dict[str, Any]], None]) -> None:
    """Change one member's client YAML (``change`` edits the parsed document in place)."""
    path = layout.client_configs[party]
    doc = yaml.safe_load(path.read_text())
    change(doc)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))


def share_metrics(layout: Layout, names: list[str]) -> None:
    """Every member's YAML lets ``names`` go to the server in the clear."""
    for party in layout.client_configs:
        edit_client(layout, party, lambda doc: doc.update({"flower": {"share_metrics": names}}))


def initial_arrays() -> ArrayRecord:
    start = apps.initial_vector()
    return ArrayRecord({"a": Array(start[:100].reshape(10, 10)), "b": Array(start[100:])})


def events(layout: Layout) -> list[dict[str, Any]]:
    config = load_coordinator_config(layout.coordinator_config)
    return [json.loads(line) for line in read_log_files(config.state_dir)[0].splitlines()]


def outcomes(layout: Layout) -> list[tuple[str, int]]:
    """The rounds' ends, in order: ("round_closed" | "round_failed", round)."""
    return [
        (e["event"], e["round"])
        for e in events(layout)
        if e["event"] in ("round_closed", "round_failed")
    ]


def replace_blob(message: Message, name: str, data: bytes) -> Message:
    """``message`` with one fedlora blob replaced (or added)."""
    blobs = message.content.array_records[w.BLOBS]
    blobs[name] = Array(np.frombuffer(data, dtype=np.uint8).copy())
    return message


def set_scalar(message: Message, name: str, value: Any) -> Message:
    message.content.config_records[w.STEP][name] = value
    return message
