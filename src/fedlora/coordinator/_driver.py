"""The coordinator's clock: calls :meth:`Coordinator.tick` until stopped.

Separate from any transport, so the gRPC server, an in-process federation and a push-style
(Flower) workflow drive the same engine the same way. The engine's deadlines read the engine's
own clock; tests drive it with an injected clock and :meth:`Coordinator.tick` instead.
"""

from __future__ import annotations

import logging
import threading

from fedlora.coordinator._engine import Coordinator

log = logging.getLogger("fedlora.coordinator")


class Driver:
    """A background thread that advances the engine on deadlines and thresholds."""

    def __init__(self, engine: Coordinator, *, interval_s: float = 0.2) -> None:
        self.engine = engine
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="fedlora-rounds", daemon=True)

    def start(self) -> Driver:
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.engine.tick()
            except Exception:  # a round fault is a transition; this is a bug or a full disk
                log.exception("round processing failed; retrying at the next tick")
            self.engine.wait(self.interval_s)

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self.engine.wake()
        self._thread.join(timeout=timeout)
