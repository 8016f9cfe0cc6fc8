"""The client side on Flower: :func:`fedlora_mod`, a ClientApp mod.

Added to a ``ClientApp`` (``ClientApp(mods=[fedlora_mod])``), it runs the user's ``@app.train()``
on the global model it has verified against the anchored audit log, then replaces the updated
arrays in the reply by fedlora's contribution: the delta from the global model, clipped,
quantized, packed, Paillier-encrypted under the federation's threshold key, proven and signed
(:func:`fedlora.protocol.build_contribution`), by the same contributor role the standalone
client drives (:class:`fedlora.client._contributor.Contributor`). As a share holder it checks
the aggregate itself and releases a proven partial decryption by the same holder role
(:class:`fedlora.client._holder.Holder`): the same ledger, ticket quorum and
``min_participants``.

The mod is the node's gate: it answers fedlora's steps only. Any other message — a plain Flower
train message, a query, an action the federation does not use — is refused (an error reply and
an entry in the node's ledger) and never reaches the user's code, so the user's arrays leave the
node only inside fedlora's contribution. Evaluation runs only on a global model the node has
verified, and only the metrics the node's YAML lists in ``flower.share_metrics`` go back.

Flower is push-style: every request arrives as a message and every answer is a reply. A
:class:`PushTransport` serves the member's requests from the message at hand and keeps what it
sends for the reply.

Which fedlora client a SuperNode is: ``fedlora-config`` in its node config (the path of its client
YAML), or, in a simulation, the ``fedlora-dir`` folder in the run config, whose YAML
files (sorted) are given to the simulated nodes by ``partition-id``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
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
from flwr.clientapp.typing import ClientAppCallable
from flwr.common.constant import ErrorCode
from rich.console import Console

from fedlora import rpc
from fedlora._files import StateLock, replace_file
from fedlora.audit import SignedCheckpoint
from fedlora.client._contributor import Contributor
from fedlora.client._holder import Holder
from fedlora.client._ledger import DecryptorLedger
from fedlora.client._member import Federation, Member
from fedlora.config import ClientConfig, load_client_config
from fedlora.crypto import (
    ObfuscatorPool,
    ThresholdPublicKey,
    sign_digest,
)
from fedlora.errors import (
    ConfigError,
    FedLoraError,
    ProtocolError,
    RemoteError,
    VerificationError,
)
from fedlora.flower import _wire as w
from fedlora.flower._identity import join_digest
from fedlora.flower._spec import node_spec
from fedlora.protocol import (
    DecryptionTask,
    JoinInfo,
    PartialHeader,
    RoundStatus,
    SignedContribution,
    TicketAck,
    assemble_task,
    canonical_spec,
    check_spec,
    parse_spec,
)
from fedlora.v1 import common_pb2, federation_pb2

# The next round's obfuscators, computed between rounds, by node id: the only thing a node keeps
# in memory across messages (a session lasts one message). In memory only, handed out once; when
# Flower runs the node's next message in another process, that process computes its own.
_AHEAD: dict[str, ObfuscatorPool] = {}
_AHEAD_LOCK = threading.Lock()
LOCK_WAIT_S = 600.0  # a node's other message holds its state folder at most this long
KEEP_PENDING = 4  # sealed contributions kept for receipts still to come


def flatten(arrays: ArrayRecord) -> np.ndarray:
    """An ArrayRecord as one float32 vector (keys in record order)."""
    return np.concatenate(
        [np.asarray(a.numpy(), dtype=np.float32).ravel() for a in arrays.values()]
    ).astype(np.float32)


class PushTransport:
    """:class:`fedlora.client._transport.MemberTransport` over one Flower message and its
    reply: requests are answered from the message at hand, what is sent is kept for the reply.
    (The contribution is the train step's reply itself, so there is no upload.)"""

    def __init__(self) -> None:
        self.content = RecordDict()
        self.outbox: dict[str, bytes] = {}

    def load(self, content: RecordDict) -> None:
        self.content, self.outbox = content, {}

    def _blob(self, name: str) -> bytes:
        try:
            return w.blob(self.content, name)
        except ProtocolError as exc:
            raise RemoteError(str(exc), ProtocolError) from None

    def join(self, spec_json: str = "") -> JoinInfo:
        return rpc.join_from_proto(
            w.parse(federation_pb2.JoinResponse(), self._blob("join"), "join info")
        )

    def round_status(self) -> RoundStatus:
        return rpc.status_from_proto(
            w.parse(federation_pb2.RoundStatus(), self._blob("status"), "round status")
        )

    def download_global(self, version: int, max_bytes: int | None = None) -> tuple[bytes, bytes]:
        name = f"global:{version}"
        records = self.content.array_records.get(w.BLOBS)
        if (records is None or name not in records) and w.scalar(
            self.content, "global_version"
        ) in (None, version):
            name = "global"  # the current version
        data = self._blob(name)
        if max_bytes is not None and len(data) > max_bytes:
            raise RemoteError(f"global version {version} is larger than the model", ProtocolError)
        return data, hashlib.sha256(data).digest()

    def decryption_task(self, round_number: int, *, manifest_only: bool) -> DecryptionTask:
        if not manifest_only and w.scalar(self.content, "manifest_only"):
            raise RemoteError(
                "the release step carries only the manifest, and this node kept no verified "
                "aggregate for the round (its decrypt step did not run here)",
                ProtocolError,
            )
        manifest = rpc.manifest_from_proto(
            w.parse(federation_pb2.DecryptionManifest(), self._blob("manifest"), "manifest")
        )
        parts = [
            (e.client_id, w.blob(self.content, f"c:{e.client_id}", required=False))
            for e in manifest.entries
        ]
        parts.append(("", w.blob(self.content, "aggregate", required=False)))
        return assemble_task(manifest, parts)

    def submit_ticket(self, round_number: int, ticket: bytes, signature: bytes) -> TicketAck:
        self.outbox["ticket"], self.outbox["ticket_signature"] = ticket, signature
        quorum = int(w.scalar(self.content, "quorum") or 0)
        return TicketAck(int(w.scalar(self.content, "signatures") or 0) + 1, quorum)

    def submit_partial(self, header: PartialHeader, values: bytes) -> None:
        """One chunk of the partial decryption; all of them travel in the reply."""
        first = header.first_record
        header_data = rpc.partial_header_to_proto(header).SerializeToString()
        self.outbox[f"{w.PARTIAL_HEADER}{first}"] = header_data
        self.outbox[f"{w.PARTIAL}{first}"] = values

    def checkpoint(self) -> SignedCheckpoint:
        return rpc.checkpoint_from_proto(
            w.parse(common_pb2.Checkpoint(), self._blob("checkpoint"), "checkpoint")
        )

    def consistency_proof(self, old_size: int, new_size: int) -> list[bytes]:
        name = f"consistency:{old_size}:{new_size}"
        records = self.content.array_records.get(w.BLOBS)
        if records is None or name not in records:
            raise RemoteError(
                f"the message carries no proof that the log of {new_size} entries extends the "
                f"one of {old_size}",
                ProtocolError,
            )
        data = w.blob(self.content, name)
        return [data[i : i + 32] for i in range(0, len(data), 32)]

    def audit_entries(self, start: int, limit: int) -> list[bytes]:
        """The entries from ``start``: the message carries them from where the server believes
        this node has read to (an earlier point, after a lost reply, is fine: the overlap is
        dropped, and every line is authenticated by the root anyway)."""
        given = w.scalar(self.content, "entries_start")
        if not isinstance(given, int) or not 0 <= given <= start:
            raise RemoteError(
                f"the message carries the audit entries from {given}, this node has read {start}",
                ProtocolError,
            )
        return w.unpack_lines(self._blob("entries"), skip=start - given, limit=limit)

    def inclusion_proof(self, index: int, tree_size: int) -> list[bytes]:
        data = self._blob(f"inclusion:{index}:{tree_size}")
        return [data[i : i + 32] for i in range(0, len(data), 32)]


def _save_arrays(layout: Any, vector: np.ndarray, folder: Path) -> None:
    """A kept version in the ServerApp's layout, as the log's ``federation_started`` entry
    names it: ``arrays.npz``, one float array per key, in order. Nothing is written when the
    log names no layout or one that does not describe this vector."""
    arrays = _split(vector, layout)
    if arrays is None:
        return
    import zipfile

    folder.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(folder / "arrays.npz", "w") as archive:
        for key, array in arrays.items():
            with archive.open(f"{key}.npy", "w") as fh:
                np.lib.format.write_array(fh, array, allow_pickle=False)


_KEY = re.compile(r"^[A-Za-z0-9_.:/-]{1,200}$")
_FLOATS = ("float16", "float32", "float64")


def _split(vector: np.ndarray, layout: Any) -> dict[str, np.ndarray] | None:
    """``vector`` cut into the arrays a layout ``[[key, shape, dtype], ...]`` names, or None
    when the layout is not a list of distinct keys, non-negative shapes and float dtypes that
    add up to exactly the vector."""
    if not isinstance(layout, list) or not 0 < len(layout) <= 100_000:
        return None
    out: dict[str, np.ndarray] = {}
    offset = 0
    for item in layout:
        if not (isinstance(item, list) and len(item) == 3):
            return None
        key, shape, dtype = item
        if not (isinstance(key, str) and _KEY.match(key) and key not in out and ".." not in key):
            return None
        if not (isinstance(shape, list) and len(shape) <= 16):
            return None
        if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
            return None
        if dtype not in _FLOATS:
            return None
        n = int(np.prod(shape)) if shape else 1
        if offset + n > vector.size:
            return None
        out[key] = vector[offset : offset + n].reshape(shape).astype(dtype)
        offset += n
    return out if offset == vector.size else None


class FlowerSession:
    """One fedlora client in a SuperNode, for one message: its keys, ledger and kept checkpoint
    come from its files, which are all that lasts between messages.

    A fresh session per message: Flower may run a node's messages in different processes (Ray
    actors, isolated ClientApp processes); a session kept in memory could hold a stale ledger
    or anchor while another process has moved the files on.
    """

    def __init__(self, config: ClientConfig) -> None:
        self.transport = PushTransport()
        self.member = Member(
            config,
            self.transport,
            console=Console(stderr=True),
            refusal_interval_s=RECORD_EVERY_S,
        )
        self.fed: Federation | None = None
        self.contributor: Contributor | None = None
        self.holder: Holder | None = None

    def anchor_size(self) -> int:
        current = self.member.anchor.current
        return current.tree_size if current else 0

    def marks(self) -> dict[str, int]:
        """What every reply tells the server: the checkpoint this node anchored and how many
        log entries it has read (so the next message carries only what is new to it)."""
        return {
            "anchor": self.anchor_size(),
            "scanned": self.member.models.scanned,
            "kept": self.member.models.kept_through(),
        }

    def ensure_joined(self) -> Federation:
        """Join from the message's join info (a simulation may run each message in another
        process, so nothing but the client's files is assumed to survive between messages):
        this node's spec and the model size the message announces, whose every value the train
        and evaluate steps then check against the anchored log."""
        if self.fed is None:
            size = self.transport.join().num_parameters
            fed = self.member.join(node_spec(self.member.config, size), size)
            self.fed, self.contributor = fed, Contributor(self.member, fed)
            if fed.policy is not None:
                self.holder = Holder(self.member, fed, keep_on_disk=True)
        return self.fed

    def keep_models(self, round_number: int) -> None:
        """Keep every version published since this node last read the log (see
        :meth:`fedlora.client._member.Member.keep_models`), in the ServerApp's array layout."""
        fed = self.ensure_joined()
        models = self.member.models
        self.member.keep_models(
            round_number,
            num_parameters=fed.info.num_parameters,
            max_version=max(fed.info.rounds, round_number),
            save=lambda vector, folder: _save_arrays(models.layout, vector, folder),
        )

    def _pending_path(self, round_number: int) -> Path:
        return self.member.state_dir / "flower-pending" / f"round-{round_number:05d}.json"

    def save_pending(self, sent: SignedContribution) -> None:
        """The sealed contribution, kept on disk until its receipt arrives: what the receipt is
        checked against, and the reply to a repeat of the round's train message (a node seals
        each round once, so a server that runs the message twice gets the same contribution)."""
        path = self._pending_path(sent.header.round_number)
        header = rpc.contribution_header_to_proto(sent.header).SerializeToString()
        replace_file(path.with_suffix(".records"), sent.records)
        replace_file(
            path, json.dumps({"header": header.hex(), "statement": sent.statement.hex()}).encode()
        )
        # A receipt that never comes (a contribution the coordinator refused) leaves its round's
        # files behind: only the newest few rounds' are kept.
        rounds = sorted(
            int(p.stem[len("round-") :])
            for p in path.parent.glob("round-*.json")
            if p.stem[len("round-") :].isdigit()
        )
        for old in rounds[:-KEEP_PENDING]:
            self.drop_pending(old)

    def load_pending(
        self, round_number: int, *, records: bool = False
    ) -> SignedContribution | None:
        path = self._pending_path(round_number)
        try:
            doc = json.loads(path.read_text())
            header = rpc.contribution_header_from_proto(
                w.parse(federation_pb2.ContributionHeader(), bytes.fromhex(doc["header"]), "header")
            )
            data = path.with_suffix(".records").read_bytes() if records else b""
            return SignedContribution(header, data, bytes.fromhex(doc["statement"]))
        except (OSError, ValueError, KeyError, TypeError, FedLoraError):
            return None

    def drop_pending(self, round_number: int) -> None:
        path = self._pending_path(round_number)
        path.with_suffix(".records").unlink(missing_ok=True)
        path.unlink(missing_ok=True)


def _client_configs(folder: Path) -> list[Path]:
    """The client YAMLs in ``folder``, sorted (a YAML that lists ``peers`` is a client's)."""
    import yaml

    out = []
    for path in sorted(folder.glob("*.yaml")):
        try:
            doc = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError):
            continue
        if isinstance(doc, dict) and "peers" in doc:
            out.append(path)
    return out


