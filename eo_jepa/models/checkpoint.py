"""Our checkpoint format: a folder laid out like a Hugging Face model repo.

```
model/
  model.safetensors   backbone weights (timm keys), no pickle, memory-mappable
  config.json         architecture, bands (with wavelengths), norm_stats by band name, input policy,
                      training config, provenance (data card id, git commit, date, eo-jepa version,
                      sha256 of model.safetensors)
  README.md           generated model card
```

Writes are atomic and ``config.json`` is written last, so a folder with a ``config.json`` is
complete. Loading recomputes the weights' sha256 and refuses a mismatch. Hashing 1.2 GB takes
seconds, so after a successful check the file's stamp (real path, inode, size, mtime, ctime) is
recorded under ``$EO_JEPA_CACHE/verified/`` and later loads of the *unchanged* file skip the hash,
as git's index does; any write to the file changes its ctime and forces a new hash. (This guards
against corruption and accidental or third-party modification of a download, not against someone
who can also rewrite config.json and the stamp.) Weights load onto a
model whose parameters live on the meta device (``load_state_dict(assign=True)``), so peak memory
is one copy of the weights.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import math
import os
import subprocess
from pathlib import Path
from typing import Any

from eo_jepa._version import __version__
from eo_jepa.config import to_dict
from eo_jepa.errors import CheckpointError
from eo_jepa.models.encoder import Encoder
from eo_jepa.models.vit import create_backbone, materialize_buffers
from eo_jepa.utils.io import (
    atomic_path,
    atomic_write_json,
    atomic_write_text,
    sha256_file,
    tensor_bytes,
)

FORMAT = "eo-jepa-encoder"
FORMAT_VERSION = 1
WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
CARD_NAME = "README.md"
INPUT_FORMULA = "((raw + offset) * scale - mean) / std"


def git_commit() -> str | None:
    """The commit of the eo-jepa source tree in use, or None outside a git checkout."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def _jsonable(obj: Any) -> Any:
    if obj is None:
        return None
    if hasattr(obj, "__dataclass_fields__"):
        return to_dict(obj)
    return obj


def encoder_config(encoder: Encoder) -> dict[str, Any]:
    """The architecture/band/normalisation part of ``config.json`` for ``encoder``."""
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "arch": encoder.arch,
        "img_size": encoder.img_size,
        "patch_size": encoder.patch_size,
        "embed_dim": encoder.embed_dim,
        "pooling": encoder.pooling,
        "sensor": encoder.sensor,
        "bands": encoder.band_records(),
        "norm_stats": encoder.norm_stats,
        "input": {"scale": encoder.input_scale, "offset": encoder.input_offset, "formula": INPUT_FORMULA},
    }


def _save_weights(state: dict[str, Any], path: Path) -> None:
    from safetensors.torch import save_file

    with atomic_path(path, size_hint=tensor_bytes(state)) as tmp:
        save_file(state, str(tmp), metadata={"format": "pt", "eo_jepa": FORMAT})


def save_encoder(
    encoder: Any,
    out_dir: str | os.PathLike[str],
    *,
    training_config: Any = None,
    provenance: dict[str, Any] | None = None,
    card_extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``encoder`` as a checkpoint folder (weights, config.json, model card); returns the folder.

    ``provenance`` may carry ``data_card_id``, ``run``, ``source`` or anything else to record;
    the git commit, date, eo-jepa version and weights sha256 are filled in. ``card_extra``:
    optional ``title``, ``description``, ``license``, ``metrics`` (dict) and ``sections``
    (heading → markdown) for the model card.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in encoder.backbone.state_dict().items()}
    weights = out / WEIGHTS_NAME
    _save_weights(state, weights)
    prov = {
        "data_card_id": None,
        "git_commit": git_commit(),
        "date": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
        "eo_jepa_version": __version__,
        **(provenance or {}),
        "weights_file": WEIGHTS_NAME,
        "weights_sha256": sha256_file(weights),
    }
    remember_verified(weights, prov["weights_sha256"])  # we just hashed what we wrote
    config = {
        **encoder_config(encoder),
        "training_config": _jsonable(training_config),
        "provenance": prov,
        "card": card_extra or {},
    }
    atomic_write_text(out / CARD_NAME, model_card(config))
    atomic_write_json(out / CONFIG_NAME, config)
    return out


def read_config(path: str | os.PathLike[str]) -> tuple[Path, dict[str, Any]]:
    """(folder, config) for a checkpoint folder or a file inside it."""
    root = Path(path)
    if root.is_file():
        root = root.parent
    cfg_path = root / CONFIG_NAME
    if not cfg_path.is_file():
        raise CheckpointError(f"{root} has no {CONFIG_NAME}; it is not an eo-jepa checkpoint folder.")
    config = read_json(cfg_path)
    if config.get("format") != FORMAT:
        raise CheckpointError(f"{cfg_path} is not an eo-jepa encoder config (format {FORMAT!r} expected).")
    version = config.get("format_version", 0)
    if not isinstance(version, int) or isinstance(version, bool):
        _invalid(cfg_path, "format_version", version, "an integer")
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{cfg_path} uses checkpoint format version {config['format_version']}; "
            f"this eo-jepa ({__version__}) reads up to {FORMAT_VERSION}: upgrade eo-jepa."
        )
    check_encoder_config(cfg_path, config)
    return root, config


