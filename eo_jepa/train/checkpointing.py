"""Full training state: written atomically, verified by digest, read without unpickling objects.

``runs/<name>/checkpoints/last.pt`` holds everything needed to continue exactly: model and
projector weights, optimiser, LR scheduler, grad scaler, the SIGReg step (inside the loss
module's state), the RNG states of Python, NumPy and torch (CPU and CUDA), the epoch, the
position inside it and the global step. It is written with ``torch.save`` to a temporary file,
fsync'ed and renamed (:func:`eo_jepa.utils.io.atomic_open`), so a kill at any moment leaves
either the previous or the new checkpoint, never half of one. Every value is a tensor, number,
string, list or dict, so :func:`load_state` can use ``torch.load(..., weights_only=True)``.

Integrity: the sha256 of every checkpoint is recorded in ``checkpoints/digests.json`` when it is
written (before it takes its final name), and :func:`load_state` refuses a file whose digest is not
recorded there (flipped bits, a truncated copy, an edited file). The previous ``last.pt`` becomes
``prev.pt`` when a new one is in place, so a corrupted latest checkpoint costs one interval:
:func:`resume_state` falls back to ``prev.pt``. The manifest lists a digest before the file exists
and forgets it only after the file is gone, so a kill between any two steps leaves every
checkpoint on disk verifiable.

Resuming compares the requested config with the run's saved one: only keys in
:data:`SAFE_TO_CHANGE` (how long to train, how often to log and checkpoint) may differ.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from eo_jepa.config import from_dict, to_dict
from eo_jepa.errors import CheckpointError, ConfigError
from eo_jepa.train.config import TrainConfig
from eo_jepa.utils.io import atomic_open, atomic_write_json, sha256_file, tensor_bytes

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"  # <run>/checkpoints/{last,prev}.pt, step_NNNNNNN.pt, digests.json
FORMAT = "eo-jepa-train-state"
VERSION = 1
LAST = "last.pt"
PREV = "prev.pt"
DIGESTS = "digests.json"
# Config keys a resumed run may change: they say how long to train, how often to log or
# checkpoint, and what resources to use (the views do not depend on the loader's worker count),
# not what is trained. (The run's place, output_dir/name, is how it was found.)
SAFE_TO_CHANGE = (
    "max_steps",
    "epochs",
    "log.every",
    "log.rank_every",
    "log.tensorboard",
    "log.health_samples",
    "log.health_warn_fraction",
    "checkpoint.every",
    "checkpoint.keep_every",
    "data.num_workers",
    "num_threads",
    # where and how the processes run: any device or strategy resumes the same full state
    "device",
    "dist.strategy",
    "dist.backend",
)
_LOCATION_KEYS = ("output_dir", "name")


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


def _read_digests(folder: Path) -> list[dict[str, Any]]:
    """The recorded checkpoints of ``folder``: [{"file", "sha256", "step"}] ([] when none)."""
    path = folder / DIGESTS
    if not path.is_file():
        return []
    try:
        entries = json.loads(path.read_text())["checkpoints"]
        if not all(isinstance(e["sha256"], str) for e in entries):
            raise TypeError
        return list(entries)
    except (OSError, ValueError, KeyError, TypeError):
        raise CheckpointError(
            f"{str(path)!r} is damaged, so no checkpoint in {str(folder)!r} can be verified; "
            "start a new run with another name=..."
        ) from None


def _write_digests(folder: Path, entries: list[dict[str, Any]]) -> None:
    atomic_write_json(folder / DIGESTS, {"format": "eo-jepa-checkpoint-digests", "checkpoints": entries})


def save_state(path: str | Path, state: dict[str, Any]) -> Path:
    """Write ``state`` (plus format tags) to ``path`` atomically, recording its sha256.

    Writing ``last.pt`` keeps the one it replaces as ``prev.pt``.
    """
    path = Path(path)
    folder = path.parent
    staged = folder / f".{path.name}.new"
    payload = {"format": FORMAT, "version": VERSION, **state}
    with atomic_open(staged, "wb", size_hint=tensor_bytes(payload)) as fh:
        torch.save(payload, fh)
    new = {"file": None, "sha256": sha256_file(staged), "step": state.get("step")}  # read back from disk
    entries = [*_read_digests(folder), new]
    _write_digests(folder, entries)  # recorded before the file takes its name
    if path.name == LAST and path.exists():
        os.replace(path, folder / PREV)
        renamed = {LAST: PREV, PREV: None}  # the old last.pt is prev.pt now; the older prev.pt is gone
    else:
        renamed = {path.name: None}
    for entry in entries:
        entry["file"] = renamed.get(entry["file"], entry["file"])
    new["file"] = path.name
    os.replace(staged, path)
    _write_digests(folder, [e for e in entries if e["file"] is not None])  # forgotten once gone
    return path


def verify_state(path: str | Path) -> str:
    """The sha256 of checkpoint ``path`` after checking it is recorded in its folder's digests.json."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"No training checkpoint at {str(path)!r}; run without --resume to start a new run."
        )
    entries = _read_digests(path.parent)
    if not entries:
        raise CheckpointError(
            f"{str(path)!r} has no recorded digest ({DIGESTS} is missing), so it cannot be verified; "
            "start a new run with another name=..."
        )
    digest = sha256_file(path)
    if digest not in {e["sha256"] for e in entries}:
        raise CheckpointError(
            f"{str(path)!r} has sha256 {digest[:12]}…, which {DIGESTS} does not record: the checkpoint "
            "is corrupt or was modified."
        )
    return digest