def _config_path(context: Context, configs: list[Path] | None) -> Path:
    given = context.node_config.get("fedlora-config")
    if isinstance(given, str) and given:
        return Path(given)
    folder = context.run_config.get("fedlora-dir")
    if configs is None and isinstance(folder, str) and folder:
        configs = _client_configs(Path(folder))
    partition = context.node_config.get("partition-id")
    if configs and isinstance(partition, int) and 0 <= partition < len(configs):
        return configs[partition]
    raise ConfigError(
        "this SuperNode has no fedlora client config: set node config fedlora-config=PATH "
        "(or, in a simulation, run config fedlora-dir=FOLDER with one client YAML per simulated "
        "node, as `fedlora flower prepare` writes)"
    )


def client_config_path(context: Context) -> Path:
    """This node's fedlora client YAML (node config ``fedlora-config``, or run config
    ``fedlora-dir`` and the node's ``partition-id``): for a ClientApp that trains from it."""
    return _config_path(context, None)


def _refusal(msg: Message, reason: str, session: FlowerSession | None = None) -> Message:
    content = RecordDict()
    marks = session.marks() if session else {}
    w.put(content, "refused", {}, reason=reason[:2000], **marks)
    return Message(content, reply_to=msg)


# The fedlora steps each Flower message type may carry; any other message is refused.
STEPS: dict[str, frozenset[str]] = {
    MessageType.TRAIN: frozenset({w.JOIN, w.TRAIN, w.DECRYPT, w.RELEASE, w.KEEP, w.KEYGEN}),
    MessageType.EVALUATE: frozenset({w.EVALUATE}),
}
RECORD_EVERY_S = 60.0  # one ledger entry a minute per kind of refusal; the rest are counted


