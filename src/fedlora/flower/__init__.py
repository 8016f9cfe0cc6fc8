"""fedlora on Flower: threshold-Paillier secure aggregation as a ClientApp mod and a strategy.

Client: ``ClientApp(mods=[fedlora_mod])``; server: ``FedloraStrategy(FedAvg(...),
"coordinator.yaml").start(grid, initial_arrays, num_rounds)``. The protocol, its checks, the
audit log and the keys are the standalone product's (:mod:`fedlora.protocol`,
:class:`fedlora.coordinator.Coordinator`, :class:`fedlora.client.Client`); this package only
carries their messages in Flower's records. See docs/flower.md.
"""

from __future__ import annotations

from fedlora.flower._client import client_config_path, fedlora_mod, make_fedlora_mod
from fedlora.flower._server import FedloraStrategy

__all__ = ["FedloraStrategy", "client_config_path", "fedlora_mod", "make_fedlora_mod"]
