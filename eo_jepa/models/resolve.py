"""Names, ``hf://`` ids and paths resolved to checkpoints, and checkpoints to encoders: :func:`load`.

A registered name (:mod:`eo_jepa.models.registry`) or an ``hf://org/repo[@rev]`` id is fetched
with :func:`huggingface_hub.hf_hub_download`, so the standard cache, ``HF_HUB_OFFLINE``,
``HF_TOKEN`` and ``cache_dir`` all apply, and a cached file is used without any network call.
The file is then read by our checkpoint loader (:mod:`eo_jepa.models.checkpoint`) or by the
converter the spec names (:mod:`eo_jepa.models.convert`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from eo_jepa.bands import RGB
from eo_jepa.errors import CheckpointError, ConfigError, ModelNotFoundError, did_you_mean
from eo_jepa.models.checkpoint import (
    CARD_NAME,
    CONFIG_NAME,
    FORMAT,
    WEIGHTS_NAME,
    encoder_config,
    load_encoder,
    read_json,
)
from eo_jepa.models.convert import encoder_from_state, infer_timm_arch, read_state_file, sniff, unwrap_state
from eo_jepa.models.dinov3 import CORE_JEPA_PREFIX, infer_arch, strip_prefix
from eo_jepa.models.encoder import Encoder
from eo_jepa.models.registry import (
    RGB8_SCALE,
    ModelSpec,
    get_spec,
    is_registered,
    named_norm,
    registered_names,
)
from eo_jepa.models.vit import ARCHS
from eo_jepa.utils.io import sha256_file

log = logging.getLogger(__name__)


# -- downloading -------------------------------------------------------------------------------
def hf_download(
    repo_id: str,
    filename: str,
    *,
    repo_type: str = "model",
    revision: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    what: str = "",
) -> Path:
    """``hf_hub_download`` with our errors; the token comes from the environment (HF_TOKEN)."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    where = f"{repo_type} repo {repo_id!r}, file {filename!r}" + (
        f" at revision {revision!r}" if revision else ""
    )
    label = f"{what} ({where})" if what else where
    if cache_dir is None:  # huggingface_hub reads these once at import; honour later changes too
        home = os.environ.get("HF_HOME")
        cache_dir = os.environ.get("HF_HUB_CACHE") or (os.path.join(home, "hub") if home else None)
    cached = cached_file(repo_id, filename, repo_type=repo_type, revision=revision, cache_dir=cache_dir)
    if (
        cached is not None
    ):  # in the cache: no network call at all (delete the cache entry to pick up a newer upload)
        return cached
    _check_reachable(label)
    try:
        return Path(
            hf_hub_download(
                repo_id, filename, repo_type=repo_type, revision=revision, cache_dir=cache_dir, token=None
            )
        )
    except LocalEntryNotFoundError:
        raise ModelNotFoundError(
            f"{label} is not in the Hugging Face cache and it cannot be downloaded (HF_HUB_OFFLINE=1 or no "
            "network); go online once, or pass cache_dir= a cache that holds it."
        ) from None
    except GatedRepoError:
        raise ModelNotFoundError(
            f"{label} is gated; accept its terms on huggingface.co and set HF_TOKEN in the environment."
        ) from None
    except RepositoryNotFoundError:
        raise ModelNotFoundError(
            f"{label}: the repository does not exist or is private (set HF_TOKEN for private repos)."
        ) from None
    except RevisionNotFoundError:
        raise ModelNotFoundError(
            f"{label}: that revision does not exist; pass a valid branch, tag or commit."
        ) from None
    except EntryNotFoundError:
        raise ModelNotFoundError(f"{label}: the repository has no such file.") from None
    except HfHubHTTPError as exc:
        raise ModelNotFoundError(f"Downloading {label} failed: {exc}.") from None