def _ledger(config: ClientConfig) -> DecryptorLedger:
    """The node's ledger. On Flower the server pushes, so a hostile one could send refused
    messages without end: each kind of refusal is written at most once a minute, the others
    counted into the next entry."""
    return DecryptorLedger(
        config.state_dir, config.federation_id, refusal_interval_s=RECORD_EVERY_S
    )


def _stray(config: ClientConfig, msg: Message, step: str | None) -> Message:
    """Refuse a message that is not one of fedlora's steps: an error reply, and an entry in the
    node's ledger."""
    kind = str(msg.metadata.message_type)[:64]
    what = f"a {kind!r} message" + ("" if step is None else f" with fedlora step {step[:64]!r}")
    reason = (
        f"{what} is not one of fedlora's steps: this node's model updates leave it only inside "
        "fedlora's encrypted contribution (docs/flower.md)"
    )
    _ledger(config).record_refusal(0, "flower message", reason)
    print(f"{config.id}: refused {reason}", file=sys.stderr)
    return _error(msg, f"fedlora refused {reason}")


def _error(msg: Message, reason: str) -> Message:
    return Message(Error(code=ErrorCode.MOD_FAILED_PRECONDITION, reason=reason), reply_to=msg)


def make_fedlora_mod(client_configs: str | Path | None = None) -> Any:
    """A :func:`fedlora_mod` that, on simulated nodes, takes its client YAML by ``partition-id``
    from ``client_configs`` (a folder) when the run config names none (``fedlora-dir``)."""
    configs = _client_configs(Path(client_configs)) if client_configs is not None else None

    def mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        session: FlowerSession | None = None
        lock: StateLock | None = None
        try:
            step = w.step_of(msg.content) if msg.has_content() else None
            config = load_client_config(_config_path(context, configs).resolve())
            # One message at a time per node: Flower may hand two of a node's messages to two
            # processes (a retry after a timeout), and both would write its ledger and models.
            lock = StateLock(config.state_dir, "fedlora node", wait_s=LOCK_WAIT_S)
            if step is None or step not in STEPS.get(msg.metadata.message_type, ()):
                return _stray(config, msg, step)  # never the user's code
            if step == w.KEYGEN:
                return Message(_keygen(config, msg), reply_to=msg)
            session = FlowerSession(config)
            session.transport.load(msg.content)
            if step == w.JOIN:
                return Message(_join(session, msg), reply_to=msg)
            if step == w.TRAIN:
                return _train(session, msg, context, call_next)
            if step == w.EVALUATE:
                return _evaluate(session, msg, context, call_next)
            if step in (w.DECRYPT, w.RELEASE):
                return Message(_decrypt(session, msg), reply_to=msg)
            return Message(_keep(session), reply_to=msg)
        except ConfigError as exc:
            if session is None:  # no fedlora client here: an error, never the user's code
                return _error(msg, f"fedlora: {exc}")
            return _refusal(msg, str(exc), session)
        except FedLoraError as exc:
            return _refusal(msg, str(exc), session)
        except (ValueError, TypeError, KeyError, AttributeError, EOFError) as exc:
            # A message this node cannot read (a wrong type where a number belongs, say): a
            # refusal the server logs, not an error that ends the node's ClientApp.
            return _refusal(msg, f"malformed fedlora message ({type(exc).__name__})", session)
        finally:
            if lock is not None:
                lock.release()

    return mod


