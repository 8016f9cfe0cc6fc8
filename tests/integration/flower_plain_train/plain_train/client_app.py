"""An ordinary fedlora ClientApp: its training returns the updated arrays and its metrics."""

from __future__ import annotations

from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedlora.flower import fedlora_mod

app = ClientApp(mods=[fedlora_mod])


@app.train()
def train(msg: Message, context: Context) -> Message:
    arrays = msg.content["arrays"]
    updated = {k: Array(v.numpy() + 0.01) for k, v in arrays.items()}
    return Message(
        RecordDict(
            {
                "arrays": ArrayRecord(updated),
                "metrics": MetricRecord({"num-examples": 123}),
            }
        ),
        reply_to=msg,
    )
