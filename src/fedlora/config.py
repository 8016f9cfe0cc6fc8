"""YAML configuration, parsed once into frozen dataclasses (STYLE.md §9, DESIGN.md §6).

One validator walks the dataclass definitions: it rejects unknown keys, wrong types (a bool where
an int is expected included), out-of-range values and missing required keys, and every message
names the dotted YAML path. Relative paths are resolved against the YAML file's folder. Nothing
below the entry points reads files or the environment; they receive these objects.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import ipaddress
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

from fedlora.errors import ConfigError

__all__ = [
    "METRIC_NAME",
    "MIN_KEY_BITS",
    "ClientConfig",
    "ClientPolicy",
    "CodecConfig",
    "CoordinatorConfig",
    "FederatedLearning",
    "FlowerOptions",
    "LoraSpec",
    "ModelSpec",
    "Party",
    "TestingOptions",
    "check_key_size",
    "load_client_config",
    "load_coordinator_config",
    "parse_config",
]

MIN_KEY_BITS = 2048
"""Smallest threshold-key modulus accepted without ``testing.insecure_small_keys`` (DESIGN.md §3)."""

T = TypeVar("T")
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_HEX32 = re.compile(r"^[0-9a-f]{64}$")
_HOSTPORT = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]*):[0-9]{1,5}$")


def _range(
    low: float | None = None,
    high: float | None = None,
    *,
    pattern: re.Pattern[str] | None = None,
    doc: str = "",
    why: str = "",
) -> dict[str, Any]:
    """Field metadata for the validator: an inclusive range or a pattern.

    ``doc`` describes what the pattern accepts; ``why`` says, in the out-of-range error, why the
    bounds are what they are (for bounds that protect privacy rather than sanity).
    """
    return {"low": low, "high": high, "pattern": pattern, "doc": doc, "why": why}


_ONE_IS_ONE_CLIENT = "an aggregate of one contribution is that client's own update"


@dataclass(frozen=True)
class FederatedLearning:
    """The federation's schedule and thresholds.

    ``participant_threshold`` (2..10 000) is the fewest contributions in any aggregate;
    ``decryption_threshold`` (2..128) is ``t`` of the threshold key. ``ticket_quorum`` (1..128) is
    how many share holders must sign a round's decryption ticket before any of them releases a
    partial decryption; ``None`` means the safe default ``⌈(n + t)/2⌉`` for the key's ``n`` share
    holders (:func:`fedlora.crypto.ticket_quorum`). An explicit value is checked against the key
    where the key is loaded: at least ``⌈(n + t)/2⌉``, at most ``n``. ``min_clients`` (1..10 000):
    round 1 opens (and its ``round_timeout_s`` starts) once that many enrolled parties have
    joined; ``None`` means ``participant_threshold``. A round closes before its deadline once
    every joined, unrevoked party has contributed.
    """

    encryption_type: Literal["homomorphic", "none"] = "homomorphic"
    aggregation_frequency: int = field(default=100, metadata=_range(1, 10_000_000))
    participant_threshold: int = field(
        default=3, metadata=_range(2, 10_000, why=_ONE_IS_ONE_CLIENT)
    )
    decryption_threshold: int = field(
        default=3,
        metadata=_range(2, 128, why="with t = 1 any single share holder decrypts alone"),
    )
    ticket_quorum: int | None = field(default=None, metadata=_range(1, 128))
    min_clients: int | None = field(default=None, metadata=_range(1, 10_000))
    rounds: int = field(default=5, metadata=_range(1, 1_000_000))
    round_timeout_s: float = field(default=600.0, metadata=_range(1, 7 * 24 * 3600))
    decryption_timeout_s: float = field(default=600.0, metadata=_range(1, 7 * 24 * 3600))


@dataclass(frozen=True)
class CodecConfig:
    """Packing codec: values are clipped to ±clip and quantized to value_bits."""

    clip: float = field(default=0.05, metadata=_range(1e-12, 1e12))
    value_bits: int = field(default=16, metadata=_range(2, 32))
    max_weight: int = field(default=1, metadata=_range(1, 1 << 20))


@dataclass(frozen=True)
class CryptoConfig:
    """Where modular exponentiation runs: ``auto`` (fedlora's AVX-512 IFMA kernel where the CPU
    runs it; else OpenSSL's libcrypto, constant-time for secrets; else gmpy2 — said in one line),
    ``ifma``, ``openssl`` or ``gmpy2``."""

    backend: Literal["auto", "ifma", "openssl", "gmpy2"] = "auto"


@dataclass(frozen=True)
class ClientCryptoConfig(CryptoConfig):
    """A member's ``crypto``: the backend, and ``obfuscators_ahead`` (default true): once a
    contribution is sealed, compute the next round's obfuscators (``rⁿ mod n²``, each used once)
    in the background while the round is aggregated and decrypted, so the next sealing starts
    warm; it holds one contribution's worth in memory (about 0.8 KB per ciphertext with a
    2048-bit key) and uses a core between rounds. Off: they are computed during training."""

    obfuscators_ahead: bool = True


@dataclass(frozen=True)
class TlsFiles:
    ca: Path
    cert: Path
    key: Path


@dataclass(frozen=True)
class ServerConfig:
    listen: str = "127.0.0.1:50051"
    insecure: bool = False
    tls: TlsFiles | None = None
    # A revocation list signed by the CA (`fedlora provision revoke`); reloaded when it changes.
    revocations: Path | None = None
    chunk_bytes: int = field(default=1 << 20, metadata=_range(4096, 4 << 20))
    # Prometheus metrics over plain HTTP on this HOST:PORT (opt-in; keep it on a private network).
    metrics: str | None = field(default=None, metadata=_range(pattern=_HOSTPORT, doc="HOST:PORT"))


@dataclass(frozen=True)
class Party:
    id: str = field(metadata=_range(pattern=_ID))
    role: Literal["bank", "hospital", "other"]
    signing_public_key: str = field(metadata=_range(pattern=_HEX32, doc="64 hex digits (Ed25519)"))
    revoked: bool = False


@dataclass(frozen=True)
class ModelConfig:
    num_parameters: int = field(metadata=_range(1, 1 << 31))
    adapter_template: Path | None = (
        None  # `fedlora model template`: publish each version in peft format
    )
    # The federation spec every client's model must match (`fedlora model template` writes it
    # as federation-spec.json in the template folder, which is the default when this is unset).
    spec: Path | None = None


_NO_DEALER = "the construction without a dealer needs ℓ ≥ 2t − 1 holders (docs/cryptography.md)"


@dataclass(frozen=True)
class KeyGeneration:
    """``keys.generation``: the share holders generate the threshold key together before round
    1 — nobody, the coordinator included, ever knows its factorization — and the coordinator
    relays their messages (signed, and sealed end to end). ``holders``: the parties that hold a
    share, in share order (``t`` is ``federated_learning.decryption_threshold``; ``ℓ ≥ 2t − 1``).
    The key is written to ``keys.threshold_public_key`` once a quorum of holders signed it.
    ``round_timeout_s``: a holder silent that long in one step is blamed and the attempt ends.
    Absent: the key was dealt (``fedlora keys deal``), which trusts the dealer."""

    holders: tuple[str, ...]
    bits: int = field(default=2048, metadata=_range(512, 8192))
    round_timeout_s: float = field(default=300.0, metadata=_range(1, 24 * 3600))


@dataclass(frozen=True)
class CoordinatorKeys:
    threshold_public_key: Path
    signing_key: Path
    generation: KeyGeneration | None = None


@dataclass(frozen=True)
class TestingOptions:
    """Switches that weaken security, for tests and demos only; never set them in production.

    ``insecure_small_keys`` accepts threshold keys below :data:`MIN_KEY_BITS` bits (fast to deal,
    trivial to factor).
    """

    __test__ = False  # the name starts with "Test"; pytest must not collect it from test modules
    insecure_small_keys: bool = False


@dataclass(frozen=True)
class CoordinatorConfig:
    federation_id: str = field(metadata=_range(pattern=_ID))
    state_dir: Path
    keys: CoordinatorKeys
    model: ModelConfig
    parties: tuple[Party, ...]
    server: ServerConfig = ServerConfig()
    federated_learning: FederatedLearning = FederatedLearning()
    codec: CodecConfig = CodecConfig()
    crypto: CryptoConfig = CryptoConfig()
    testing: TestingOptions = TestingOptions()

    def party(self, party_id: str) -> Party | None:
        return next((p for p in self.parties if p.id == party_id), None)


@dataclass(frozen=True)
class CoordinatorEndpoint:
    address: str = "127.0.0.1:50051"
    insecure: bool = False
    tls: TlsFiles | None = None
    server_name: str | None = None


@dataclass(frozen=True)
class Holder:
    """A share holder as a member knows it out of band: its X25519 key seals its messages."""

    id: str = field(metadata=_range(pattern=_ID))
    x25519_public_key: str = field(metadata=_range(pattern=_HEX32, doc="64 hex digits (X25519)"))


@dataclass(frozen=True)
class ClientKeyGeneration:
    """``keys.generation`` of a member: the key is generated by ``holders`` (in share order, each
    also in ``peers``) with threshold ``threshold`` and ``bits`` bits. A holder takes part and
    keeps its share in ``keys.key_share``; every member accepts the key into
    ``keys.threshold_public_key`` only with a statement signed by a quorum of the holders (their
    ``peers`` keys) — never on the coordinator's word. Absent: the key was dealt."""

    threshold: int = field(metadata=_range(2, 128))
    holders: tuple[Holder, ...]
    bits: int = field(default=2048, metadata=_range(512, 8192))