fedlora_mod = make_fedlora_mod()
"""Flower ClientApp mod: fedlora's encrypted contribution and threshold decryption."""


def _join(session: FlowerSession, msg: Message) -> RecordDict:
    """Prove which enrolled party this node is: a signature over the server's fresh challenge
    and this node's federation spec, which goes with it (the server compares it with the
    federation's). A spec that differs from the one the message announces is also this node's
    refusal, in its ledger and its log."""
    config = session.member.config
    nonce = w.blob(msg.content, "nonce", max_bytes=w.SMALL)
    size = w.scalar(msg.content, "num_parameters")
    if type(size) is not int or size < 1:
        raise ProtocolError("the join message names no model size")
    spec = node_spec(config, size)
    spec_json = canonical_spec(spec)
    announced = w.blob(msg.content, "spec", required=False, max_bytes=w.SMALL)
    if announced:
        try:
            check_spec(
                parse_spec(announced.decode(errors="replace"), "the federation's spec"),
                spec,
                config.id,
            )
        except ConfigError as exc:
            session.member.ledger.record_refusal(0, "federation spec", str(exc))
            print(f"{config.id}: {exc}", file=sys.stderr)
    digest = join_digest(config.federation_id, msg.metadata.dst_node_id, nonce, spec_json)
    content = RecordDict()
    w.put(
        content,
        w.JOIN,
        {"signature": sign_digest(session.member.signing_key, digest), "spec": spec_json.encode()},
        party=config.id,
        **session.marks(),
    )
    return content


