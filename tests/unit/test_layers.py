"""Layer contracts (docs/architecture.md, STYLE.md §17): who may import whom, read from the source.

errors ← crypto ← {events, audit, config, ceremony} ← protocol ← {coordinator, client} ← rpc and
the gRPC adapters ← cli/demo/inprocess. Each rule below holds today and fails the build the day a
change breaks it (imports inside functions count: the source is read, not the import graph).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import fedlora

SRC = Path(fedlora.__file__).parent
HEAVY = ("torch", "peft", "transformers")
# fedlora.rpc converts to and from the generated messages: importing it loads grpc and protobuf.
GRPC = ("grpc", "grpc_health", "grpc_reflection", "fedlora.v1", "fedlora.rpc")


def _names() -> list[str]:
    return sorted(
        ".".join(p.relative_to(SRC.parent).with_suffix("").parts).removesuffix(".__init__")
        for p in SRC.rglob("*.py")
    )


def _modules() -> dict[str, set[str]]:
    """Each module and what it imports; ``from fedlora import rpc`` counts as ``fedlora.rpc``."""
    known = set(_names())
    out = {}
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC.parent).with_suffix("")
        if "v1" in rel.parts:
            continue
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                subs = {f"{node.module}.{a.name}" for a in node.names}
                names |= (subs & known) or {node.module}
                if not subs <= known:
                    names.add(node.module)
        out[".".join(rel.parts).removesuffix(".__init__")] = names
    return out


MODULES = _modules()


def _uses(names: set[str], prefixes: tuple[str, ...]) -> list[str]:
    return sorted(n for n in names if any(n == p or n.startswith(p + ".") for p in prefixes))


def _in(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


@pytest.mark.parametrize("module", [m for m in MODULES if _in(m, "fedlora.crypto")])
def test_crypto_is_pure(module) -> None:
    allowed = ("fedlora.crypto", "fedlora.errors")
    outside = [n for n in MODULES[module] if n.startswith("fedlora") and not _uses({n}, allowed)]
    assert not outside and not _uses(MODULES[module], HEAVY + GRPC), module


@pytest.mark.parametrize("module", [m for m in MODULES if _in(m, "fedlora.protocol")])
def test_the_protocol_is_pure_and_shared(module) -> None:
    allowed = (
        "fedlora.protocol",
        "fedlora.crypto",
        "fedlora.errors",
        "fedlora.audit",
        "fedlora.events",
        "fedlora.config",  # the client's policy types, read by check_join
    )
    outside = [n for n in MODULES[module] if n.startswith("fedlora") and not _uses({n}, allowed)]
    assert not outside and not _uses(MODULES[module], HEAVY + GRPC), (module, outside)


FOUNDATION = [
    "fedlora.errors",
    "fedlora.config",
    "fedlora.audit",
    "fedlora.events",
    "fedlora.certs",
    "fedlora._files",
    *[m for m in MODULES if _in(m, "fedlora.ceremony")],
]


@pytest.mark.parametrize("module", FOUNDATION)
def test_the_foundation_imports_no_protocol_role_transport_or_torch(module) -> None:
    above = ("fedlora.client", "fedlora.coordinator", "fedlora.protocol", "fedlora.rpc")
    assert not _uses(MODULES[module], HEAVY + GRPC + above), module


def test_client_and_coordinator_never_import_each_other() -> None:
    for module, names in MODULES.items():
        if _in(module, "fedlora.client"):
            assert not _uses(names, ("fedlora.coordinator",)), module
        if _in(module, "fedlora.coordinator"):
            assert not _uses(names, ("fedlora.client",)), module


def test_generated_protobuf_and_grpc_only_in_the_grpc_adapters() -> None:
    adapters = {
        "fedlora.rpc",  # every conversion, both directions
        "fedlora.coordinator._server",
        "fedlora.coordinator._servicer",
        "fedlora.client._grpc",
        # The Flower adapters carry the same protobuf messages inside Flower's records.
        "fedlora.flower._client",
        "fedlora.flower._server",
        "fedlora.flower._nodes",
        "fedlora.flower._decrypting",
    }
    users = {m for m, names in MODULES.items() if _uses(names, GRPC)}
    assert users <= adapters, sorted(users - adapters)
    assert "fedlora.rpc" in users and "fedlora.client._grpc" in users  # the rule is not vacuous


def test_torch_stays_in_client_training() -> None:
    allowed = {"fedlora.client._lora", "fedlora.client._causal", "fedlora.client._training"}
    users = {m for m, names in MODULES.items() if _uses(names, HEAVY)}
    assert users == allowed, sorted(users ^ allowed)


def test_a_coordinator_or_an_auditor_runs_without_torch(tmp_path) -> None:
    # In a fresh interpreter where torch, peft and transformers cannot be imported at all (a
    # coordinator-only install), the coordinator, the protocol and the offline audit commands load.
    import subprocess
    import sys

    script = """