def load_state(path: str | Path, map_location: Any = "cpu", *, verify: bool = True) -> dict[str, Any]:
    """Read a training state (digest verified) with ``weights_only=True``; one-sentence errors."""
    path = Path(path)
    if verify:
        verify_state(path)
    elif not path.is_file():
        raise CheckpointError(
            f"No training checkpoint at {str(path)!r}; run without --resume to start a new run."
        )
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        why = (
            "it holds objects that torch.load(weights_only=True) refuses to unpickle"
            if "weights_only" in str(exc) or "Unsupported global" in str(exc)
            else f"{str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__}"
        )
        raise CheckpointError(f"{str(path)!r} is not a readable training checkpoint ({why}).") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(
            f"{str(path)!r} is not an eo-jepa training state (format tag missing); "
            "use model.init=<path> to start from other weights."
        )
    return state


def resume_state(folder: str | Path, requested: dict[str, Any], map_location: Any = "cpu") -> dict[str, Any]:
    """The state to resume a run from: ``last.pt``, or ``prev.pt`` when last.pt fails verification.

    ``requested`` (the config of this invocation, as a dict) must equal the run's saved config
    except for :data:`SAFE_TO_CHANGE` keys (logged); otherwise a ConfigError lists the keys.
    """
    folder = Path(folder)
    last, prev = folder / LAST, folder / PREV
    if not last.exists() and not prev.exists():
        raise CheckpointError(
            f"No training checkpoint at {str(last)!r}; run without --resume to start a new run."
        )
    try:
        state = load_state(last, map_location)
    except CheckpointError as exc:
        if not prev.exists():
            raise
        try:
            state = load_state(prev, map_location)
        except CheckpointError:
            raise CheckpointError(
                f"Neither {LAST} nor {PREV} in {str(folder)!r} verifies ({str(exc).rstrip('.')}); "
                "start a new run with another name=..."
            ) from None
        log.warning(
            "%s Resuming from %s (step %d) instead: one checkpoint interval is recomputed.",
            exc,
            prev,
            int(state["step"]),
        )
    check_resume_config(state.get("config") or {}, requested, folder.parent, state.get("world_size"))
    return state


def _normalised(cfg: dict[str, Any]) -> dict[str, Any]:
    """A saved config with today's defaults filled in (keys added since are then equal), when it parses."""
    with contextlib.suppress(Exception):
        return to_dict(from_dict(TrainConfig, cfg))
    return cfg