def cached_file(
    repo_id: str,
    filename: str,
    *,
    repo_type: str = "model",
    revision: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> Path | None:
    """The file's path in the Hugging Face cache (the revision's snapshot, ``main`` by default), or None."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(
        repo_id, filename, cache_dir=cache_dir, revision=revision, repo_type=repo_type
    )
    return Path(found) if isinstance(found, str) and Path(found).is_file() else None


def _check_reachable(label: str, timeout: float = 3.0) -> None:
    """Fail in seconds, with one sentence, when the Hub endpoint cannot be reached: huggingface_hub itself
    retries a failing connection with back-off for ~20 s before giving up."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return  # hf_hub_download answers from the cache or raises at once
    url = urlparse(constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname or "", port), timeout=timeout).close()
    except OSError as exc:
        raise ModelNotFoundError(
            f"{label} is not in the Hugging Face cache and {url.hostname} cannot be reached ({exc.__class__.__name__}"
            f": {exc}); go online once, or pass cache_dir= a cache that holds it."
        ) from None


def _fetch(spec: ModelSpec, revision: str | None, cache_dir: str | os.PathLike[str] | None) -> Path:
    if spec.path:
        return Path(spec.path).expanduser()
    assert spec.repo_id is not None
    rev = revision or spec.revision
    if spec.converter == "eo-jepa":
        return _fetch_ours(spec.repo_id, spec.repo_type, rev, cache_dir, what=f"model {spec.name!r}")
    if not spec.filename:
        raise ConfigError(
            f"Model {spec.name!r} names no file in {spec.repo_id}; register it with filename=..."
        )
    return hf_download(
        spec.repo_id, spec.filename, repo_type=spec.repo_type, revision=rev, cache_dir=cache_dir,
        what=f"model {spec.name!r}",
    )  # fmt: skip


def _fetch_ours(
    repo_id: str, repo_type: str, revision: str | None, cache_dir: str | os.PathLike[str] | None, what: str
) -> Path:
    """Download an eo-jepa checkpoint folder (config, weights, card) from the Hub; returns the snapshot folder."""
    from_cache = cached_file(
        repo_id, CONFIG_NAME, repo_type=repo_type, revision=revision, cache_dir=cache_dir
    )
    config = hf_download(
        repo_id, CONFIG_NAME, repo_type=repo_type, revision=revision, cache_dir=cache_dir, what=what
    )
    if from_cache is not None and cached_file(
        repo_id, WEIGHTS_NAME, repo_type=repo_type, revision=revision, cache_dir=cache_dir
    ):
        return config.parent  # all cached: the optional card is not looked up online
    hf_download(repo_id, WEIGHTS_NAME, repo_type=repo_type, revision=revision, cache_dir=cache_dir, what=what)
    try:
        hf_download(
            repo_id, CARD_NAME, repo_type=repo_type, revision=revision, cache_dir=cache_dir, what=what
        )
    except ModelNotFoundError:
        log.debug("%s has no %s", repo_id, CARD_NAME)
    return config.parent