@dataclass(frozen=True)
class ClientKeys:
    signing_key: Path
    x25519_key: Path
    key_share: Path
    threshold_public_key: Path
    coordinator_signing_public_key: str = field(
        metadata=_range(pattern=_HEX32, doc="64 hex digits (Ed25519)")
    )
    generation: ClientKeyGeneration | None = None


@dataclass(frozen=True)
class DataConfig:
    path: Path
    label_column: str = "label"
    text_column: str = "text"  # for model.kind: text (CSV or JSONL)
    prompt_column: str = "prompt"  # for model.kind: causal-lm (JSONL: instruction ...
    response_column: str = "response"  # ... and the answer the model learns to give)


@dataclass(frozen=True)
class LoraSpec:
    """LoRA adapter settings; every client of a federation must use the same ones."""

    rank: int = field(default=8, metadata=_range(1, 1024))
    alpha: int = field(default=16, metadata=_range(1, 1_000_000))
    targets: tuple[str, ...] = ("query", "value")
    aggregation: Literal["ffa", "fedavg_ab"] = "ffa"
    seed: int = field(default=0, metadata=_range(0, 2**31 - 1))


@dataclass(frozen=True)
class ModelSpec:
    """What the client fine-tunes: ``linear`` (no base model; a baseline), ``tabular`` (LoRA on a
    saved MLP), ``text`` (LoRA on a Hugging Face sequence-classification model) or
    ``causal-lm`` (LoRA on a local ``AutoModelForCausalLM`` folder: Llama, Qwen, Mistral…,
    trained on instructions). ``max_length``: tokens per example (longer ones are truncated).
    ``quantization``: ``4bit`` loads a causal LM's base in 4 bits (QLoRA, bitsandbytes; CUDA
    only)."""

    kind: Literal["linear", "tabular", "text", "causal-lm"] = "linear"
    base_model: Path | None = None
    max_length: int = field(default=128, metadata=_range(8, 8192))
    lora: LoraSpec = LoraSpec()
    quantization: Literal["none", "4bit"] = "none"


