"""Atomic checkpoint files: a crash or a full disk never leaves a half-written checkpoint."""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch

from maskednas.common import atomic_write


class CheckpointError(RuntimeError):
    pass


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    """Serialised in memory, then written by Python's file I/O: a write the OS refuses (a full
    disk) is an OSError naming the file, not the C++ writer's RuntimeError."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(buffer.getbuffer()))


def load_checkpoint(path: str | Path, kind: str, map_location="cpu") -> dict[str, Any]:
    """Load a checkpoint written by `save_checkpoint` (tensors and plain data only)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no {kind} checkpoint at {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{path} is not a readable {kind} checkpoint (truncated or "
                              f"corrupted?): {e}") from e
    if not isinstance(state, dict) or state.get("kind") != kind:
        found = state.get("kind") if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(f"{path} holds a {found!r} checkpoint, expected {kind!r}")
    return state


def rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
