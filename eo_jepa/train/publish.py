"""``eo-jepa publish``: a training run -> an encoder checkpoint folder (optionally on the Hub).

Only the encoder is exported (the projector is a training device, as in the paper); the
folder is written by :func:`eo_jepa.models.save_encoder` with the normalisation the encoder was
trained with, its bands, the resolved training config, provenance (data card id, run, steps,
git commit, date, version) and a model card that embeds the loss curve. ``fmt="legacy-pt"``
also writes ``model.pt`` in the ``{config, encoder_state, norm_stats}`` layout of the seed
model card. ``repo_id`` uploads the folder with ``huggingface_hub.HfApi().upload_folder``
(token from ``HF_TOKEN`` or the Hub's own login).

The training checkpoint's digest is verified first (:func:`eo_jepa.train.checkpointing.load_state`),
so a corrupted ``last.pt`` is refused instead of being stamped with a fresh sha256. The folder is
assembled beside ``out`` and moved into place only when complete: a full disk or a kill mid-way
leaves ``out`` as it was (absent, or the previous model), never a half-written folder that looks
like a model.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from eo_jepa.config import from_dict, to_dict
from eo_jepa.errors import CheckpointError, ConfigError, EOJepaError
from eo_jepa.models import build_encoder, save_encoder, save_legacy_pt
from eo_jepa.train.callbacks import LOSS_CURVE, METRICS, plot_loss_curve
from eo_jepa.train.checkpointing import CHECKPOINT_DIR, LAST, PREV, load_state
from eo_jepa.train.config import TrainConfig, load_train_config
from eo_jepa.utils.io import disk_full_error, is_disk_full

log = logging.getLogger(__name__)

FORMATS = ("ours", "legacy-pt")
LEGACY_NAME = "model.pt"


INIT = "init"


def resolve_checkpoint(run_dir: str | Path, which: str | int = "last") -> str:
    """A ``--checkpoint`` value as a file name in ``checkpoints/`` (or ``"init"``).

    ``last`` -> ``last.pt``; a step number ``N`` -> ``step_000000N.pt`` (kept by
    ``checkpoint.keep_every``); ``init`` -> the encoder as training started (no file); a file name
    is taken as it is. A missing step is a :class:`CheckpointError` listing the kept ones.
    """
    text = str(which).strip()
    if text in ("last", LAST):
        return LAST
    if text == INIT:
        return INIT
    name = f"step_{int(text):07d}.pt" if text.isdigit() else text
    if not (Path(run_dir) / CHECKPOINT_DIR / name).is_file():
        kept = sorted(p.name for p in (Path(run_dir) / CHECKPOINT_DIR).glob("step_*.pt"))
        raise CheckpointError(
            f"{str(run_dir)!r} has no {CHECKPOINT_DIR}/{name}; --checkpoint takes last, init or a kept step "
            f"({', '.join(p[5:-3].lstrip('0') or '0' for p in kept) or 'none kept: set checkpoint.keep_every'})."
        )
    return name


def _initial_encoder(run: Path) -> tuple[Any, TrainConfig, dict[str, Any], dict]:
    """The encoder exactly as the run's training started: same seed and construction as the trainer."""
    if not (run / "config.yaml").is_file() or not (run / "data.json").is_file():
        raise CheckpointError(
            f"{str(run)!r} has no config.yaml/data.json; pass the folder of a training run (runs/<name>)."
        )
    cfg = load_train_config(run / "config.yaml")
    data = json.loads((run / "data.json").read_text())
    with torch.random.fork_rng(devices=[]):  # the caller's random state is left as it was
        torch.manual_seed(cfg.seed)  # the trainer seeds just before building the encoder
        encoder = build_encoder(
            cfg.model.arch,
            data["bands"],
            img_size=cfg.model.img_size,
            pretrained=cfg.model.init,
            norm_stats=data["model_norm_stats"],
            input_scale=data.get("model_input_scale", 1.0),
            sensor=data.get("sensor"),
        )
    return encoder.eval(), cfg, data, {"step": 0, "epoch": 0, "config": to_dict(cfg)}