def _flatten(cfg: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in cfg.items():
        key = f"{prefix}.{k}" if prefix else k
        if isinstance(v, dict) and v and all(isinstance(x, str) for x in v) and key != "data.band_map":
            out.update(_flatten(v, key))
        else:
            out[key] = v
    return out


def config_changes(saved: dict[str, Any], requested: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """{dotted key: (saved value, requested value)} of the keys that differ (run location ignored)."""
    a, b = _flatten(_normalised(saved)), _flatten(_normalised(requested))
    missing = object()
    return {
        k: (a.get(k), b.get(k))
        for k in sorted(set(a) | set(b))
        if k not in _LOCATION_KEYS and a.get(k, missing) != b.get(k, missing)
    }


def check_global_batch(
    saved: dict[str, Any], requested: dict[str, Any], saved_world_size: int, world_size: int, where: Path
) -> None:
    """Refuse to resume with another global batch than the checkpoint's (its data position and LR
    schedule count global batches); any number of ranks is fine when the global batch is kept."""
    try:
        old, new = _normalised(saved), _normalised(requested)
        per_rank, accum = int(old["data"]["batch_size"]), int(old["optim"]["grad_accum"])
        b, a = int(new["data"]["batch_size"]), int(new["optim"]["grad_accum"])
    except (KeyError, TypeError, ValueError):  # a config too old or foreign to say: the key check decides
        return
    before, now = per_rank * accum * saved_world_size, b * a * world_size
    if before != now:
        need = before / world_size
        hint = (
            f"set data.batch_size x optim.grad_accum to {need:g} (e.g. data.batch_size={need:g})"
            if need == int(need)
            else f"use a number of processes that divides {before}"
        )
        raise ConfigError(
            f"{str(where)!r} was written with a global batch of {before} ({saved_world_size} process(es) x "
            f"data.batch_size={per_rank} x optim.grad_accum={accum}) but this run has {now} "
            f"({world_size} x {b} x {a}); to resume on {world_size} process(es) {hint}."
        )


def check_resume_config(
    saved: dict[str, Any], requested: dict[str, Any], run_dir: Path, saved_world_size: int | None = None
) -> None:
    """Refuse to resume with changed keys other than :data:`SAFE_TO_CHANGE`; log the safe changes.

    ``data.batch_size`` and ``optim.grad_accum`` may change together with the number of processes
    when the global batch stays the same (a checkpoint of 2 x 8 chips resumed on 1 x 16), when the
    checkpoint records the world size it was written with.
    """
    changes = config_changes(saved, requested)
    safe = set(SAFE_TO_CHANGE)
    if saved_world_size is not None:
        now = int(os.environ.get("WORLD_SIZE", "1"))
        check_global_batch(saved, requested, int(saved_world_size), now, run_dir)
        safe |= {"data.batch_size", "optim.grad_accum"}
    unsafe = {k: v for k, v in changes.items() if k not in safe}
    if unsafe:
        listed = ", ".join(f"{k} ({old!r} -> {new!r})" for k, (old, new) in unsafe.items())
        raise ConfigError(
            f"Cannot resume {str(run_dir)!r} with a changed config: {listed} differ from the run's saved "
            f"config (only {', '.join(SAFE_TO_CHANGE)} may change); resume with the saved values, or "
            "start a new run with another name=..."
        )
    for key, (old, new) in changes.items():
        log.info("Resuming with %s changed from %r to %r.", key, old, new)


# ------------------------------------------------------------------ model and optimiser state (FSDP)
# A checkpoint always holds full (unsharded) state, so it resumes on any number of ranks under any
# strategy. Under FSDP, gathering it and loading it are collective: every rank calls these.
# (torch.distributed.fsdp is imported on first use: it costs a second of start-up to commands that
# only read checkpoints.)


def is_fsdp(model: nn.Module) -> bool:
    """True when ``model`` is sharded by FSDP2 (``fully_shard``)."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # pragma: no cover - a torch built without torch.distributed
        return False
    return isinstance(model, FSDPModule)


def full_model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's full state on CPU (gathered from all ranks under FSDP)."""
    if is_fsdp(model):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}


def full_optim_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimiser's full state (keyed by parameter name under FSDP, by position otherwise)."""
    if is_fsdp(model):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        return get_optimizer_state_dict(
            model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
        )
    return optimizer.state_dict()


def load_model_state(model: nn.Module, state: dict[str, Any]) -> None:
    """Load a full model state (scattered to the shards under FSDP)."""
    if is_fsdp(model):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True))
        return
    model.load_state_dict(state)


def load_optim_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Load a full optimiser state, whichever strategy wrote it (see :func:`optim_state_by_name`)."""
    if is_fsdp(model):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        state = optim_state_by_name(model, optimizer, state)  # a DDP or 1-process run's state too
        set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True))
        return
    optimizer.load_state_dict(state)


def optim_state_by_name(model: nn.Module, optimizer: Any, state: dict[str, Any]) -> dict[str, Any]:
    """An optimizer state dict keyed by parameter name, as FSDP's ``set_optimizer_state_dict`` takes
    it; a plain ``optimizer.state_dict()`` (keyed by position, written by a DDP or single-process run)
    is translated through the optimizer's parameter order, which is the same whatever the wrapping."""
    if not any(isinstance(k, int) for k in state.get("state", {})) and not any(
        isinstance(i, int) for g in state.get("param_groups", []) for i in g["params"]
    ):
        return state  # already by name
    name_of = {id(p): n for n, p in model.named_parameters()}
    names = [name_of[id(p)] for group in optimizer.param_groups for p in group["params"]]
    return {
        "state": {names[int(i)]: v for i, v in state["state"].items()},
        "param_groups": [
            {**g, "params": [names[int(i)] for i in g["params"]]} for g in state["param_groups"]
        ],
    }