def _invalid(cfg_path: Path, key: str, value: Any, allowed: str) -> None:
    shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
    raise CheckpointError(
        f"{cfg_path} has {key}={shown}, but it must be {allowed}; re-export or re-download the checkpoint."
    )


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def check_encoder_config(cfg_path: Path, config: dict[str, Any]) -> None:
    """Every field :func:`load_encoder` uses has the right shape, or one CheckpointError names it.

    ``provenance.weights_file`` must name a file inside the checkpoint folder.
    """
    if not isinstance(config.get("arch"), str) or not config["arch"]:
        _invalid(cfg_path, "arch", config.get("arch"), "an architecture name")
    for key in ("img_size", "patch_size"):
        if not _is_int(config.get(key)) or config[key] < 1:
            _invalid(cfg_path, key, config.get(key), "a positive integer")
    bands = config.get("bands")
    if (
        not isinstance(bands, list)
        or not bands
        or not all(isinstance(b, dict) and isinstance(b.get("name"), str) and b["name"] for b in bands)
    ):
        _invalid(cfg_path, "bands", bands, "a non-empty list of {name: ...} records")
    stats = config.get("norm_stats")
    if not isinstance(stats, dict):
        _invalid(cfg_path, "norm_stats", stats, "a mapping band -> {mean, std}")
    for band in bands:
        entry = stats.get(band["name"])
        if (
            not isinstance(entry, dict)
            or not _is_number(entry.get("mean"))
            or not _is_number(entry.get("std"))
            or entry["std"] <= 0
        ):
            _invalid(cfg_path, f"norm_stats.{band['name']}", entry, "{mean: number, std: positive number}")
    inp = config.get("input")
    if not isinstance(inp, dict):
        _invalid(cfg_path, "input", inp, "a mapping {scale, offset, formula}")
    if not _is_number(inp.get("scale")) or inp["scale"] == 0:
        _invalid(cfg_path, "input.scale", inp.get("scale"), "a non-zero finite number")
    if not _is_number(inp.get("offset", 0.0)):
        _invalid(cfg_path, "input.offset", inp.get("offset"), "a finite number")
    prov = config.get("provenance", {})
    if not isinstance(prov, dict):
        _invalid(cfg_path, "provenance", prov, "a mapping")
    name = prov.get("weights_file", WEIGHTS_NAME)
    # Checked on the name, not the resolved file: a Hub cache snapshot's files are symlinks to blobs.
    norm = os.path.normpath(name) if isinstance(name, str) and name else ""
    if not norm or os.path.isabs(norm) or norm == "." or norm.split(os.sep)[0] == "..":
        _invalid(cfg_path, "provenance.weights_file", name, "a file name inside the checkpoint folder")


def read_json(cfg_path: Path) -> dict[str, Any]:
    """A checkpoint folder's config.json as a dict, or a one-sentence CheckpointError."""
    try:
        config = json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{cfg_path} is not valid JSON ({exc}); re-export or re-download it.") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{cfg_path} must hold a JSON object; re-export or re-download it.")
    return config


def verify_weights(root: Path, config: dict[str, Any]) -> Path:
    """Path of the weights after checking their sha256 against config.json."""
    weights = root / config.get("provenance", {}).get("weights_file", WEIGHTS_NAME)
    if not weights.is_file():
        raise CheckpointError(f"Checkpoint folder {root} has no {weights.name}; re-export or re-download it.")
    expected = config.get("provenance", {}).get("weights_sha256")
    if not expected:
        raise CheckpointError(
            f"{root / CONFIG_NAME} records no weights_sha256; the checkpoint cannot be verified."
        )
    with contextlib.suppress(OSError, ValueError):
        if json.loads((verified_dir() / f"{expected}.json").read_text()) == _file_stamp(weights):
            return weights  # this exact file (same inode, size, mtime and ctime) was hashed before
    actual = sha256_file(weights)
    if actual != expected:
        raise CheckpointError(
            f"{weights} has sha256 {actual[:12]}… but config.json records {expected[:12]}…; the weights are "
            "corrupt or were modified: re-download or re-export the checkpoint."
        )
    remember_verified(weights, actual)
    return weights


def remember_verified(weights: Path, sha256: str) -> None:
    """Record that ``weights`` (as it is now on disk) has ``sha256``; best effort."""
    with contextlib.suppress(OSError):
        atomic_write_json(verified_dir() / f"{sha256}.json", _file_stamp(weights))


