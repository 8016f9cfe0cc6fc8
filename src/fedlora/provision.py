"""Provisioning: one project file → a kit per site, with every private key born where it lives.

Like NVIDIA FLARE's startup kits, but no private key ever travels:

1. **Each site** (the coordinator's and every party's) runs ``fedlora provision init``: it makes
   the site's signing key, transport (X25519) key and TLS key in its own folder (mode 0600), and
   a *request* — public keys and a TLS certificate signing request — to send to the organizer.
2. **The organizer** (who holds the federation's CA and deals the threshold key) runs ``fedlora
   provision build`` on the project file and the requests: it signs every certificate (with the
   project's expiry), deals the threshold key sealing each share to its holder's X25519 key,
   writes the adapter template and federation spec, and writes one kit per site — its YAML with
   every peer's public keys filled in, the CA certificate, its certificate, the public threshold
   key and its sealed share — plus ``CHECKLIST.md``: who sends what to whom.
3. **Each site** runs ``fedlora provision install``: the kit's files join the site's private
   keys, and everything is checked (certificate matches the TLS key and the CA, share opens,
   signing key is the one its peers pin).

Revocation: ``fedlora provision revoke`` signs a list with the CA key (:mod:`fedlora.revocation`);
the coordinator's kit names the file, and the coordinator reloads it when it changes.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.x509.oid import NameOID

from fedlora._files import check_private, read_file, replace_file, write_new_file
from fedlora.certs import create_ca, sign_request
from fedlora.config import (
    CodecConfig,
    FederatedLearning,
    ModelSpec,
    TestingOptions,
    TrainingConfig,
    _range,
    check_generation,
    check_id,
    check_key_size,
    parse_config,
)
from fedlora.errors import ConfigError, FedLoraError

COORDINATOR = "coordinator"
REQUEST_FORMAT = "fedlora-request-1"
SIGNING_KEY, TRANSPORT_KEY, TLS_KEY = "signing.ed25519", "transport.x25519", "tls.key"
CA_FILE, CERT_FILE, THRESHOLD_KEY, SHARE_FILE = (
    "ca.pem",
    "tls.pem",
    "threshold-key.json",
    "share.json",
)
REVOCATIONS = "revocations.json"


@dataclass(frozen=True)
class ProjectCoordinator:
    """Where the coordinator serves: ``address`` is what clients dial (HOST:PORT)."""

    address: str
    listen: str = "0.0.0.0:50051"
    hosts: tuple[str, ...] = ()  # more names or IPs for its certificate


@dataclass(frozen=True)
class ProjectParty:
    id: str = field(metadata=_range(pattern=None))
    role: Literal["bank", "hospital", "other"] = "bank"
    holds_share: bool = True  # a decryptor: holds a share of the threshold key


@dataclass(frozen=True)
class ProjectKeys:
    """``generation``: ``holders`` (the default) — the share holders generate the threshold key
    together when the federation first starts, relayed by the coordinator, so nobody (the
    organizer included) ever knows its factorization; needs ``ℓ ≥ 2t − 1`` holders.
    ``dealer`` — the organizer deals it at build time, and must be trusted to forget it."""

    bits: int = field(default=2048, metadata=_range(512, 8192))
    certificate_days: int = field(default=365, metadata=_range(1, 3650))
    generation: Literal["holders", "dealer"] = "holders"


@dataclass(frozen=True)
class Project:
    """The project file: the federation as its members agreed it."""

    federation_id: str
    coordinator: ProjectCoordinator
    parties: tuple[ProjectParty, ...]
    model: ModelSpec
    federated_learning: FederatedLearning = field(default_factory=FederatedLearning)
    codec: CodecConfig = field(default_factory=CodecConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    keys: ProjectKeys = field(default_factory=ProjectKeys)
    testing: TestingOptions = field(default_factory=TestingOptions)

    def role_of(self, site: str) -> str:
        if site == COORDINATOR:
            return COORDINATOR
        party = next((p for p in self.parties if p.id == site), None)
        if party is None:
            raise ConfigError(
                f"{site!r} is not in the project's parties ({', '.join(self.ids)}) nor the "
                f"{COORDINATOR!r}"
            )
        return party.role

    @property
    def ids(self) -> list[str]:
        return [p.id for p in self.parties]


def load_project(path: Path) -> Project:
    """Read and check a project file.

    Raises:
        ConfigError: any invalid key (the dotted name), duplicate ids, thresholds that do not
            fit the parties, or an id that cannot name a file.
    """
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"project file {path}: {exc.strerror}") from None
    project = parse_config(Project, text, base=path.parent.resolve(), source=str(path))
    check_id(project.federation_id, "federation_id")
    ids = project.ids
    for i, pid in enumerate(ids):
        check_id(pid, f"parties[{i}].id")
        if pid == COORDINATOR:
            raise ConfigError(f"parties[{i}].id: {COORDINATOR!r} is the coordinator's site name")
    if len(set(ids)) != len(ids):
        raise ConfigError("parties: a party is listed twice")
    holders = [p.id for p in project.parties if p.holds_share]
    fl = project.federated_learning
    if fl.participant_threshold > len(ids):
        raise ConfigError(
            f"federated_learning.participant_threshold: {fl.participant_threshold} exceeds the "
            f"{len(ids)} parties"
        )
    if fl.decryption_threshold > len(holders):
        raise ConfigError(
            f"federated_learning.decryption_threshold: {fl.decryption_threshold} exceeds the "
            f"{len(holders)} share holders"
        )
    if project.keys.generation == "holders":
        try:
            check_generation(
                "keys.generation", holders, fl.decryption_threshold, set(ids), "parties"
            )
        except ConfigError as exc:
            raise ConfigError(
                f"{exc} (or set keys.generation: dealer, which trusts the organizer)"
            ) from None
    if project.model.kind == "linear" or project.model.base_model is None:
        raise ConfigError(
            "model: provisioning is for LoRA federations (kind tabular or text, with base_model)"
        )
    check_key_size(project.keys.bits, project.testing, "keys.bits")
    host, sep, port = project.coordinator.address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ConfigError(
            f"coordinator.address: {project.coordinator.address!r} must be HOST:PORT, the address "
            "clients dial"
        )
    return project


def _pem(key: Any) -> bytes:
    return bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def _hosts(project: Project) -> list[str]:
    host = project.coordinator.address.rpartition(":")[0].strip("[]")
    return list(dict.fromkeys([host, *project.coordinator.hosts]))


# -- 1. a site's keys and request ----------------------------------------------------------------


def init_site(project: Project, site_id: str, folder: Path) -> Path:
    """Make a site's private keys in ``folder`` and write its request; return the request's path.

    Raises:
        ConfigError: an id the project does not know.
        FedLoraError: the site already has keys (they are never replaced).
    """
    role = project.role_of(site_id)
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o700)
    signing = Ed25519PrivateKey.generate()
    tls = ec.generate_private_key(ec.SECP256R1())
    write_new_file(folder / SIGNING_KEY, _pem(signing), mode=0o600)
    write_new_file(folder / TLS_KEY, _pem(tls), mode=0o600)
    request: dict[str, Any] = {
        "format": REQUEST_FORMAT,
        "federation_id": project.federation_id,
        "id": site_id,
        "role": role,
        "signing_public_key": signing.public_key()
        .public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        .hex(),
    }
    if site_id != COORDINATOR:
        transport = X25519PrivateKey.generate()
        write_new_file(folder / TRANSPORT_KEY, _pem(transport), mode=0o600)
        request["x25519_public_key"] = (
            transport.public_key()
            .public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
            .hex()
        )
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, site_id)])
    )
    csr = builder.sign(tls, hashes.SHA256())
    request["csr"] = csr.public_bytes(serialization.Encoding.PEM).decode()
    path = folder / f"{site_id}.request.json"
    write_new_file(path, (json.dumps(request, indent=2) + "\n").encode())
    return path


@dataclass(frozen=True)
class Request:
    site: str
    role: str
    signing_public_key: str
    x25519_public_key: str | None
    csr: x509.CertificateSigningRequest


def read_request(path: Path, project: Project) -> Request:
    """Parse and check one site's request.

    Raises:
        ConfigError: not a request, another federation, an unknown site or role, malformed
            keys, or a certificate request not signed by its key or for another name.
    """
    where = f"request {path}"
    try:
        doc = json.loads(read_file(path, "request"))
        site, role, signing = doc["id"], doc["role"], doc["signing_public_key"]
        if doc.get("format") != REQUEST_FORMAT or not all(
            isinstance(v, str) for v in (site, role, signing)
        ):
            raise TypeError
        csr = x509.load_pem_x509_csr(doc["csr"].encode())
    except FedLoraError as exc:
        raise ConfigError(str(exc)) from None
    except (ValueError, KeyError, TypeError, AttributeError):
        raise ConfigError(f"{where} is not a fedlora site request") from None
    if doc.get("federation_id") != project.federation_id:
        raise ConfigError(
            f"{where} is for federation {doc.get('federation_id')!r}, not {project.federation_id!r}"
        )
    expected_role = project.role_of(site)
    if role != expected_role:
        raise ConfigError(
            f"{where}: {site!r} asks for role {role!r}, the project says {expected_role!r}"
        )
    try:
        if len(bytes.fromhex(signing)) != 32:
            raise ValueError
        x25519 = doc.get("x25519_public_key")
        if site != COORDINATOR:
            X25519PublicKey.from_public_bytes(bytes.fromhex(x25519))
    except (ValueError, TypeError):
        raise ConfigError(f"{where}: malformed public keys") from None
    if not csr.is_signature_valid:
        raise ConfigError(f"{where}: the certificate request is not signed by its key")
    names = [a.value for a in csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    if names != [site]:
        raise ConfigError(f"{where}: the certificate request is for {names}, not {site!r}")
    return Request(site, role, signing, x25519 if site != COORDINATOR else None, csr)


# -- 2. the organizer's build --------------------------------------------------------------------


def build_kits(project: Project, project_path: Path, requests: Path, ca: Path, out: Path) -> Path:
    """Sign, deal and write one kit per site under ``out``; return the checklist's path.

    Raises:
        ConfigError: a missing or invalid request, or a kit folder that exists already.
    """
    from fedlora.ceremony import deal_sealed_key
    from fedlora.client._spec import write_model_template

    sites = [COORDINATOR, *project.ids]
    found: dict[str, Request] = {}
    for path in sorted(requests.glob("*.request.json")):
        req = read_request(path, project)
        if req.site in found:
            raise ConfigError(f"two requests for {req.site!r} in {requests}")
        found[req.site] = req
    missing = [s for s in sites if s not in found]
    if missing:
        raise ConfigError(
            f"no request from {', '.join(missing)} in {requests}: each site runs `fedlora "
            "provision init` and sends its <id>.request.json"
        )
    keys = [found[s].signing_public_key for s in sites]
    if len(set(keys)) != len(keys):
        raise ConfigError("two requests carry the same signing key")
    for site in sites:
        if (out / site).exists():
            raise ConfigError(f"{out / site} exists already; build into a new folder")
    if not (ca / "ca.key").exists():
        create_ca(ca, name=f"{project.federation_id} federation CA")
    check_private(ca / "ca.key", "the CA key")
    # Shares are dealt to the holders, sealed to their own X25519 keys (only they can open them),
    # unless the holders generate the key themselves at first start.
    holders = {
        p.id: X25519PublicKey.from_public_bytes(bytes.fromhex(found[p.id].x25519_public_key or ""))
        for p in project.parties
        if p.holds_share
    }
    sealed = None
    if project.keys.generation == "dealer":
        sealed = deal_sealed_key(
            holders, project.federated_learning.decryption_threshold, project.keys.bits
        )
    out.mkdir(parents=True, exist_ok=True)
    coordinator_dir = out / COORDINATOR
    template = coordinator_dir / "adapter-template"
    template.mkdir(parents=True)
    layout = write_model_template(project.model, project.training, template)
    ca_pem = read_file(ca / "ca.pem", "CA certificate")
    days = project.keys.certificate_days
    for site in sites:
        kit = out / site
        kit.mkdir(parents=True, exist_ok=True)
        hosts = _hosts(project) if site == COORDINATOR else []
        cert = sign_request(ca, found[site].csr, site, server_hosts=hosts, valid_days=days)
        write_new_file(kit / CERT_FILE, cert)
        write_new_file(kit / CA_FILE, ca_pem)
        if sealed is not None:
            write_new_file(kit / THRESHOLD_KEY, sealed.public_key.to_json())
            if site in sealed.sealed_shares:
                write_new_file(kit / SHARE_FILE, sealed.sealed_shares[site], mode=0o600)
    coordinator_key = found[COORDINATOR].signing_public_key
    write_new_file(
        coordinator_dir / "coordinator.yaml",
        _yaml(_coordinator_doc(project, found, int(layout["num_parameters"]))),
    )
    base = project.model.base_model
    assert base is not None
    # A base model shipped in a Python package is named the portable way; a folder is copied.
    raw = (yaml.safe_load(project_path.read_text()).get("model") or {}).get("base_model", "")
    packaged = raw if isinstance(raw, str) and raw.startswith("package:") else None
    for pid in project.ids:
        kit = out / pid
        doc = _client_doc(project, pid, found, coordinator_key, packaged)
        write_new_file(kit / f"{pid}.yaml", _yaml(doc))
        if packaged is None:
            shutil.copytree(base, kit / "base-model")
    checklist = out / "CHECKLIST.md"
    write_new_file(checklist, _checklist(project, project_path, out).encode())
    return checklist


def _yaml(doc: dict[str, Any]) -> bytes:
    head = "# Written by `fedlora provision build`; check it with `fedlora config check`.\n"
    return (head + str(yaml.safe_dump(doc, sort_keys=False))).encode()


def _plain(obj: Any) -> Any:
    """A config dataclass as YAML-ready data (paths as strings, tuples as lists, Nones dropped)."""
    import dataclasses

    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {
            f.name: _plain(getattr(obj, f.name))
            for f in dataclasses.fields(obj)
            if getattr(obj, f.name) is not None
        }
    if isinstance(obj, tuple):
        return [_plain(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def _coordinator_doc(
    project: Project, found: dict[str, Request], num_parameters: int
) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "federation_id": project.federation_id,
        "state_dir": "state",
        "keys": {"threshold_public_key": THRESHOLD_KEY, "signing_key": SIGNING_KEY},
        "model": {"num_parameters": num_parameters, "adapter_template": "adapter-template"},
        "server": {
            "listen": project.coordinator.listen,
            "tls": {"ca": CA_FILE, "cert": CERT_FILE, "key": TLS_KEY},
            "revocations": REVOCATIONS,
        },
        "federated_learning": _plain(project.federated_learning),
        "codec": _plain(project.codec),
        "parties": [
            {"id": p.id, "role": p.role, "signing_public_key": found[p.id].signing_public_key}
            for p in project.parties
        ],
    }
    if project.keys.generation == "holders":
        doc["keys"]["generation"] = {
            "holders": [p.id for p in project.parties if p.holds_share],
            "bits": project.keys.bits,
        }
    if project.testing.insecure_small_keys:
        doc["testing"] = {"insecure_small_keys": True}
    return doc


def _client_doc(
    project: Project,
    pid: str,
    found: dict[str, Request],
    coordinator_key: str,
    packaged: str | None,
) -> dict[str, Any]:
    model = _plain(project.model)
    model["base_model"] = packaged or "base-model"
    party = next(p for p in project.parties if p.id == pid)
    doc: dict[str, Any] = {
        "id": pid,
        "role": party.role,
        "federation_id": project.federation_id,
        "state_dir": "state",
        "coordinator": {
            "address": project.coordinator.address,
            "tls": {"ca": CA_FILE, "cert": CERT_FILE, "key": TLS_KEY},
        },
        "keys": {
            "signing_key": SIGNING_KEY,
            "x25519_key": TRANSPORT_KEY,
            "key_share": SHARE_FILE,
            "threshold_public_key": THRESHOLD_KEY,
            "coordinator_signing_public_key": coordinator_key,
        },
        "peers": [
            {"id": p.id, "signing_public_key": found[p.id].signing_public_key}
            for p in project.parties
        ],
        "policy": {"min_participants": project.federated_learning.participant_threshold},
        "data": {"path": "data.csv" if project.model.kind == "tabular" else "data.jsonl"},
        "model": model,
        "training": _plain(project.training),
    }
    if project.keys.generation == "holders":
        doc["keys"]["generation"] = {
            "threshold": project.federated_learning.decryption_threshold,
            "bits": project.keys.bits,
            "holders": [
                {"id": p.id, "x25519_public_key": found[p.id].x25519_public_key}
                for p in project.parties
                if p.holds_share
            ],
        }
    if project.testing.insecure_small_keys:
        doc["testing"] = {"insecure_small_keys": True}
    return doc


def _checklist(project: Project, project_path: Path, out: Path) -> str:
    data = "data.csv" if project.model.kind == "tabular" else "data.jsonl"
    lines = [
        f"# Provisioning checklist — federation `{project.federation_id}`",
        "",
        f"Built from `{project_path}`. Kits are in `{out}/<site>/`. No kit holds a private key:",
        "every site made its own with `fedlora provision init`, and they never left it.",
        "",
        "| send | from | to | how |",
        "|---|---|---|---|",
        f"| `{out}/coordinator/` | organizer | coordinator's operator | any channel (public files) |",
    ]
    for pid in project.ids:
        how = (
            "any channel (public files)"
            if project.keys.generation == "holders"
            else f"any channel (its `{SHARE_FILE}` is sealed to the party's own key)"
        )
        lines.append(f"| `{out}/{pid}/` | organizer | {pid}'s operator | {how} |")
    if project.keys.generation == "holders":
        lines += [
            "",
            "No threshold key was dealt: the share holders generate it together when the "
            "coordinator and they first start (relayed by the coordinator, which cannot read "
            "their messages); every member accepts it only with a quorum of holders' signatures.",
        ]
    lines += [
        "",
        "Then, at every site (`SITE` is the folder where it ran `provision init`):",
        "",
        "1. `fedlora provision install --kit <kit folder> --site SITE` — checks the kit against "
        "the site's own keys.",
    ]
    lines += [
        f"2. Parties: put the training data at `SITE/{data}` (the base model's columns, any order), "
        "or point `data.path` at it.",
        "3. `fedlora config check SITE/<id>.yaml` — every file, certificate and key is checked.",
        "4. Coordinator: `fedlora coordinator --config SITE/coordinator.yaml`; parties: "
        "`fedlora client --config SITE/<id>.yaml`.",
        "5. After the last round, each party has every global adapter in `SITE/state/models/`; "
        "`fedlora export --config SITE/<id>.yaml --out DIR` writes the final one.",
        "",
        "To revoke a party: `fedlora provision revoke --project PROJECT --ca CA --party ID --out "
        f"revocations.json`, and send the file to the coordinator (`SITE/{REVOCATIONS}`); it is "
        "reloaded within a call.",
        "",
    ]
    return "\n".join(lines)


# -- 3. a site installs its kit ------------------------------------------------------------------


def renew_certificate(project: Project, request: Path, ca: Path, out: Path) -> tuple[str, str]:
    """At the organizer: a new certificate for a site's TLS key, from the site's own request.

    The request (``<id>.request.json`` from ``provision init``) holds a certificate request
    signed by the site's TLS key; signing it again gives a fresh certificate for the same key,
    valid ``keys.certificate_days`` from now, so no private key moves and no other key changes.
    Returns the site id and the new expiry date.

    Raises:
        ConfigError: the request is not this federation's, or ``out`` exists already.
    """
    req = read_request(request, project)
    hosts = _hosts(project) if req.site == COORDINATOR else []
    pem = sign_request(
        ca, req.csr, req.site, server_hosts=hosts, valid_days=project.keys.certificate_days
    )
    try:
        write_new_file(out, pem)
    except FedLoraError as exc:
        raise ConfigError(f"--out: {exc}") from None
    cert = x509.load_pem_x509_certificate(pem)
    return req.site, str(cert.not_valid_after_utc.date())


def install_certificate(site: Path, cert: Path) -> str:
    """At a site: put a renewed certificate in place of ``SITE/tls.pem``, after checking it is
    the federation CA's, for this site's id, valid now and for this site's own TLS key. The old
    one is kept as ``tls.pem.old``. Returns what was checked.

    Raises:
        ConfigError: not a site folder, or the certificate fails a check (nothing is replaced).
    """
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    from fedlora.certs import check_certificate

    requests = sorted(site.glob("*.request.json"))
    if len(requests) != 1 or not (site / TLS_KEY).exists():
        raise ConfigError(f"{site} is not a site folder (run `fedlora provision init` there)")
    site_id = requests[0].name.removesuffix(".request.json")
    checked = check_certificate(
        cert, site / CA_FILE, str(cert), name=None if site_id == COORDINATOR else site_id
    )
    key = load_pem_private_key(read_file(site / TLS_KEY, "TLS key"), None)
    if checked.public_key().public_numbers() != key.public_key().public_numbers():  # type: ignore[union-attr]
        raise ConfigError(
            f"{cert} is not a certificate for {site / TLS_KEY}: it certifies another key"
        )
    if site_id == COORDINATOR:
        names = [a.value for a in checked.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
        if names != [COORDINATOR]:
            raise ConfigError(f"{cert} is issued to {names}, not {COORDINATOR!r}")
    current = site / CERT_FILE
    if current.exists():
        replace_file(site / f"{CERT_FILE}.old", current.read_bytes())
    replace_file(current, read_file(cert, "certificate"))
    return f"{site_id}'s certificate replaced: valid until {checked.not_valid_after_utc.date()}"


def install_kit(kit: Path, site: Path) -> tuple[str, list[str]]:
    """Copy a kit into a site folder and check it against the site's own keys.

    Returns the site id and what was checked.

    Raises:
        ConfigError: the kit is not for this site, or a file in it does not fit the site's keys.
    """
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    from fedlora.certs import check_certificate
    from fedlora.crypto import ThresholdPublicKey, open_key_share

    configs = sorted(kit.glob("*.yaml"))
    if len(configs) != 1:
        raise ConfigError(f"{kit} is not a fedlora kit (it should hold one <id>.yaml)")
    config_name = configs[0].name
    site_id = configs[0].stem
    if not (site / f"{site_id}.request.json").exists():
        raise ConfigError(
            f"{site} did not request this kit: it has no {site_id}.request.json (run `fedlora "
            f"provision init --id {site_id}` there first, or give the right --site)"
        )
    for path in sorted(kit.rglob("*")):
        target = site / path.relative_to(kit)
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        if target.exists() and target.read_bytes() != path.read_bytes():
            raise ConfigError(f"{target} exists and differs from the kit's; refusing to overwrite")
        if not target.exists():
            shutil.copy2(path, target)
    checked = [f"copied {kit} into {site}"]
    doc = yaml.safe_load((site / config_name).read_text())
    cert = check_certificate(
        site / CERT_FILE,
        site / CA_FILE,
        str(site / CERT_FILE),
        name=None if site_id == COORDINATOR else site_id,
    )
    key = load_pem_private_key(read_file(site / TLS_KEY, "TLS key"), None)
    if cert.public_key().public_numbers() != key.public_key().public_numbers():  # type: ignore[union-attr]
        raise ConfigError(f"{site / CERT_FILE} is not the certificate for {site / TLS_KEY}")
    checked.append(
        f"certificate valid until {cert.not_valid_after_utc.date()}, matches the site's TLS key"
    )
    signing = load_pem_private_key(read_file(site / SIGNING_KEY, "signing key"), None)
    own = (
        signing.public_key()
        .public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        .hex()
    )
    if site_id == COORDINATOR:
        listed = None
    else:
        listed = next((p["signing_public_key"] for p in doc["peers"] if p["id"] == site_id), None)
        if listed != own:
            raise ConfigError(
                f"{config_name}: the peers list pins another signing key for {site_id!r}"
            )
        checked.append("signing key is the one every peer pins")
        if not (site / THRESHOLD_KEY).exists():
            checked.append(
                "threshold key: the holders generate it at first start (keys.generation)"
            )
            return site_id, checked
        public = ThresholdPublicKey.from_json(read_file(site / THRESHOLD_KEY, "threshold key"))
        if (site / SHARE_FILE).exists():
            transport = load_pem_private_key(read_file(site / TRANSPORT_KEY, "transport key"), None)
            open_key_share(
                read_file(site / SHARE_FILE, "key share"),
                transport,  # type: ignore[arg-type]
                party_id=site_id,
                public_key=public,
            )
            checked.append(f"key share opens ({public.threshold}-of-{public.parties} key)")
    return site_id, checked
