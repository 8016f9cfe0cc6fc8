"""One clear line, instead of a traceback, when an optional part of fedlora is not installed."""

from __future__ import annotations

import importlib.util

from fedlora.errors import FedLoraError

CLIENT = ("torch", "peft", "transformers")


def require_client_extra(what: str) -> None:
    """Raise if the ``[client]`` extra (torch, peft, transformers) is missing.

    Raises:
        FedLoraError: naming what is missing and the command that installs it.
    """
    missing = [m for m in CLIENT if importlib.util.find_spec(m) is None]
    if missing:
        raise FedLoraError(
            f"{what} needs {', '.join(missing)}, which this installation lacks (a coordinator or "
            "auditor install); install the client extra: pip install 'fedlora[client]' "
            "(or bash scripts/setup.sh, which picks the right torch build)"
        )
