"""The adapter-template format shared by the client (writes it) and the coordinator (reads it)."""

from __future__ import annotations

__all__ = ["LAYOUT_FILE", "LAYOUT_FORMAT", "WEIGHTS_FILE"]

LAYOUT_FILE = "fedlora_layout.json"
LAYOUT_FORMAT = "fedlora-adapter-layout/1"
WEIGHTS_FILE = "adapter_model.safetensors"  # peft's file name