def load_run_encoder(
    run_dir: str | Path, checkpoint: str = LAST
) -> tuple[Any, TrainConfig, dict[str, Any], dict]:
    """(encoder with the run's weights, config, data.json, training state) of a run folder.

    ``checkpoint``: a file in ``checkpoints/`` or ``"init"`` (see :func:`resolve_checkpoint`).
    """
    run = Path(run_dir)
    if checkpoint == INIT:
        return _initial_encoder(run)
    ckpt = run / CHECKPOINT_DIR / checkpoint
    if not ckpt.is_file():
        raise CheckpointError(
            f"{str(run)!r} has no {CHECKPOINT_DIR}/{checkpoint}; pass the folder of a training run (runs/<name>)."
        )
    try:
        state = load_state(ckpt)
    except CheckpointError as exc:
        if checkpoint != LAST or not (run / CHECKPOINT_DIR / PREV).is_file():
            raise
        raise CheckpointError(
            f"{str(exc).rstrip('.')}; `eo-jepa train --resume` continues from {CHECKPOINT_DIR}/{PREV} and "
            "writes a new last.pt, which can then be published."
        ) from None
    cfg = from_dict(TrainConfig, state["config"])
    data_json = run / "data.json"
    if not data_json.is_file():
        raise CheckpointError(f"{str(run)!r} has no data.json; it is not a complete eo-jepa training run.")
    data = json.loads(data_json.read_text())
    encoder = build_encoder(
        cfg.model.arch,
        data["bands"],
        img_size=cfg.model.img_size,
        norm_stats=data["model_norm_stats"],
        input_scale=data.get("model_input_scale", 1.0),
        sensor=data.get("sensor"),
    )
    prefix = "encoder.backbone."
    weights = {k[len(prefix) :]: v for k, v in state["model"].items() if k.startswith(prefix)}
    if not weights:
        raise CheckpointError(f"{str(ckpt)!r} holds no encoder weights (keys {prefix}*).")
    encoder.backbone.load_state_dict(weights, strict=True)
    return encoder.eval(), cfg, data, state


def _final_metrics(run: Path) -> dict[str, float]:
    path = run / METRICS
    if not path.is_file():
        return {}
    rows = [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]
    if not rows:
        return {}
    out = {k: rows[-1][k] for k in ("loss", "pred", "sigreg") if k in rows[-1]}
    ranks = [r["effective_rank"] for r in rows if "effective_rank" in r]
    if ranks:
        out["effective_rank"] = ranks[-1]
    return out