@dataclass(frozen=True)
class TrainingConfig:
    batch_size: int = field(default=32, metadata=_range(1, 1 << 20))
    learning_rate: float = field(default=0.05, metadata=_range(1e-12, 100))
    device: Literal["auto", "cpu", "cuda"] = "auto"
    num_classes: int = field(default=2, metadata=_range(2, 100_000))
    seed: int = field(default=0, metadata=_range(0, 2**32 - 1))
    # Micro-batches whose gradients add up to one optimizer step (an effective batch of
    # batch_size × gradient_accumulation, in the memory of batch_size).
    gradient_accumulation: int = field(default=1, metadata=_range(1, 4096))
    gradient_checkpointing: bool = False  # recompute activations: less memory, more time


@dataclass(frozen=True)
class RetryConfig:
    """How a member rides out an unreachable or busy coordinator (docs/configuration.md).

    Each call is tried up to ``max_attempts`` times, waiting ``initial_backoff_s``, doubling up
    to ``max_backoff_s`` between tries (the defaults give up after about 4.5 minutes); a
    certificate problem or an endpoint that is not a coordinator stops at once. ``call_timeout_s``
    bounds each join and status call (a coordinator answers them in milliseconds).
    """

    max_attempts: int = field(default=30, metadata=_range(1, 1_000_000))
    initial_backoff_s: float = field(default=0.5, metadata=_range(0.01, 3600))
    max_backoff_s: float = field(default=10.0, metadata=_range(0.01, 3600))
    poll_interval_s: float = field(default=0.5, metadata=_range(0.01, 3600))
    call_timeout_s: float = field(default=5.0, metadata=_range(0.5, 3600))