import sys
for name in ("torch", "peft", "transformers"):
    sys.modules[name] = None  # as if not installed: importing it raises ImportError
import fedlora.coordinator, fedlora.audit, fedlora.config, fedlora.crypto, fedlora.protocol
from fedlora.coordinator import Coordinator, Driver, build_engine
from fedlora.cli import build_parser, main
build_parser()
try:
    main(["audit", "verify", "--help"])
except SystemExit as exit:
    assert exit.code == 0
assert main(["audit", "verify", sys.argv[1], "--public-key", "00" * 32]) == 2  # a missing log
# The client says in one line what is missing and how to install it.
assert main(["client", "--config", sys.argv[1]]) == 2
loaded = [m for m, v in sys.modules.items() if v is not None and m.split(".")[0] in ("torch", "peft", "transformers")]
assert not loaded, loaded
print("ok")
"""
    out = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "no-such-log")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stdout + out.stderr
    assert "pip install 'fedlora[client]'" in out.stderr and "Traceback" not in out.stderr


# The roles decide; the adapters carry their messages (gRPC, Flower, in process); the composition
# roots wire one to the other. A role never reaches for an adapter.
ROLES = [
    m
    for m in MODULES
    if (_in(m, "fedlora.coordinator") or _in(m, "fedlora.client"))
    and m
    not in {
        "fedlora.coordinator",  # the package: exports the server for its users
        "fedlora.coordinator._server",
        "fedlora.coordinator._servicer",
        "fedlora.client",  # the package: exports GrpcTransport lazily
        "fedlora.client._grpc",
        "fedlora.client._connect",  # the one place a networked client gets gRPC
    }
]
ADAPTERS = (
    "fedlora.rpc",
    "fedlora.coordinator._server",
    "fedlora.coordinator._servicer",
    "fedlora.client._grpc",
    "fedlora.flower",
    "fedlora.inprocess",
)


@pytest.mark.parametrize("module", ROLES)
def test_a_role_never_imports_an_adapter(module) -> None:
    assert not _uses(MODULES[module], ADAPTERS + GRPC), (module, _uses(MODULES[module], ADAPTERS))


def test_the_flower_server_uses_no_client_transport() -> None:
    assert not _uses(MODULES["fedlora.flower._server"], ("fedlora.client",))


def test_crypto_modules_form_no_import_cycle() -> None:
    """A cycle among crypto's modules (the factory and the backends it chooses, once) means an
    import order that works by accident; the graph is read from the source, as above."""
    crypto = {m for m in MODULES if _in(m, "fedlora.crypto") and m != "fedlora.crypto"}
    graph = {m: {n for n in MODULES[m] if n in crypto} for m in crypto}
    done: set[str] = set()

    def visit(m: str, path: tuple[str, ...]) -> None:
        assert m not in path, " → ".join((*path[path.index(m) :], m))
        if m in done:
            return
        for n in sorted(graph[m]):
            visit(n, (*path, m))
        done.add(m)

    for m in sorted(crypto):
        visit(m, ())
    assert graph["fedlora.crypto._factory"]  # the rule sees the factory's imports: not vacuous


def test_importing_the_client_loads_no_grpc() -> None:
    """A member on Flower, or a test in process, imports fedlora.client without gRPC."""
    import subprocess
    import sys

    script = (
        "import sys, fedlora.client\n"
        "loaded = [m for m in sys.modules if m.split('.')[0] == 'grpc' or m == 'fedlora.rpc']\n"
        "assert not loaded, loaded\n"
        "from fedlora.client import GrpcTransport  # still there, on first use\n"
        "assert 'grpc' in sys.modules\n"
        "print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "ok", out.stdout + out.stderr