def publish(
    run_dir: str | Path,
    out: str | Path,
    *,
    repo_id: str | None = None,
    private: bool = False,
    fmt: str = "ours",
    token: str | None = None,
    checkpoint: str | int = "last",
) -> Path:
    """Export the run's encoder to ``out`` (and upload it to ``repo_id``); returns ``out``.

    ``checkpoint``: ``last`` (default), a kept step number, or ``init`` (the untrained encoder the
    run started from, e.g. as a baseline), see :func:`resolve_checkpoint`.
    """

    if fmt not in FORMATS:
        raise ConfigError(f"Unknown --format {fmt!r}; choose one of: {', '.join(FORMATS)}.")
    if repo_id is not None:
        _check_repo_id(repo_id)  # before any work, not after the folder is written
    run = Path(run_dir)
    which = resolve_checkpoint(run, checkpoint)
    encoder, cfg, data, state = load_run_encoder(run, which)
    final = Path(out)
    _check_out(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    out = final.parent / f".{final.name}.publishing-{os.getpid()}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    try:
        _write_model_folder(run, out, encoder, cfg, data, state, fmt, which)
        _move_into_place(out, final)
    except BaseException as exc:
        shutil.rmtree(out, ignore_errors=True)
        if isinstance(exc, OSError) and not isinstance(exc, EOJepaError) and is_disk_full(exc):
            raise disk_full_error(final, None) from None  # e.g. copying the loss curve
        raise
    log.info("Published %s (%d steps) to %s.", run, int(state["step"]), final)
    if repo_id:
        upload(final, repo_id, private=private, token=token)
    return final


def _check_out(out: Path) -> None:
    """``out`` may be new, empty or a previous model folder (replaced); anything else is refused."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {str(out)!r} is a file; pass a folder for the checkpoint.")
    if out.is_dir() and any(out.iterdir()) and not (out / "config.json").is_file():
        raise ConfigError(
            f"--out {str(out)!r} is a non-empty folder that is not an eo-jepa checkpoint; choose a new folder."
        )


def _move_into_place(staged: Path, final: Path) -> None:
    """Put the complete folder ``staged`` at ``final``, replacing a previous model folder there."""
    if not final.exists():
        os.replace(staged, final)
        return
    old = final.parent / f".{final.name}.replaced-{os.getpid()}"
    os.replace(final, old)
    os.replace(staged, final)
    shutil.rmtree(old, ignore_errors=True)


def _write_model_folder(
    run: Path,
    out: Path,
    encoder: Any,
    cfg: TrainConfig,
    data: dict[str, Any],
    state: dict,
    fmt: str,
    which: str,
) -> None:
    curve = run / LOSS_CURVE
    if not curve.is_file():
        plot_loss_curve(run)
    has_curve = curve.is_file()
    if has_curve:
        shutil.copyfile(curve, out / LOSS_CURVE)
    metrics = _final_metrics(run) if which == LAST else {}  # the run's last figures describe last.pt
    steps = int(state["step"])
    recipe = (
        f"LeJEPA (Balestriero & LeCun 2025): (1 − λ)·prediction + λ·SIGReg with λ={cfg.loss.lam}, "
        f"{cfg.loss.num_slices} slices; no teacher, no EMA, no stop-gradient. {cfg.views.num_global} global "
        f"({cfg.views.global_size} px) + {cfg.views.num_local} local ({cfg.views.local_size} px) views. "
        f"AdamW lr {cfg.optim.lr}, weight decay {cfg.optim.weight_decay}, warm-up + cosine to "
        f"lr×{cfg.optim.final_lr_ratio}; {steps} steps of {cfg.data.batch_size}×{data.get('world_size', 1)}"
        f"×{cfg.optim.grad_accum} chips; precision {data.get('precision')}; "
        f"init: {cfg.model.init or 'from scratch'}."
    )
    sections = {
        "Training": recipe,
        "Training data": (
            f"{data.get('num_samples')} samples from `{data.get('path')}` (split {data.get('split')}); "
            f"data card: {data.get('data_card_id') or 'none'}."
        ),
    }
    if has_curve:
        sections["Loss curve"] = f"![LeJEPA loss curve]({LOSS_CURVE})"
    save_encoder(
        encoder,
        out,
        training_config=state["config"],
        provenance={
            "data_card_id": data.get("data_card_id"),
            "data_card": data.get("data_card"),
            "run": str(run.resolve()),
            "steps": steps,
            "epoch": int(state["epoch"]),
            "source": cfg.model.init,
            "checkpoint": which,
        },
        card_extra={
            "title": f"{cfg.name}: LeJEPA {encoder.arch} ({', '.join(encoder.bands)})",
            "description": (
                f"A {encoder.arch} encoder pretrained with LeJEPA on {data.get('sensor') or 'EO'} chips; "
                "the projector used in training is not included."
            ),
            "metrics": metrics,
            "sections": sections,
        },
    )
    if fmt == "legacy-pt":
        save_legacy_pt(encoder, out / LEGACY_NAME)


def _check_repo_id(repo_id: str) -> None:
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise ConfigError(f"--repo-id {repo_id!r} must look like org/name.")


def upload(folder: str | Path, repo_id: str, *, private: bool = False, token: str | None = None) -> str:
    """Create ``repo_id`` (if needed) and upload ``folder``; returns the commit URL."""
    from huggingface_hub import HfApi
    from huggingface_hub.utils import HfHubHTTPError

    _check_repo_id(repo_id)
    token = token or os.environ.get("HF_TOKEN")
    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        info = api.upload_folder(
            folder_path=str(folder),
            repo_id=repo_id,
            repo_type="model",
            commit_message="Upload eo-jepa encoder",
        )
    except HfHubHTTPError as exc:
        raise EOJepaError(
            f"Upload to {repo_id!r} failed ({exc.__class__.__name__}); check HF_TOKEN has write access to it."
        ) from None
    url = str(getattr(info, "commit_url", info))
    log.info("Uploaded %s to %s.", folder, url)
    return url