@dataclass(frozen=True)
class Peer:
    """An enrolled party as the client knows it out of band (pinned, not learned from the coordinator)."""

    id: str = field(metadata=_range(pattern=_ID))
    signing_public_key: str = field(metadata=_range(pattern=_HEX32, doc="64 hex digits (Ed25519)"))


@dataclass(frozen=True)
class ClientPolicy:
    """What this client requires before it releases a partial decryption.

    ``min_participants`` (2..10 000): fewest distinct pinned peers an aggregate must combine;
    ``None`` means the federation's ``participant_threshold`` as announced at join, never below 2.
    Pin it here so that a coordinator cannot lower it. ``ticket_quorum`` (1..128): signatures on
    the round's decryption ticket this client requires; ``None`` means ``⌈(n + t)/2⌉`` from the
    threshold key. Neither may exceed the number of peers. ``allow_plaintext`` (default false):
    take part in a federation whose coordinator announces ``encryption_type: none`` — sending
    updates in the clear, for baselines only; otherwise such a coordinator is refused at join.
    """

    min_participants: int | None = field(
        default=None, metadata=_range(2, 10_000, why=_ONE_IS_ONE_CLIENT)
    )
    ticket_quorum: int | None = field(default=None, metadata=_range(1, 128))
    allow_plaintext: bool = False


METRIC_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass(frozen=True)
class FlowerOptions:
    """A member's settings on Flower (``fedlora.flower``).

    ``share_metrics``: names of the metrics its ClientApp reports (``accuracy``,
    ``num-examples``…) that this node may send to the ServerApp in the clear, in train and
    evaluate replies. Default none: every message passes through Flower's SuperLink, and a
    metric such as a local example count or a training loss says something about the node's
    data. Unlisted metrics stay on the node (evaluation results in its state folder).
    """

    share_metrics: tuple[str, ...] = field(
        default=(),
        metadata=_range(pattern=METRIC_NAME, doc="a metric name (letters, digits, '.', '_', '-')"),
    )


@dataclass(frozen=True)
class ClientDebug:
    save_plaintext_deltas: bool = False


@dataclass(frozen=True)
class ClientConfig:
    id: str = field(metadata=_range(pattern=_ID))
    role: Literal["bank", "hospital", "other"]
    federation_id: str = field(metadata=_range(pattern=_ID))
    state_dir: Path
    keys: ClientKeys
    data: DataConfig
    peers: tuple[Peer, ...]
    coordinator: CoordinatorEndpoint = CoordinatorEndpoint()
    model: ModelSpec = ModelSpec()
    policy: ClientPolicy = ClientPolicy()
    training: TrainingConfig = TrainingConfig()
    retry: RetryConfig = RetryConfig()
    debug: ClientDebug = ClientDebug()
    crypto: ClientCryptoConfig = ClientCryptoConfig()
    flower: FlowerOptions = FlowerOptions()
    testing: TestingOptions = TestingOptions()


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    if typing.get_origin(tp) is tuple:
        return "a list"
    return {
        int: "an integer",
        float: "a number",
        str: "a string",
        bool: "true or false",
        Path: "a path",
    }.get(tp, str(tp))


