"""Certificate renewal by the site's own request: no private key moves, and a site installs only
a certificate that is the federation CA's, for its id and for its own key."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from fedlora.certs import create_ca
from fedlora.errors import ConfigError
from fedlora.provision import install_certificate


def _fedlora(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fedlora", *args], capture_output=True, text=True, timeout=120
    )


@pytest.fixture()
def federation(tmp_path: Path) -> Path:
    (tmp_path / "project.yaml").write_text(
        yaml.safe_dump(
            {
                "federation_id": "renewal-test",
                "coordinator": {"address": "localhost:50061"},
                "parties": [{"id": "bank-a", "role": "bank"}, {"id": "bank-b", "role": "bank"}],
                "model": {"kind": "tabular", "base_model": "base-model"},
                "training": {"num_classes": 2},
                "federated_learning": {"participant_threshold": 2, "decryption_threshold": 2},
                # two parties, a 2-of-2 key: too few holders to generate it, so it is dealt
                "keys": {"certificate_days": 30, "generation": "dealer"},
            }
        )
    )
    create_ca(tmp_path / "ca")
    for site in ("bank-a", "bank-b"):
        out = _fedlora(
            "provision",
            "init",
            "--project",
            str(tmp_path / "project.yaml"),
            "--id",
            site,
            "--site",
            str(tmp_path / site),
        )
        assert out.returncode == 0, out.stderr
        (tmp_path / site / "ca.pem").write_bytes((tmp_path / "ca" / "ca.pem").read_bytes())
    return tmp_path


def _renew(root: Path, site: str, out: Path, ca: str = "ca") -> subprocess.CompletedProcess[str]:
    return _fedlora(
        "provision",
        "renew",
        "--project",
        str(root / "project.yaml"),
        "--ca",
        str(root / ca),
        "--request",
        str(root / site / f"{site}.request.json"),
        "--out",
        str(out),
    )


def test_a_site_renews_its_certificate_without_moving_a_key(federation: Path) -> None:
    root = federation
    keys_before = {p.name: p.read_bytes() for p in (root / "bank-a").iterdir()}
    renewed = _renew(root, "bank-a", root / "bank-a-new.pem")
    assert renewed.returncode == 0, renewed.stderr
    (root / "bank-a" / "tls.pem").write_text("the expiring certificate\n")
    installed = _fedlora(
        "provision",
        "install-cert",
        "--site",
        str(root / "bank-a"),
        "--cert",
        str(root / "bank-a-new.pem"),
    )
    assert installed.returncode == 0, installed.stderr
    assert "bank-a's certificate replaced: valid until" in " ".join(
        (installed.stdout + installed.stderr).split()
    )
    assert (root / "bank-a" / "tls.pem").read_bytes() == (root / "bank-a-new.pem").read_bytes()
    assert (root / "bank-a" / "tls.pem.old").read_text() == "the expiring certificate\n"
    # Every key file is as it was; the organizer never saw one.
    for name, data in keys_before.items():
        if name != "tls.pem":
            assert (root / "bank-a" / name).read_bytes() == data, name
    cert = x509.load_pem_x509_certificate((root / "bank-a" / "tls.pem").read_bytes())
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "bank-a"


def test_a_certificate_not_for_this_site_its_key_or_its_ca_is_refused(federation: Path) -> None:
    root = federation
    original = b"current certificate\n"
    (root / "bank-a" / "tls.pem").write_bytes(original)
    # Another site's certificate (the organizer sent the wrong file).
    assert _renew(root, "bank-b", root / "bank-b.pem").returncode == 0
    with pytest.raises(ConfigError, match=r"bank-b"):
        install_certificate(root / "bank-a", root / "bank-b.pem")
    # A certificate for bank-a's name but an attacker's key, signed by the federation CA.
    from fedlora.certs import sign_request

    attacker = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bank-a")]))
        .sign(attacker, hashes.SHA256())
    )
    (root / "forged.pem").write_bytes(sign_request(root / "ca", csr, "bank-a"))
    with pytest.raises(ConfigError, match="certifies another key"):
        install_certificate(root / "bank-a", root / "forged.pem")
    # A certificate for bank-a's own key from another CA.
    create_ca(root / "other-ca")
    assert _renew(root, "bank-a", root / "other.pem", ca="other-ca").returncode == 0
    with pytest.raises(ConfigError, match="CA"):
        install_certificate(root / "bank-a", root / "other.pem")
    # Nothing was replaced by any of them.
    assert (root / "bank-a" / "tls.pem").read_bytes() == original
    assert not (root / "bank-a" / "tls.pem.old").exists()
    # And a request from another federation is refused at the organizer.
    doc = json.loads((root / "bank-a" / "bank-a.request.json").read_text())
    doc["federation_id"] = "elsewhere"
    (root / "foreign.request.json").write_text(json.dumps(doc))
    out = _fedlora(
        "provision",
        "renew",
        "--project",
        str(root / "project.yaml"),
        "--ca",
        str(root / "ca"),
        "--request",
        str(root / "foreign.request.json"),
        "--out",
        str(root / "x.pem"),
    )
    assert out.returncode == 2 and "is for federation 'elsewhere'" in out.stderr