def _keygen(config: ClientConfig, msg: Message) -> RecordDict:
    """One step of key generation without a dealer (:mod:`fedlora.flower._keygen`): say who this
    node is (a holder adds its nonce), run a round, or accept the outcome. A fault this holder
    finds is its answer, with whom it blames; its attempt is then forgotten."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    from fedlora.ceremony._generate import KeygenOutcome, KeygenStart
    from fedlora.client._keygen import KeygenDone, PushKeygen
    from fedlora.client._member import _private_key
    from fedlora.client._ui import Reporter
    from fedlora.flower._keygen import keygen_binding

    signing = _private_key(config.keys.signing_key, "keys.signing_key", Ed25519PrivateKey)
    x25519 = _private_key(config.keys.x25519_key, "keys.x25519_key", X25519PrivateKey)
    push = PushKeygen(config, signing, x25519)
    phase = w.scalar(msg.content, "phase")
    content = RecordDict()
    if phase == "hello":
        challenge = w.blob(msg.content, "challenge", max_bytes=64)
        nonce = push.hello() if push.holds else b""
        digest = join_digest(
            config.federation_id, msg.metadata.dst_node_id, challenge, keygen_binding(nonce)
        )
        blobs = {"signature": sign_digest(signing, digest), "nonce": nonce}
        return w.put(content, w.KEYGEN, blobs, party=config.id)
    if phase == "outcome":
        signatures = {
            name[len("sig.") :]: w.blob(msg.content, name, max_bytes=64)
            for name in msg.content.array_records[w.BLOBS]
            if name.startswith("sig.")
        }
        key_json = w.blob(msg.content, "key", max_bytes=1 << 20)
        outcome = KeygenOutcome(
            w.blob(msg.content, "session", max_bytes=64),
            ThresholdPublicKey.from_json(key_json),
            w.blob(msg.content, "transcript", max_bytes=64),
            signatures,
        )
        push.accept(outcome, Reporter(Console(stderr=True)))
        return w.put(content, w.KEYGEN, {}, accepted=1)
    try:
        if phase == "start":
            raw = w.blob(msg.content, "nonces", max_bytes=32 * 1024)
            start = KeygenStart(
                config.federation_id,
                int(w.scalar(msg.content, "attempt")),
                tuple(w.blob(msg.content, "holders", max_bytes=w.SMALL).decode().split("\n")),
                tuple(raw[i : i + 32] for i in range(0, len(raw), 32)),
                int(w.scalar(msg.content, "threshold")),
                int(w.scalar(msg.content, "bits")),
            )
            answer: dict[str, bytes] | KeygenDone = push.first(start)
        elif phase == "round":
            delivered = {h: w.blob(msg.content, f"in.{h}") for h in push.holders if h != config.id}
            answer = push.step(int(w.scalar(msg.content, "round")), delivered)
        else:
            raise ProtocolError(f"unknown key generation phase {phase!r}")
    except FedLoraError as exc:
        push.forget()
        print(f"{config.id}: key generation stopped: {exc}", file=sys.stderr)
        return w.put(content, w.KEYGEN, {}, reason=str(exc)[:500], blame=exc.party or "")
    if isinstance(answer, KeygenDone):
        blobs = {
            "key": answer.public_key.to_json(),
            "transcript": answer.transcript,
            "signature": answer.signature,
        }
        return w.put(content, w.KEYGEN, blobs, done=1)
    return w.put(content, w.KEYGEN, {f"out.{r}": m for r, m in answer.items()})


def _receipt(session: FlowerSession) -> None:
    """Check the receipt for this client's last contribution, when the message carries one."""
    data = w.blob(session.transport.content, "receipt", required=False)
    if not data or session.fed is None:
        return
    receipt = rpc.receipt_from_proto(w.parse(common_pb2.Receipt(), data, "receipt"))
    sent = session.load_pending(receipt.round_number)
    if sent is None:
        kept = session.member.state_dir / "receipts" / f"round-{receipt.round_number:05d}.json"
        if kept.exists():
            return  # checked and kept already: the server sends it until the node confirms
        raise ProtocolError(
            f"a receipt for round {receipt.round_number}, for which this client kept no contribution"
        )
    contributor = session.contributor
    assert contributor is not None
    contributor.accept_receipt(sent, receipt)
    session.drop_pending(receipt.round_number)


