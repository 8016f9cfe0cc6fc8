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
import logging
import math
import os
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
from fedlora.coordinator import Coordinator, build_engine, spec_source
from fedlora.coordinator._keygen import keygen_service, write_generated_key
from fedlora.crypto import ModexpBackend, verify_signature
from fedlora.errors import ConfigError, FedLoraError, ProtocolError
from fedlora.flower import _wire as w
from fedlora.flower._client import flatten
from fedlora.flower._decrypting import Decryption
from fedlora.flower._identity import join_digest
from fedlora.flower._keygen import FlowerKeygen
from fedlora.flower._nodes import Nodes, grouped
from fedlora.protocol import FLOWER_LAYOUT, Stage, canonical_spec
from fedlora.v1 import federation_pb2

log = logging.getLogger("fedlora.flower")
RUN_CONFIG_PREFIX = "fedlora."
ACCEPT_CHANGE = "fedlora-accept-config-change"  # the run config's --accept-config-change
MAX_JOIN_FAILURES = 3  # refused join answers from one node id before it is not asked again
MAX_METRICS = 64  # metrics in a node's shared record


class FedloraStrategy(Strategy):
    """Threshold-Paillier secure aggregation around a Flower strategy (see the module doc)."""

    def __init__(
        self,
        inner: Strategy,
        config: CoordinatorConfig | str | Path,
        *,
        run_config: Mapping[str, Any] | None = None,
        timeout: float | None = None,
        backend: ModexpBackend | None = None,
        accept_config_change: bool = False,
    ) -> None:
        """``run_config``: the Flower run config; its ``fedlora.<dotted key>`` entries (e.g.
        ``fedlora.federated_learning.participant_threshold``) replace the YAML's values and are
        validated exactly as the YAML is, and ``fedlora-accept-config-change = true`` is the
        standalone coordinator's ``--accept-config-change`` (``accept_config_change`` here): a
        YAML changed mid-federation (a holder revoked or added, which re-keys before the next
        round) is applied and audited instead of refused. ``timeout``: seconds fedlora waits for the nodes'
        replies to each of its own steps (join, decrypt, release, keep); by default half the
        YAML's ``decryption_timeout_s``, so that both decryption steps end before the round's
        decryption deadline."""
        self.inner = inner
        accept = (run_config or {}).get(ACCEPT_CHANGE, False)
        self.accept_config_change = accept_config_change or accept in (True, "true", "1", 1)
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
        self.timeout = (
            timeout
            if timeout is not None
            else self.config.federated_learning.decryption_timeout_s / 2
        )
        self.backend = backend
        self.engine: Coordinator | None = None
        self.grid: Grid | None = None
        self.members = Nodes()  # the admitted nodes, what each holds, what messages carry
        self.join_failures: dict[int, int] = {}  # node -> join answers that did not verify
        self.template: ArrayRecord | None = None
        self.base: np.ndarray | None = None  # the initial arrays, flattened

    # -- set-up ------------------------------------------------------------------------------
    @property
    def nodes(self) -> dict[int, Party]:
        """Flower node id -> the fedlora party it proved to be."""
        return self.members.nodes

    @property
    def refusals(self) -> list[str]:
        """The refusals gathered in the step at hand (``who: why``)."""
        return self.members.refusals

    @refusals.setter
    def refusals(self, value: list[str]) -> None:
        self.members.refusals = value

    def _start(self, arrays: ArrayRecord) -> Coordinator:
        self.template = arrays
        self.base = flatten(arrays)
        # On Flower the model is the ServerApp's arrays: their size is the shared vector's, and
        # versions are published as arrays, not in the peft template's format. The federation
        # spec (model.spec, else the template folder's, as `fedlora flower prepare` writes it)
        # is announced and compared with every node's, as on the standalone transport.
        source = spec_source(self.config)
        spec = source[0] if source else None
        model = dataclasses.replace(
            self.config.model,
            num_parameters=int(self.base.size),
            adapter_template=None,
            spec=spec,
        )
        self.config = dataclasses.replace(self.config, model=model)
        # Version 0 is the initial arrays, so every published version is the whole model, and
        # members keep it as such; a restart with other initial arrays is refused.
        # The arrays' layout goes into the log's federation_started entry: members render the
        # versions they keep with the layout the log names, not one a message brings.
        layout = [[k, list(a.shape), str(a.dtype)] for k, a in arrays.items()]
        try:
            # the holders generate the key first (or re-key), relayed by this server
            service = keygen_service(self.config, accept_config_change=self.accept_config_change)
            if service is not None:
                assert self.grid is not None
                outcome = FlowerKeygen(self.config, service, self.grid, self.timeout).run()
                write_generated_key(self.config, outcome)
            self.engine = build_engine(
                self.config,
                backend=self.backend,
                initial=self.base,
                extra_settings={FLOWER_LAYOUT: layout},
                accept_config_change=self.accept_config_change,
            )
        except ConfigError as exc:
            if "--accept-config-change" in str(exc):  # the fix, as Flower spells it
                raise ConfigError(
                    str(exc).replace(
                        "start with --accept-config-change",
                        f"run again with the run config {ACCEPT_CHANGE}=true",
                    )
                ) from None
            if "describes a model of" in str(exc):
                raise ConfigError(
                    f"{exc}: on Flower, model.num_parameters is the size of the ServerApp's "
                    f"initial arrays ({self.base.size}); start from arrays of the model the "
                    "spec describes"
                ) from None
            raise
        if self.engine.spec is None:
            log.warning(
                "the coordinator YAML names no federation spec (model.spec): nodes are compared "
                "by model size only, so one with another base model or LoRA seed would be "
                "averaged in; `fedlora flower prepare` and `fedlora model template` write one"
            )
        self.members.engine = self.engine
        return self.engine

    def _join(self, grid: Grid) -> None:
        """Identify every node not yet admitted as an enrolled party by a signed, fresh
        challenge, and compare the federation spec it signs with the federation's (a mismatch is
        audited as ``join_refused``). Run before every round, so that a node that registered
        late, or whose answer was lost or refused, joins at a later round with a fresh
        challenge; a node whose answers were refused ``MAX_JOIN_FAILURES`` times is not asked
        again."""
        engine = self.engine
        assert engine is not None
        if not self.nodes:  # the first time: SuperNodes register as they start
            deadline = time.monotonic() + self.timeout
            while len(list(grid.get_node_ids())) < engine.min_clients:
                if time.monotonic() >= deadline:
                    break
                time.sleep(0.5)
        nodes = [
            n
            for n in grid.get_node_ids()
            if n not in self.nodes and self.join_failures.get(n, 0) < MAX_JOIN_FAILURES
        ]
        if not nodes:
            return
        challenges = {n: os.urandom(32) for n in nodes}
        spec = canonical_spec(engine.spec).encode() if engine.spec is not None else b""
        messages = [
            Message(
                w.put(
                    RecordDict(),
                    w.JOIN,
                    {"nonce": challenges[n], "spec": spec},
                    num_parameters=engine.num_parameters,
                ),
                dst_node_id=n,
                message_type=MessageType.TRAIN,  # mods wrap registered functions; as SecAgg+ does
            )
            for n in nodes
        ]
        admitted = 0
        silent = set(challenges)
        for reply in grid.send_and_receive(messages, timeout=self.timeout):
            node = reply.metadata.src_node_id
            if node not in silent:
                continue  # not asked, or a second answer
            silent.discard(node)
            if reply.has_error() or w.step_of(reply.content) != w.JOIN:
                self.join_failures[node] = self.join_failures.get(node, 0) + 1
                self.members.refused(node, reply)
                continue
            try:
                party = engine.config.party(str(w.scalar(reply.content, "party")))
                if party is None:
                    raise ProtocolError(f"node {node} names no enrolled party")
                spec_json = w.blob(reply.content, "spec", max_bytes=w.SMALL).decode()
                verify_signature(
                    bytes.fromhex(party.signing_public_key),
                    join_digest(self.config.federation_id, node, challenges[node], spec_json),
                    w.blob(reply.content, "signature", max_bytes=w.SMALL),
                )
                if party in self.nodes.values():
                    raise ProtocolError(f"{party.id} answered from two nodes")
                engine.authenticate(party.id, "Flower join")
                engine.join_info(party, spec_json)  # a spec that differs: join_refused
            except (FedLoraError, UnicodeDecodeError) as exc:
                failures = self.join_failures[node] = self.join_failures.get(node, 0) + 1
                last = " (not asked again)" if failures >= MAX_JOIN_FAILURES else ""
                log.warning(f"node {node} is not admitted{last}: {exc}")
                continue
            self.nodes[node] = party
            self.members.marks(node, reply.content)
            admitted += 1
        for node in silent:  # each join waits for every answer: a node that never gives one
            self.join_failures[node] = self.join_failures.get(node, 0) + 1  # is asked 3 times
        log.info(
            f"{admitted} of {len(nodes)} nodes joined as fedlora parties ({len(self.nodes)} in all)"
        )

    # -- what every fedlora message to a node carries ------------------------------------------
    def global_arrays(self) -> ArrayRecord:
        """The current global model (the published version, in the initial arrays' layout)."""
        engine, template, base = self.engine, self.template, self.base
        assert engine is not None and template is not None and base is not None
        data = b"".join(engine.global_chunks(engine.global_version)[1])
        vector = np.frombuffer(data, dtype="<f4")
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
        self.refusals = []
        messages = [
            Message(content, dst_node_id=n, message_type=MessageType.TRAIN)
            for n, p in self.nodes.items()
            if (content := self.members.addressed(n, p, RecordDict(), w.KEEP)) is not None
        ]
        kept = 0
        replies = grid.send_and_receive(messages, timeout=self.timeout)
        for node, _, reply in self.members.answers(replies, ("kept",)):
            self.members.marks(node, reply.content)
            self.members.replied(node)
            kept += 1
        log.info(
            f"{kept} of {len(self.nodes)} members keep global version {engine.global_version}"
            + (f"; {grouped(self.refusals)}" if self.refusals else "")
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
        self._join(grid)  # nodes not admitted yet (late, or whose answer was lost)
        engine.tick()  # round 1 opens once min_clients parties have joined
        if engine.stage in (Stage.TICKETING, Stage.DECRYPTING):
            # A ServerApp restarted while a round was being decrypted: finish (or end) that
            # decryption first. Flower counts its rounds afresh; the engine's round is the one.
            log.warning(f"round {engine.round_number} was being decrypted; resuming it")
            self.refusals = []
            self._decrypt(engine.round_number)
            engine.tick()
        if engine.stage is not Stage.COLLECTING:
            log.warning(
                f"round {server_round}: the federation is {engine.stage.value}; no training"
            )
            return []
        current = self.global_arrays()
        return self._to_members(
            self.inner.configure_train(server_round, current, config, grid), w.TRAIN
        )

    def _to_members(self, messages: Iterable[Message], step: str) -> list[Message]:
        """The inner strategy's messages to admitted members (a node that is not one gets
        nothing), each with fedlora's ``step`` for that node added."""
        out = []
        for message in messages:
            node = message.metadata.dst_node_id
            party = self.nodes.get(node)
            if party is None:
                continue
            content = self.members.addressed(node, party, message.content, step)
            if content is not None:
                message.content = content
                out.append(message)
        return out

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        engine = self.engine
        assert engine is not None
        self.refusals = []
        accepted = 0
        shared = []
        for node, party, reply in self.members.answers(replies, (w.TRAIN,)):
            try:
                self.members.marks(node, reply.content)
                self.members.replied(node)
                record = _shared_record(reply.content, self._weight_key())
                header = rpc.contribution_header_from_proto(
                    w.parse(
                        federation_pb2.ContributionHeader(),
                        w.blob(reply.content, "header", max_bytes=w.SMALL),
                        "contribution header",
                    )
                )
                records = w.blob(reply.content, "records", max_bytes=self._vector_bytes())
                receipt = engine.accept_contribution(party, header, [records])
            except FedLoraError as exc:
                self.refusals.append(f"{party.id}: contribution refused: {exc}")
                continue
            except Exception as exc:  # a reply no honest node sends: refused, the run goes on
                self.refusals.append(f"{party.id}: malformed reply ({type(exc).__name__})")
                continue
            self.members.keep_receipt(node, receipt)
            accepted += 1
            if record is not None:
                shared.append((reply, record))
        train_metrics = self._train_metrics(self._consistent(shared))
        before = engine.global_version
        # The push transport collected all it will get; a round that fails for want of
        # contributions records why the others did not contribute.
        engine.close_collection(grouped(self.refusals))
        engine.tick()  # aggregates (or fails the round below participant_threshold)
        if engine.stage is Stage.TICKETING:
            self.refusals = []
            self._decrypt(engine.round_number)
        closed = engine.global_version > before
        metrics = MetricRecord(
            {
                **train_metrics,
                "fedlora-contributions": accepted,
                "fedlora-round-closed": int(closed),
            }
        )
        return self.global_arrays(), metrics

    def _weight_key(self) -> str:
        """The metric the inner strategy weighs replies by (FedAvg's ``weighted_by_key``)."""
        return str(getattr(self.inner, "weighted_by_key", "num-examples"))

    def _train_metrics(self, replies: list[Message]) -> dict[str, Any]:
        """The train metrics the nodes share, aggregated as the inner strategy would (its
        ``train_metrics_aggr_fn``, e.g. FedAvg's weighted mean); {} when none are shared."""
        aggregate = getattr(self.inner, "train_metrics_aggr_fn", None)
        if not replies or aggregate is None:
            return {}
        try:
            return dict(aggregate([r.content for r in replies], self._weight_key()).items())
        except Exception as exc:  # the inner strategy's own checks: never the run's end
            log.warning(f"shared train metrics not aggregated: {type(exc).__name__}: {exc}")
            return {}

    def _vector_bytes(self) -> int:
        """The size of a contribution, an aggregate or a partial decryption: nothing a node
        sends may be larger."""
        engine = self.engine
        assert engine is not None
        return engine.record_count * engine.width

    def _decrypt(self, round_number: int) -> None:
        engine, grid = self.engine, self.grid
        assert engine is not None and grid is not None
        Decryption(engine, self.members, grid, self.timeout).run(round_number)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """The inner strategy's evaluation, sent to admitted members only (the model is the
        federation's, not every SuperNode's), each with what it needs to verify the model in
        the anchored log first: a node evaluates only a global version it has verified."""
        if self.engine is None:
            return []
        return self._to_members(
            self.inner.configure_evaluate(server_round, arrays, config, grid), w.EVALUATE
        )

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """The metrics the nodes chose to share (``flower.share_metrics`` in their YAMLs),
        checked before the inner strategy sees any: a reply that is not a fedlora evaluation
        with one record of at most ``MAX_METRICS`` finite numbers is that node's refusal, and
        so is one whose metrics differ in kind from the other nodes'. The inner strategy gets
        only the user's metric records; if it still fails, the evaluation is logged as not
        aggregated and the run goes on."""
        self.refusals = []
        checked = self._checked_metrics(replies, "evaluated")
        if self.refusals:
            log.warning(f"evaluation replies refused: {grouped(self.refusals)}")
        if not checked:
            log.info(
                "evaluation: no member shares its metrics (flower.share_metrics in its YAML); "
                "each keeps its own in <state_dir>/flower-evaluations.json"
            )
            return None
        try:
            return self.inner.aggregate_evaluate(server_round, checked)
        except Exception as exc:  # the inner strategy's own checks: never the run's end
            log.warning(f"evaluation not aggregated: {type(exc).__name__}: {exc}")
            return None

    def _checked_metrics(self, replies: Iterable[Message], step: str) -> list[Message]:
        """The replies of admitted nodes that share metrics, each reduced to the one metric
        record of the user's it carries (see :meth:`_consistent`). A reply that is not
        fedlora's ``step`` or carries anything else is that node's refusal."""
        shared = []
        for node, party, reply in self.members.answers(replies, (step,)):
            try:
                self.members.marks(node, reply.content)
                self.members.replied(node)
                record = _shared_record(reply.content, self._weight_key())
            except FedLoraError as exc:
                self.refusals.append(f"{party.id}: {exc}")
                continue
            if record is not None:
                shared.append((reply, record))
        return self._consistent(shared)

    def _consistent(self, shared: list[tuple[Message, tuple[str, MetricRecord]]]) -> list[Message]:
        """Replies reduced to the metric record they share, keeping those whose record has the
        name and keys that most have (an inner strategy such as FedAvg requires the same keys
        in every reply); each other one is its node's refusal."""
        if not shared:
            return []
        shapes = [(name, frozenset(record.keys())) for _, (name, record) in shared]
        common = max(set(shapes), key=lambda shape: (shapes.count(shape), sorted(shape[1])))
        out = []
        for (reply, (name, record)), shape in zip(shared, shapes):
            if shape == common:
                reply.content = RecordDict({name: record})
                out.append(reply)
            else:
                who = self.nodes[reply.metadata.src_node_id].id
                self.refusals.append(
                    f"{who}: its shared metrics {name}{sorted(shape[1])} differ from most "
                    f"nodes' {common[0]}{sorted(common[1])}"
                )
        return out


__all__ = ["FedloraStrategy"]


def _shared_record(content: RecordDict, weight_key: str) -> tuple[str, MetricRecord] | None:
    """The metric record a node's reply shares besides fedlora's own records, or None.

    Raises:
        ProtocolError: other records, more than one, more than ``MAX_METRICS`` metrics, names
            over 128 characters, values that are not finite numbers, or a weight
            (``weight_key``) below 0 or above 2⁴⁰.
    """
    own = [(k, r) for k, r in content.items() if k not in (w.STEP, w.BLOBS)]
    if not own:
        return None
    name, record = own[0]
    if len(own) != 1 or not isinstance(record, MetricRecord):
        kinds = ", ".join(f"{type(r).__name__} {k[:40]!r}" for k, r in own[:4])
        raise ProtocolError(
            f"the reply carries {kinds} besides fedlora's records; a node shares at most one "
            "MetricRecord"
        )
    if len(name) > 128 or len(record) > MAX_METRICS or any(len(k) > 128 for k in record):
        raise ProtocolError(
            f"the reply's metric record is over {MAX_METRICS} metrics or long names"
        )
    for key, value in record.items():
        if (
            not isinstance(value, int | float)
            or isinstance(value, bool)
            or not math.isfinite(value)
        ):
            raise ProtocolError(f"the reply's metric {key[:40]!r} is not a finite number")
    weight = record.get(weight_key)
    if weight is not None and not 0 <= float(weight) <= 2**40:  # type: ignore[arg-type]
        raise ProtocolError(f"the reply's weight {weight_key!r} is {weight}")
    return name, record