def _convert(tp: Any, value: Any, path: str, base: Path, meta: dict[str, Any]) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _convert(args[0], value, path, base, meta)
    if origin is Literal:
        if value not in typing.get_args(tp) or isinstance(value, bool):
            raise ConfigError(f"{path}: expected {_type_name(tp)}, got {value!r}")
        return value
    if origin is tuple:
        if not isinstance(value, list):
            raise ConfigError(f"{path}: expected a list, got {type(value).__name__}")
        (item,) = typing.get_args(tp)[:1]
        # A list's metadata (a pattern, a range) applies to each of its items.
        return tuple(_convert(item, v, f"{path}[{i}]", base, meta) for i, v in enumerate(value))
    if dataclasses.is_dataclass(tp):
        return _build(typing.cast(type, tp), value, path, base)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: expected an integer, got {value!r}")
        out: Any = value
    elif tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: expected a number, got {value!r}")
        out = float(value)
    elif tp is str:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            raise ConfigError(
                f"{path}: expected a string, got the number {value!r}; put the value in quotes"
            )
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{path}: expected a non-empty string, got {value!r}")
        out = value
    elif tp is Path:
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{path}: expected a path, got {value!r}")
        if value.startswith("package:"):
            return _package_path(path, value[len("package:") :])
        p = Path(value).expanduser()
        return p if p.is_absolute() else (base / p)
    else:  # pragma: no cover - a new field type needs a branch here
        raise ConfigError(f"{path}: unsupported type {tp}")
    low, high, pattern = meta.get("low"), meta.get("high"), meta.get("pattern")
    if (low is not None and out < low) or (high is not None and out > high):
        why = f" ({meta['why']})" if meta.get("why") else ""
        raise ConfigError(f"{path}: must be between {low:g} and {high:g}, got {out!r}{why}")
    if pattern is not None and not pattern.match(out):
        hint = (
            meta.get("doc")
            or "letters, digits, '.', '_' or '-', starting with a letter or digit (at most 64)"
        )
        raise ConfigError(f"{path}: must be {hint}, got {out!r}")
    return out


def _package_path(path: str, spec: str) -> Path:
    """``package:NAME/SUB/PATH`` — a folder shipped inside an installed package (e.g. a model)."""
    name, _, sub = spec.partition("/")
    try:
        found = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        found = None
    if found is None or not found.submodule_search_locations:
        raise ConfigError(
            f"{path}: package {name!r} is not installed (pip install {name.replace('_', '-')})"
        )
    return Path(next(iter(found.submodule_search_locations))) / sub


def _build(cls: type[T], data: Any, path: str, base: Path) -> T:
    where = path or "the top level"
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        dotted = f"{path}.{unknown[0]}" if path else str(unknown[0])
        raise ConfigError(f"{dotted}: unknown key (allowed here: {', '.join(sorted(fields))})")
    kwargs = {}
    for name, f in fields.items():
        dotted = f"{path}.{name}" if path else name
        if name in data:
            kwargs[name] = _convert(hints[name], data[name], dotted, base, dict(f.metadata))
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{dotted}: required key is missing")
    return cls(**kwargs)


class _StrictLoader(yaml.SafeLoader):  # type: ignore[misc]  # yaml ships no types
    """yaml's safe loader, refusing a key written twice in one mapping (plain YAML keeps the
    last silently: `rounds: 3` below `rounds: 50` would win without a word)."""

    def construct_mapping(self, node: Any, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} appears twice in one mapping", key_node.start_mark
                )
            seen.add(key)
        return dict(super().construct_mapping(node, deep=deep))


_StrictLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _StrictLoader.construct_mapping
)


def load_yaml(text: str) -> Any:
    """Parse YAML as every fedlora config loader does: safe, and no key twice in a mapping.

    Raises:
        yaml.YAMLError: malformed, or a duplicate key (its line in ``problem_mark``).
    """
    return yaml.load(text, Loader=_StrictLoader)