def _train(
    session: FlowerSession, msg: Message, context: Context, call_next: ClientAppCallable
) -> Message:
    session.ensure_joined()
    _receipt(session)
    status = session.transport.round_status()
    _keep_models(session, status.round)
    sealed = session.load_pending(status.round, records=True)
    if sealed is not None and sealed.records:
        return Message(_contribution_reply(session, sealed, RecordDict()), reply_to=msg)
    _check_round(session, status)
    key, verified = _served_model(session, status, msg.content, "train")
    received = flatten(verified)
    contributor = session.contributor
    assert contributor is not None
    node = session.member.id
    with _AHEAD_LOCK:  # the pool this process computed between rounds for this node, if any
        contributor.keep_pool_ahead(_AHEAD.pop(node, None))
    pool = contributor.obfuscator_pool()  # filled while the user's model trains
    try:
        msg.content = _user_content(msg.content, key, verified)
        reply = _call_user(call_next, msg, context, "train")  # on the verified model only
        updated = _updated_vector(reply.content, verified)
        metrics = _user_metrics(reply.content, "train")
        examples = next((m["num-examples"] for m in metrics.values() if "num-examples" in m), 1)
        contributor.begin(status)  # the user's @app.train() draws its own batches
        sent = contributor.seal(
            status, received, updated, examples if type(examples) is int else 1, pool=pool
        )
    finally:
        if pool is not None:
            pool.close()
    ahead = contributor.pool_ahead()
    if ahead is not None:
        with _AHEAD_LOCK:
            stale = _AHEAD.pop(node, None)
            _AHEAD[node] = ahead
        if stale is not None:
            stale.close()
    session.save_pending(sent)
    content = _shared_metrics(session.member.config, metrics)
    return Message(_contribution_reply(session, sent, content), reply_to=msg)


def _evaluate(
    session: FlowerSession, msg: Message, context: Context, call_next: ClientAppCallable
) -> Message:
    """The user's ``@app.evaluate()`` on the current global model, once this node has verified
    it in the anchored log; only the metrics ``flower.share_metrics`` lists go back, and every
    one is kept on the node (``flower-evaluations.json``, the newest per version)."""
    session.ensure_joined()
    _receipt(session)
    status = session.transport.round_status()
    _keep_models(session, status.round)
    key, verified = _served_model(session, status, msg.content, "evaluate")
    msg.content = _user_content(msg.content, key, verified)
    reply = _call_user(call_next, msg, context, "evaluate")
    if reply.content.array_records:
        raise ProtocolError(
            "the ClientApp's evaluate reply carries arrays; fedlora sends none back (a model "
            "leaves this node only inside its encrypted contribution)"
        )
    metrics = _user_metrics(reply.content, "evaluate")
    _keep_evaluation(session, status.global_version, metrics)
    content = _shared_metrics(session.member.config, metrics)
    w.put(content, "evaluated", {}, version=status.global_version, **session.marks())
    return Message(content, reply_to=msg)


def _call_user(call_next: ClientAppCallable, msg: Message, context: Context, what: str) -> Message:
    """The user's function. What it raises or answers as an error stays on the node (in its
    log): an exception's text can carry anything of the local data, and the server would put
    it in the audit log every member reads. The server is told only that it failed, and how.

    Raises:
        ProtocolError: the user's function raised or answered an error.
    """
    try:
        reply = call_next(msg, context)
    except Exception as exc:
        traceback.print_exc(file=sys.stderr)
        raise ProtocolError(
            f"the ClientApp's {what} raised {type(exc).__name__} (the message stays in this "
            "node's log)"
        ) from None
    if reply.has_error():
        print(f"the ClientApp's {what} answered an error: {reply.error.reason}", file=sys.stderr)
        raise ProtocolError(
            f"the ClientApp's {what} answered an error (code {reply.error.code}; the reason "
            "stays in this node's log)"
        )
    return reply