# -- loading -----------------------------------------------------------------------------------
def load(
    name_or_path: str | os.PathLike[str],
    *,
    device: Any = None,
    revision: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    norm: str | Mapping[str, Mapping[str, float]] | None = None,
    bands: Sequence[str] | None = None,
    arch: str | None = None,
    input_scale: float | None = None,
    img_size: int | None = None,
) -> Encoder:
    """An :class:`~eo_jepa.models.encoder.Encoder` from a registry name, ``hf://org/repo[@rev]`` or a local path.

    ``norm``, ``bands``, ``arch``, ``input_scale`` and ``img_size`` describe a foreign file (a Meta DINOv3
    or Core-JEPA ``.pth``, a timm state dict) that does not carry them: ``norm`` is a named
    normalisation (``'sat493m'``, ``'imagenet'``: statistics of RGB in [0, 1], input scaled by 1/255)
    or ``{band: {"mean", "std"}}`` in the input's units.
    """
    key = os.fspath(name_or_path)
    foreign = {"norm": norm, "bands": bands, "arch": arch, "input_scale": input_scale, "img_size": img_size}
    given = sorted(k for k, v in foreign.items() if v is not None)
    if given and (key.startswith("hf://") or is_registered(key)):
        raise ConfigError(
            f"{', '.join(given)} describe a foreign checkpoint file; {key!r} is a registered name or hf:// id "
            "that carries its own, so leave them out (or register_model(...) a variant)."
        )
    if key.startswith("hf://"):
        repo, _, rev = key[len("hf://") :].partition("@")
        repo_type = "model"
        for kind in ("datasets", "spaces"):
            if repo.startswith(kind + "/"):
                repo_type, repo = kind[:-1], repo[len(kind) + 1 :]
        if repo.count("/") != 1:
            raise ModelNotFoundError(f"{key!r} is not of the form hf://org/repo[@revision].")
        folder = _fetch_ours(repo, repo_type, revision or rev or None, cache_dir, what=key)
        return load_encoder(folder, device=device)
    if is_registered(key):
        spec = get_spec(key)
        return _load_spec(spec, _fetch(spec, revision, cache_dir), device)
    path = Path(key).expanduser()
    if path.is_file() and path.name != "config.json":
        return load_path(path, device=device, **foreign)
    if given and (is_registered(key) or path.exists() or key.startswith("hf://")):
        raise ConfigError(
            f"{', '.join(given)} describe a foreign checkpoint file; {key!r} is a registered name, hf:// id or "
            "eo-jepa folder that carries its own, so leave them out."
        )
    if path.exists():
        return load_path(path, device=device)
    raise ModelNotFoundError(
        f"No registered model, hf:// id or file named {key!r}; known models are: {', '.join(registered_names())}."
        f"{did_you_mean(key, registered_names())}"
    )


def _load_spec(spec: ModelSpec, path: Path, device: Any) -> Encoder:
    if spec.converter == "eo-jepa" or (path.is_dir() and (path / CONFIG_NAME).is_file()):
        encoder = load_encoder(path, device=device)
    else:
        encoder = encoder_from_state(
            read_state_file(path),
            converter=spec.converter,
            arch=spec.arch,
            bands=spec.bands or None,
            norm_stats=spec.norm_stats(),
            input_scale=spec.scale(),
            sensor=spec.sensor,
            img_size=spec.img_size,
            source=f"model {spec.name!r} ({path})",
        )
        encoder = encoder.to(device).eval() if device is not None else encoder.eval()
    encoder.model_name = spec.name
    return encoder


def fixing_call(path: Path, fmt: str) -> str:
    """The ``eo_jepa.load`` call that loads a foreign file ``path`` of format ``fmt``."""
    if fmt in ("meta-dinov3", "core-jepa"):
        return f"eo_jepa.load({str(path)!r}, norm='sat493m')"
    return f"eo_jepa.load({str(path)!r}, norm='imagenet', bands=['red', 'green', 'blue'])"


