"""A lying ServerApp: the final global model of a finished federation, in an ordinary Flower
train message to every SuperNode. It writes what came back to the run config's ``out``."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.serverapp import Grid, ServerApp

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    folder = Path(str(context.run_config["fedlora-dir"]))
    final = np.load(folder / "flower-final-adapter.npy")  # what the example's ServerApp saved
    deadline = time.monotonic() + 60
    while len(list(grid.get_node_ids())) < int(context.run_config["nodes"]):
        if time.monotonic() > deadline:
            break
        time.sleep(0.5)
    messages = [
        Message(
            RecordDict(
                {
                    "arrays": ArrayRecord({"adapter": Array(final)}),
                    "config": ConfigRecord({"server-round": 3, "local-steps": 5}),
                }
            ),
            dst_node_id=node,
            message_type=MessageType.TRAIN,
        )
        for node in grid.get_node_ids()
    ]
    out = []
    for reply in grid.send_and_receive(messages, timeout=120):
        content = None if reply.has_error() else reply.content
        out.append(
            {
                "node": reply.metadata.src_node_id,
                "error": reply.error.reason if reply.has_error() else None,
                "arrays": [] if content is None else list(content.array_records),
                "metrics": [] if content is None else list(content.metric_records),
            }
        )
    Path(str(context.run_config["out"])).write_text(json.dumps(out))