EVALUATIONS = "flower-evaluations.json"
MAX_METRICS = 64  # per record: what a node sends, and what the server reads


def _keep_evaluation(
    session: FlowerSession, version: int, metrics: dict[str, MetricRecord]
) -> None:
    path = session.member.state_dir / EVALUATIONS
    try:
        doc = json.loads(path.read_bytes())
        if not isinstance(doc, dict):
            doc = {}
    except (OSError, ValueError):
        doc = {}
    doc[str(version)] = {
        "time_ms": int(time.time() * 1000),
        "metrics": {name: dict(record.items()) for name, record in metrics.items()},
    }
    replace_file(path, json.dumps(doc, sort_keys=True).encode())


def _user_content(content: RecordDict, key: str, verified: ArrayRecord) -> RecordDict:
    """What the user's function is given: the verified model under the name the server used,
    and the server's config and metric records; none of fedlora's records."""
    out = RecordDict()
    out[key] = verified
    for name, config in content.config_records.items():
        if name != w.STEP:
            out[name] = config
    for name, record in content.metric_records.items():
        out[name] = record
    return out


def _updated_vector(content: RecordDict, verified: ArrayRecord) -> np.ndarray:
    """The user's trained model, flattened in the verified model's layout.

    Raises:
        ProtocolError: not exactly one array record, other names or shapes than the model's,
            or values that are not finite.
    """
    records = list(content.array_records.values())
    if len(records) != 1:
        raise ProtocolError(
            f"the ClientApp's train reply carries {len(records)} array records; fedlora takes "
            "exactly one, the trained model"
        )
    updated = records[0]
    if sorted(updated.keys()) != sorted(verified.keys()):
        raise ProtocolError(
            f"the ClientApp's train reply names the arrays {sorted(updated.keys())[:5]}, the "
            f"model it was given {sorted(verified.keys())[:5]}"
        )
    parts = []
    for name, given in verified.items():
        array = np.asarray(updated[name].numpy())
        if tuple(array.shape) != tuple(given.shape):
            raise ProtocolError(
                f"the ClientApp's train reply changed the shape of {name!r} from "
                f"{tuple(given.shape)} to {tuple(array.shape)}"
            )
        parts.append(array.astype(np.float32).ravel())
    vector = np.concatenate(parts).astype(np.float32)
    if not np.isfinite(vector).all():
        raise ProtocolError("the ClientApp's train reply has values that are not finite")
    return vector


def _user_metrics(content: RecordDict, what: str) -> dict[str, MetricRecord]:
    """The metric records of the user's reply (bounded; kept on the node, shared only as the
    node's YAML allows)."""
    records = dict(content.metric_records.items())
    if len(records) > 4 or any(len(r) > MAX_METRICS for r in records.values()):
        raise ProtocolError(
            f"the ClientApp's {what} reply carries more than 4 metric records or {MAX_METRICS} "
            "metrics in one"
        )
    return records


def _shared_metrics(config: ClientConfig, metrics: dict[str, MetricRecord]) -> RecordDict:
    """The metrics this node may send in the clear (``flower.share_metrics``; finite numbers
    only, from the user's first metric record), nothing else."""
    allowed = set(config.flower.share_metrics)
    content = RecordDict()
    for name, record in list(metrics.items())[:1]:  # one record, as FedAvg expects
        shared = {
            k: v
            for k, v in record.items()
            if k in allowed and type(v) in (int, float) and np.isfinite(v)
        }
        if shared:
            content[name] = MetricRecord(shared)
    return content


def _contribution_reply(
    session: FlowerSession, sent: SignedContribution, content: RecordDict
) -> RecordDict:
    return w.put(
        content,
        w.TRAIN,
        {
            "header": rpc.contribution_header_to_proto(sent.header).SerializeToString(),
            "records": sent.records,
        },
        **session.marks(),
    )