def load_path(
    path: Path,
    *,
    device: Any = None,
    norm: str | Mapping[str, Mapping[str, float]] | None = None,
    bands: Sequence[str] | None = None,
    arch: str | None = None,
    input_scale: float | None = None,
    img_size: int | None = None,
) -> Encoder:
    """A local eo-jepa folder, a timm/HF folder (config.json with ``architecture``) or a checkpoint file;
    a foreign file without normalisation needs ``norm=`` (see :func:`load`)."""
    if path.is_file() and path.name != CONFIG_NAME:
        obj = read_state_file(path)
        fmt = sniff(obj)
        stats, scale = named_norm(norm, bands)
        if stats is None and fmt != "legacy":
            raise CheckpointError(
                f"{path} is a {fmt} checkpoint with no normalisation statistics; say how its input is normalised, "
                f"e.g. {fixing_call(path, fmt)} (DINOv3 SAT-493M and Core-JEPA weights; norm='imagenet' for web "
                "weights, or norm={band: {'mean': m, 'std': s}})."
            )
        encoder = encoder_from_state(
            obj, arch=arch, bands=bands, norm_stats=stats, sensor="rgb" if isinstance(norm, str) else None,
            input_scale=input_scale if input_scale is not None else scale, img_size=img_size, source=str(path),
        )  # fmt: skip
        return encoder.to(device).eval() if device is not None else encoder.eval()

    if path.is_dir():
        cfg_path = path / CONFIG_NAME
        cfg = read_json(cfg_path) if cfg_path.is_file() else {}
        if cfg.get("format") == FORMAT:
            return load_encoder(path, device=device)
        if "architecture" in cfg and (path / "model.safetensors").is_file():
            return _load_timm_folder(path, cfg, device)
        raise CheckpointError(f"{path} is neither an eo-jepa checkpoint folder nor a timm model folder.")
    return load_encoder(path, device=device)


def _load_timm_folder(path: Path, cfg: dict[str, Any], device: Any) -> Encoder:
    """A timm Hub folder: ``config.json`` (architecture, pretrained_cfg mean/std) + ``model.safetensors``."""
    timm_name = str(cfg["architecture"])
    arch = next((a for a, s in ARCHS.items() if s.timm_name == timm_name), None)
    if arch is None:
        raise CheckpointError(f"timm architecture {timm_name!r} in {path} is not one eo-jepa wraps.")
    pre = cfg.get("pretrained_cfg") or {}
    if "mean" not in pre or "std" not in pre:
        raise CheckpointError(
            f"{path / 'config.json'} has no pretrained_cfg mean/std; register the model with a norm."
        )
    stats = {b: {"mean": m, "std": s} for b, m, s in zip(RGB, pre["mean"], pre["std"], strict=True)}
    encoder = encoder_from_state(
        read_state_file(path / "model.safetensors"), converter="timm", arch=arch, bands=RGB,
        norm_stats=stats, input_scale=RGB8_SCALE, sensor="rgb", source=str(path),
    )  # fmt: skip
    return encoder.to(device).eval() if device is not None else encoder.eval()


def file_info(path: str | os.PathLike[str]) -> dict[str, Any]:
    """What a local checkpoint file or folder is (for ``eo-jepa models info PATH``), without building it."""
    p = Path(path).expanduser()
    if p.is_dir() or p.name == CONFIG_NAME:
        return {"path": str(p), "format": "eo-jepa folder", "config": encoder_config(load_path(p))}
    obj = read_state_file(p)
    fmt = sniff(obj)
    info: dict[str, Any] = {
        "path": str(p),
        "format": fmt,
        "size_bytes": p.stat().st_size,
        "sha256": sha256_file(p),
    }
    if fmt == "legacy":
        info["carries_normalization"] = True
        info["config"] = dict(obj.get("config") or {})
        info["load"] = f"eo_jepa.load({str(p)!r})"
        return info
    state = (
        strip_prefix(dict(obj), CORE_JEPA_PREFIX)
        if fmt in ("core-jepa", "meta-dinov3")
        else unwrap_state(obj)
    )
    info["tensors"] = len(state)
    info["parameters"] = int(sum(int(v.numel()) for v in state.values() if hasattr(v, "numel")))
    try:
        info["arch"] = infer_arch(state) if fmt in ("core-jepa", "meta-dinov3") else infer_timm_arch(state)
    except Exception:  # an unusual shape: the loader names the problem when it is built
        info["arch"] = None
    weight = state.get("patch_embed.proj.weight")
    if weight is not None:
        info["in_chans"], info["patch_size"] = int(weight.shape[1]), int(weight.shape[-1])
    info["carries_normalization"] = False
    info["load"] = fixing_call(p, fmt)
    return info
