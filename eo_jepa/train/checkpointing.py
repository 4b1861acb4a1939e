"""Full training state: written atomically, read back without unpickling arbitrary objects.

``runs/<name>/checkpoints/last.pt`` holds everything needed to continue exactly: model and
projector weights, optimiser, LR scheduler, grad scaler, the SIGReg step (inside the loss
module's state), the RNG states of Python, NumPy and torch (CPU and CUDA), the epoch, the
position inside it and the global step. It is written with ``torch.save`` to a temporary file,
fsync'ed and renamed (:func:`eo_jepa.utils.io.atomic_open`), so a kill at any moment leaves
either the previous or the new checkpoint, never half of one. Every value is a tensor, number,
string, list or dict, so :func:`load_state` can use ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from eo_jepa.errors import CheckpointError
from eo_jepa.utils.io import atomic_open

FORMAT = "eo-jepa-train-state"
VERSION = 1


def rng_state() -> dict[str, Any]:
    """The RNG states of Python, NumPy (global) and torch as tensors/lists (weights_only-safe)."""
    version, mt, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": {"version": int(version), "state": list(mt), "gauss": gauss},
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    n = state["numpy"]
    np.random.set_state(
        (n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"])
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_state(path: str | Path, state: dict[str, Any]) -> Path:
    """Write ``state`` (plus format tags) to ``path`` atomically."""
    path = Path(path)
    with atomic_open(path, "wb") as fh:
        torch.save({"format": FORMAT, "version": VERSION, **state}, fh)
    return path


def load_state(path: str | Path, map_location: Any = "cpu") -> dict[str, Any]:
    """Read a training state with ``weights_only=True``; clear errors for missing/foreign files."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"No training checkpoint at {str(path)!r}; run without --resume to start a new run."
        )
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{str(path)!r} is not a readable training checkpoint ({exc}).") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(
            f"{str(path)!r} is not an eo-jepa training state (format tag missing); "
            "use model.init=<path> to start from other weights."
        )
    return state
