"""fedlora.demo — the two demos: a whole federation on loopback (:mod:`.federation`) and one
encrypted round in process (:mod:`.crypto`). Application layer: uses both roles."""