def _check_round(session: FlowerSession, status: RoundStatus) -> None:
    """A node trains only for a round the anchored log opens, from the global model it opens
    it from, and newer than every round it sealed: the round status a message carries is not
    signed, and a server or relay that named rounds of its own could make it train, and
    seal, again and again.

    Raises:
        ProtocolError: a round this node sealed already, or an older one.
        VerificationError: a round the log does not open so (also written to the ledger).
    """
    member, r = session.member, status.round
    assert session.contributor is not None
    sealed = session.contributor.sealed_rounds()
    if r in sealed:
        raise ProtocolError(
            f"this node sealed its contribution to round {r} already; it seals each round once"
        )
    if sealed and r < max(sealed):
        raise ProtocolError(
            f"round {r} is older than round {max(sealed)}, which this node sealed already"
        )
    opened = member.models.opened(r)
    if opened is None or opened != (status.global_version, bytes(status.global_digest)):
        reason = (
            f"the audit log this node has read does not open round {r}"
            if opened is None
            else f"the audit log opens round {r} from global version {opened[0]}, not "
            f"{status.global_version}"
        )
        member.ledger.record_refusal(r, "round", reason)
        raise VerificationError(f"{reason}; this node does not train for it")


def _served_model(
    session: FlowerSession, status: RoundStatus, content: RecordDict, what: str
) -> tuple[str, ArrayRecord]:
    """The one model the message carries, checked against the round's global model exactly as
    the anchored log publishes it, cut by the layout the log names (names, order, shapes, dtypes
    and every value). Returns its name and the verified model, built from this node's own
    digest-checked copy: what the user's function is given. Otherwise a server could hand
    each node another model (a "dead" one to all but one node, say) while every node signs
    that it trained from the published one, or put the published model under one name and
    another under the name the user's code reads.

    Raises:
        VerificationError: not exactly one model record, or one that is not the log's (also
            written to the node's ledger).
    """
    member, v = session.member, status.global_version
    try:
        names = [k for k in content.array_records if k != w.BLOBS]
        if len(names) != 1:
            raise VerificationError(
                f"the {what} message carries {len(names)} model array records "
                f"({', '.join(repr(n[:40]) for n in names[:4])}); fedlora takes exactly one"
            )
        record = content.array_records[names[0]]
        published = member.models.published_digest(v)
        if published is None:
            raise VerificationError(
                f"this node has not read global version {v}'s publication in the audit log (the "
                "message lacks the log entries it needs)"
            )
        if not hmac.compare_digest(published, bytes(status.global_digest)):
            raise VerificationError(
                f"round {status.round}'s global model is not the one the audit log publishes as "
                f"version {v}"
            )
        vector = member.download_global(v, status.global_digest)
        expected = _split(vector, member.models.layout)
        if expected is None:
            raise VerificationError(
                "the audit log names no array layout that fits the global model"
            )
        if list(record.keys()) != list(expected):
            raise VerificationError(
                f"the {what} message's arrays are named {list(record.keys())[:5]}, the log's "
                f"layout names {list(expected)[:5]}"
            )
        for key, want in expected.items():
            # Read strictly (never np.load): what the header claims is compared first.
            got = w.npy_payload(record[key], want.dtype, want.shape)
            if got is None or not hmac.compare_digest(got, want.tobytes()):
                raise VerificationError(
                    f"the {what} message's array {key!r} is not global version {v} as the log "
                    "publishes it"
                )
    except VerificationError as exc:
        member.ledger.record_refusal(status.round, "global model", str(exc))
        verb = "train" if what == "train" else "evaluate"
        raise VerificationError(f"{exc}; this node does not {verb} on it") from None
    return names[0], ArrayRecord({key: Array(array) for key, array in expected.items()})


def _keep_models(session: FlowerSession, round_number: int) -> None:
    """Keep every version published since this node last read the log, as the standalone
    client does. A log or a download that is not what the server signed is refused, as there
    (VerificationError); a message that lacks what is needed (after a lost reply, say) is
    only reported, and training goes on."""
    try:
        session.keep_models(round_number)
    except (RemoteError, OSError) as exc:
        print(f"{session.member.config.id}: global versions not kept now: {exc}", file=sys.stderr)


def _keep(session: FlowerSession) -> RecordDict:
    """The ``keep`` step after the last round: keep what was published, the final one too."""
    session.ensure_joined()
    _receipt(session)
    _keep_models(session, session.transport.round_status().round)
    kept = session.member.models.kept()
    content = RecordDict()
    w.put(content, "kept", {}, newest=max(kept) if kept else 0, **session.marks())
    return content


def _decrypt(session: FlowerSession, msg: Message) -> RecordDict:
    session.ensure_joined()
    if session.holder is None:
        raise ProtocolError("this node holds no key share")
    _receipt(session)
    round_number = w.scalar(msg.content, "round")
    if type(round_number) is not int or round_number < 1:
        raise ProtocolError("the decrypt message names no round")
    done = session.holder.decrypt(round_number)
    out = dict(session.transport.outbox)
    content = RecordDict()
    w.put(content, "released" if done else "signed", out, **session.marks())
    return content


__all__ = [
    "FlowerSession",
    "PushTransport",
    "client_config_path",
    "fedlora_mod",
    "flatten",
    "make_fedlora_mod",
]