def parse_config(
    cls: type[T],
    text: str,
    *,
    base: Path,
    source: str = "config",
    overrides: typing.Mapping[str, Any] | None = None,
) -> T:
    """Parse YAML text into ``cls``; relative paths resolve against ``base``.

    ``overrides`` maps dotted keys (``federated_learning.rounds``) to values that replace the
    YAML's before validation, so they are checked, and refused, exactly as if written there.

    Raises:
        ConfigError: malformed YAML or any invalid key, naming the dotted path.
    """
    try:
        data = load_yaml(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(
            f"{source} is not valid YAML{where}: {getattr(exc, 'problem', exc)}"
        ) from None
    if data is None:
        raise ConfigError(f"{source} is empty")
    for dotted, value in (overrides or {}).items():
        node, parts = data, dotted.split(".")
        for i, part in enumerate(parts[:-1]):
            if not isinstance(node, dict):
                raise ConfigError(f"{'.'.join(parts[: i + 1])}: not a mapping in {source}")
            node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{dotted}: its parent is not a mapping in {source}")
        node[parts[-1]] = value
    return _build(cls, data, "", base)


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from None


def load_coordinator_config(
    path: Path, overrides: typing.Mapping[str, Any] | None = None
) -> CoordinatorConfig:
    """Read and validate a coordinator YAML file, including the rules that span several keys.

    ``overrides``: dotted keys replacing the file's values before validation (e.g. from a
    Flower run config).
    """
    cfg = parse_config(
        CoordinatorConfig,
        _read(path),
        base=path.parent.resolve(),
        source=str(path),
        overrides=overrides,
    )
    fl, n = cfg.federated_learning, len(cfg.parties)
    ids = [p.id for p in cfg.parties]
    if n == 0:
        raise ConfigError("parties: at least one party must be enrolled")
    if len(set(ids)) != n:
        dup = next(i for i in ids if ids.count(i) > 1)
        raise ConfigError(f"parties: id {dup!r} is enrolled twice")
    keys = [p.signing_public_key for p in cfg.parties]
    if len(set(keys)) != n:
        raise ConfigError("parties: two parties share a signing_public_key")
    if fl.participant_threshold > n:
        raise ConfigError(
            f"federated_learning.participant_threshold: {fl.participant_threshold} exceeds the {n} enrolled parties"
        )
    if fl.decryption_threshold > n:
        raise ConfigError(
            f"federated_learning.decryption_threshold: {fl.decryption_threshold} exceeds the {n} enrolled parties"
        )
    if fl.min_clients is not None and fl.min_clients > n:
        raise ConfigError(
            f"federated_learning.min_clients: {fl.min_clients} exceeds the {n} enrolled parties"
        )
    if fl.ticket_quorum is not None and fl.ticket_quorum > n:
        raise ConfigError(
            f"federated_learning.ticket_quorum: {fl.ticket_quorum} exceeds the {n} enrolled parties"
        )
    _check_transport("server", cfg.server.insecure, cfg.server.tls, cfg.server.listen)
    gen = cfg.keys.generation
    if gen is not None:
        check_generation(
            "keys.generation", list(gen.holders), fl.decryption_threshold, set(ids), "parties"
        )
        check_key_size(gen.bits, cfg.testing, "keys.generation.bits")
    return cfg


def check_generation(
    where: str, holders: list[str], threshold: int, known: set[str], listed_in: str
) -> None:
    """The holders of a generated key: distinct, known, and enough for the construction.

    Raises:
        ConfigError: naming the setting and the fix.
    """
    if len(set(holders)) != len(holders):
        raise ConfigError(f"{where}.holders: a holder is listed twice")
    unknown = [h for h in holders if h not in known]
    if unknown:
        raise ConfigError(f"{where}.holders: {', '.join(unknown)} not in {listed_in}")
    if 2 * threshold - 1 > len(holders):
        raise ConfigError(
            f"{where}.holders: {len(holders)} holders cannot generate a {threshold}-of-"
            f"{len(holders)} key; {_NO_DEALER}: list at least {2 * threshold - 1}, or lower the "
            "decryption threshold"
        )


def load_client_config(
    path: Path, overrides: typing.Mapping[str, Any] | None = None
) -> ClientConfig:
    """Read and validate a client YAML file (``overrides``: dotted keys that replace its values,
    validated as the YAML is)."""
    cfg = parse_config(
        ClientConfig,
        _read(path),
        base=path.parent.resolve(),
        source=str(path),
        overrides=overrides,
    )
    _check_transport(
        "coordinator", cfg.coordinator.insecure, cfg.coordinator.tls, cfg.coordinator.address
    )
    ids = [p.id for p in cfg.peers]
    if cfg.id not in ids:
        raise ConfigError(f"peers: must list this client ({cfg.id!r}) with its signing key")
    if len(set(ids)) != len(ids):
        raise ConfigError("peers: a peer is listed twice")
    keys = [p.signing_public_key for p in cfg.peers]
    if len(set(keys)) != len(keys):
        # One party under two ids would count twice wherever distinct parties are counted (the
        # ticket quorum, min_participants).
        twice = sorted(p.id for p in cfg.peers if keys.count(p.signing_public_key) > 1)
        raise ConfigError(
            f"peers: {', '.join(twice)} share one signing_public_key; each party has its own key"
        )
    for name in ("min_participants", "ticket_quorum"):
        value = getattr(cfg.policy, name)
        if value is not None and value > len(ids):
            raise ConfigError(f"policy.{name}: {value} exceeds the {len(ids)} peers")
    if cfg.model.kind != "linear" and cfg.model.base_model is None:
        raise ConfigError(f"model.base_model: required for model.kind {cfg.model.kind!r}")
    if not cfg.model.lora.targets:
        raise ConfigError("model.lora.targets: name at least one linear layer to adapt")
    if cfg.retry.initial_backoff_s > cfg.retry.max_backoff_s:
        raise ConfigError("retry.initial_backoff_s: must not exceed retry.max_backoff_s")
    gen = cfg.keys.generation
    if gen is not None:
        holders = [h.id for h in gen.holders]
        check_generation("keys.generation", holders, gen.threshold, set(ids), "peers")
        check_key_size(gen.bits, cfg.testing, "keys.generation.bits")
    return cfg


def check_id(value: str, where: str) -> str:
    """Return ``value`` if it is a valid party, federation or file-name id, else refuse it.

    Ids name files (``NAME.pem``, ``ID.x25519``, ``shares/ID.share.json``): a separator, a leading
    dot or an empty id would write outside the folder or hide the file.

    Raises:
        ConfigError: naming ``where`` and the rule.
    """
    if not isinstance(value, str) or not _ID.match(value):
        raise ConfigError(
            f"{where}: {value!r} is not a valid id (1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit)"
        )
    return value


def check_key_size(bits: int, testing: TestingOptions, where: str) -> None:
    """Refuse a threshold key whose modulus has fewer than :data:`MIN_KEY_BITS` bits.

    ``where`` is the dotted key that named the key file (e.g. ``keys.threshold_public_key``).
    Returns normally for a key of at least 2048 bits, or for a smaller one when
    ``testing.insecure_small_keys`` is set (the caller should then warn).

    Raises:
        ConfigError: the modulus is below 2048 bits and small keys were not allowed.
    """
    if bits >= MIN_KEY_BITS or testing.insecure_small_keys:
        return
    raise ConfigError(
        f"{where}: the key has a {bits}-bit modulus; fedlora refuses keys below {MIN_KEY_BITS} bits "
        "(set testing.insecure_small_keys: true for tests and demos only)"
    )


def _is_loopback(address: str) -> bool:
    host = address.rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_transport(prefix: str, insecure: bool, tls: TlsFiles | None, address: str) -> None:
    where = "listen" if prefix == "server" else "address"
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ConfigError(
            f"{prefix}.{where}: {address!r} must be HOST:PORT (e.g. 0.0.0.0:50051 or "
            "[::]:50051); without a port gRPC would pick one silently"
        )
    if insecure and tls is not None:
        raise ConfigError(f"{prefix}.insecure: true contradicts {prefix}.tls; set one of them")
    if not insecure and tls is None:
        raise ConfigError(
            f"{prefix}.tls: required (mTLS is the default); or set {prefix}.insecure: true for a loopback demo"
        )
    if insecure and not _is_loopback(address):
        raise ConfigError(
            f"{prefix}.insecure: allowed only on loopback (127.0.0.1, ::1, localhost), but {prefix}.{where} is {address!r}"
        )