def verified_dir() -> Path:
    """Where verified-file stamps live: ``$EO_JEPA_CACHE/verified`` (default ``~/.cache/eo-jepa``)."""
    base = os.environ.get("EO_JEPA_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "eo-jepa")
    return Path(base) / "verified"


def _file_stamp(path: Path) -> dict[str, Any]:
    """What changes whenever a file's bytes change (as git's index uses): any write bumps ctime."""
    st = os.stat(path)
    return {
        "path": os.path.realpath(path),
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "ctime_ns": st.st_ctime_ns,
        "inode": st.st_ino,
        "device": st.st_dev,
    }


def load_encoder(path: str | os.PathLike[str], *, device: Any = None, verify: bool = True) -> Encoder:
    """Load a checkpoint folder written by :func:`save_encoder` (sha256 verified)."""
    import torch
    from safetensors.torch import load_file

    root, config = read_config(path)
    weights = verify_weights(root, config) if verify else root / WEIGHTS_NAME
    dev = torch.device(device) if device is not None else torch.device("cpu")
    try:
        bands = [b["name"] for b in config["bands"]]
        backbone = create_backbone(
            config["arch"],
            len(bands),
            int(config["img_size"]),
            patch_size=int(config["patch_size"]),
            meta=True,
        )
        state = load_file(str(weights), device=str(dev))
        backbone.load_state_dict(state, strict=True, assign=True)
    except (KeyError, TypeError, RuntimeError) as exc:
        raise CheckpointError(f"Checkpoint {root} does not match its config.json: {exc}") from None
    materialize_buffers(backbone, dev)
    encoder = Encoder(
        backbone,
        arch=config["arch"],
        bands=bands,
        norm_stats=config["norm_stats"],
        img_size=int(config["img_size"]),
        input_scale=float(config["input"]["scale"]),
        input_offset=float(config["input"].get("offset", 0.0)),
        sensor=config.get("sensor"),
    )
    encoder.config = config  # the full config.json, for provenance and cards
    return encoder.to(dev).eval()


def _fmt(x: Any) -> str:
    return f"{x:.6g}" if isinstance(x, float) else "" if x is None else str(x)


def model_card(config: dict[str, Any]) -> str:
    """A Markdown model card generated from ``config.json``."""
    card = config.get("card") or {}
    prov = config.get("provenance") or {}
    title = card.get("title") or f"eo-jepa encoder ({config['arch']}, {len(config['bands'])} bands)"
    lines = [
        "---",
        "library_name: eo-jepa",
        f"license: {card.get('license', 'other')}",
        "tags: [earth-observation, remote-sensing, self-supervised, lejepa]",
        "---",
        "",
        f"# {title}",
        "",
        card.get("description", "A self-supervised Earth-observation encoder exported by eo-jepa."),
        "",
        "## Architecture",
        "",
        "| field | value |",
        "|---|---|",
    ]
    for key in ("arch", "img_size", "patch_size", "embed_dim", "pooling", "sensor"):
        lines.append(f"| {key} | {_fmt(config.get(key))} |")
    lines += [
        "",
        "## Bands and normalisation",
        "",
        f"Model input = `{config['input']['formula']}` with scale = {_fmt(config['input']['scale'])}, "
        f"offset = {_fmt(config['input']['offset'])}; `encoder.normalize(raw)` applies it.",
        "",
        "| # | band | wavelength (nm) | GSD (m) | mean | std |",
        "|---|---|---|---|---|---|",
    ]
    for i, band in enumerate(config["bands"]):
        stats = config["norm_stats"][band["name"]]
        lines.append(
            f"| {i} | {band['name']} | {_fmt(band.get('wavelength_nm'))} | {_fmt(band.get('gsd_m'))} "
            f"| {_fmt(stats['mean'])} | {_fmt(stats['std'])} |"
        )
    lines += [
        "",
        "## Usage",
        "",
        "```python",
        "import eo_jepa",
        "",
        'enc = eo_jepa.load("path/or/hf://org/repo")',
        "emb = enc(enc.normalize(raw))            # (B, D) from raw sensor units (B, C, H, W)",
        "fmap = enc.forward_features(enc.normalize(raw))  # (B, D, H/p, W/p)",
        "```",
        "",
    ]
    if card.get("metrics"):
        lines += ["## Metrics", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {_fmt(v)} |" for k, v in card["metrics"].items()]
        lines.append("")
    for heading, body in (card.get("sections") or {}).items():
        lines += [f"## {heading}", "", str(body), ""]
    lines += ["## Provenance", "", "| field | value |", "|---|---|"]
    lines += [f"| {k} | {_fmt(v)} |" for k, v in prov.items()]
    if config.get("training_config"):
        lines += [
            "",
            "## Training config",
            "",
            "```json",
            json.dumps(config["training_config"], indent=2),
            "```",
        ]
    return "\n".join(lines) + "\n"
