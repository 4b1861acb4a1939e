"""Batched inference with a frozen encoder: probe features, global embeddings, dense feature maps.

Everything here runs under :func:`torch.inference_mode`, in batches, optionally in bfloat16
autocast, with a tqdm progress bar. Inputs are raw sensor units; the encoder's own
``normalize`` turns them into model inputs, so the band order and statistics that travel
with a checkpoint are the only ones ever used.

Probe features follow the LeJEPA linear-probe protocol (Balestriero & LeCun, 2025): the
concatenated CLS tokens of the last two blocks, or the mean of the patch tokens for models
without a CLS token.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from eo_jepa.errors import BandMismatchError
from eo_jepa.utils.logging import progress_disabled
from eo_jepa.utils.precision import autocast

log = logging.getLogger(__name__)

FeatureKind = Literal["lejepa", "probe", "global", "mean_patch"]
FEATURE_KINDS: tuple[str, ...] = ("lejepa", "probe", "global", "mean_patch")
# What each kind is, for messages and reports.
FEATURE_HELP = {
    "lejepa": "last two blocks' CLS (or mean patch) tokens concatenated, then LayerNorm (LeJEPA probe)",
    "probe": "last two blocks' CLS (or mean patch) tokens concatenated",
    "global": "the encoder's embedding (CLS token or mean patch token)",
    "mean_patch": "mean of the last block's patch tokens",
}


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``None`` means CUDA when available, else CPU."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def band_selection(
    model_bands: Sequence[str], data_bands: Sequence[str] | None, what: str = "the data"
) -> list[int] | None:
    """Indices of the model's bands inside ``data_bands`` (selected by name).

    ``None`` when ``data_bands`` is unknown (then the channel count is checked at read time)
    or already identical. A band the model needs but the data lacks is a
    :class:`BandMismatchError` naming both lists.
    """
    if data_bands is None or tuple(data_bands) == tuple(model_bands):
        return None
    missing = [b for b in model_bands if b not in data_bands]
    if missing:
        raise BandMismatchError(
            f"The model expects bands {list(model_bands)} but {what} has {list(data_bands)} "
            f"(missing {missing}); evaluate RGB models on RGB data and multispectral models on data "
            "that carries their bands."
        )
    return [list(data_bands).index(b) for b in model_bands]


def check_channels(model_bands: Sequence[str], channels: int, what: str = "the input") -> None:
    """Unnamed input: its channel count must equal the model's band count."""
    if channels != len(model_bands):
        raise BandMismatchError(
            f"The model expects {len(model_bands)} bands {list(model_bands)} but {what} has {channels} "
            "unnamed bands; pass data with those bands in that order (or name them in the band descriptions)."
        )


def prepare(
    encoder: Any,
    raw: torch.Tensor,
    *,
    band_index: Sequence[int] | None = None,
    size: int | None = None,
) -> torch.Tensor:
    """Raw sensor units (B,C,H,W) → normalised model input: band selection, resize, ``normalize``."""
    if band_index is not None:
        raw = raw[:, list(band_index)]
    if size is not None and tuple(raw.shape[-2:]) != (size, size):
        raw = F.interpolate(raw, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return encoder.normalize(raw)


def probe_features(encoder: Any, x: torch.Tensor) -> torch.Tensor:
    """LeJEPA probe features of normalised input ``x``: (B, F).

    ``Encoder.forward_probe_features`` (concatenated CLS of the last two blocks, or their mean patch
    tokens without a CLS token); for other modules ``forward_intermediate_cls(x, n=2)``, else the mean
    patch token of ``forward_features``.
    """
    probe = getattr(encoder, "forward_probe_features", None)
    if probe is not None:
        return probe(x)
    intermediate = getattr(encoder, "forward_intermediate_cls", None)
    if intermediate is not None:
        return intermediate(x, n=2)
    return encoder.forward_features(x).mean(dim=(2, 3))


def default_probe_kind(encoder: Any) -> FeatureKind:
    """``"lejepa"`` for an encoder eo-jepa trained with LeJEPA (its checkpoint carries the training
    config with a SIGReg loss), else ``"probe"``."""
    training = (getattr(encoder, "config", None) or {}).get("training_config") or {}
    loss = training.get("loss") if isinstance(training, dict) else None
    return "lejepa" if isinstance(loss, dict) and "num_slices" in loss else "probe"


def _features(encoder: Any, x: torch.Tensor, kind: FeatureKind) -> torch.Tensor:
    if kind == "lejepa":  # LeJEPA's linear-probe input: LayerNorm (no affine) of the concatenation
        f = probe_features(encoder, x).float()
        return F.layer_norm(f, f.shape[-1:])
    if kind == "probe":
        return probe_features(encoder, x)
    if kind == "global":
        return encoder(x)
    return encoder.forward_features(x).mean(dim=(2, 3))


class _Pixels:
    """``dataset[indices[i]]["pixels"]`` as float32 arrays (picklable, for DataLoader workers)."""

    def __init__(self, dataset: Any, indices: Sequence[int]) -> None:
        self.dataset = dataset
        self.indices = [int(i) for i in indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> np.ndarray:
        return np.asarray(self.dataset[self.indices[i]]["pixels"], dtype=np.float32)


def _as_list(items: list[np.ndarray]) -> list[np.ndarray]:
    return items


def _batches(
    dataset: Any, indices: Sequence[int], batch_size: int, workers: int = 0
) -> Iterator[torch.Tensor]:
    """Batches of raw pixels in ``indices`` order; items are read by ``workers`` processes when > 0."""
    pixels = _Pixels(dataset, indices)
    if workers > 0:
        from torch.utils.data import DataLoader

        groups: Iterator[list[np.ndarray]] = iter(
            DataLoader(pixels, batch_size=batch_size, num_workers=workers, collate_fn=_as_list)  # type: ignore[arg-type]
        )
    else:
        groups = (
            [pixels[k] for k in range(s, min(s + batch_size, len(pixels)))]
            for s in range(0, len(pixels), batch_size)
        )
    for items in groups:
        if len({p.shape for p in items}) > 1:  # mixed image sizes (image folders): one by one
            for p in items:
                yield torch.from_numpy(p)[None]
        else:
            yield torch.from_numpy(np.stack(items))


@torch.inference_mode()
def extract_features(
    encoder: Any,
    dataset: Any,
    *,
    indices: Sequence[int] | None = None,
    kind: FeatureKind = "probe",
    batch_size: int = 64,
    device: str | torch.device | None = None,
    bf16: bool = False,
    data_bands: Sequence[str] | None = None,
    resize: bool = False,
    workers: int = 0,
    desc: str = "features",
) -> np.ndarray:
    """Features of every item (``dataset[i]["pixels"]``, raw units (C,H,W)) as float32 (N, F).

    ``data_bands``: the dataset's band names (default ``dataset.bands``); the encoder's bands are
    picked from them by name. Images keep their native size (ViTs take any multiple of the patch
    size, and resizing would change the ground sampling distance); they are resized to
    ``encoder.img_size`` (bilinear, antialiased) when ``resize`` or when their size is not a
    multiple of the patch size. ``workers`` > 0 reads items in that many DataLoader processes.
    """
    dev = resolve_device(device)
    encoder = encoder.eval().to(dev)
    if data_bands is None:
        data_bands = getattr(dataset, "bands", None)
    band_index = band_selection(encoder.bands, data_bands)
    patch = int(encoder.patch_size)
    order = list(range(len(dataset))) if indices is None else [int(i) for i in indices]
    out: list[np.ndarray] = []
    checked = data_bands is not None
    with tqdm(total=len(order), desc=desc, unit="img", disable=progress_disabled()) as bar:
        for raw in _batches(dataset, order, batch_size, workers):
            if not checked:
                check_channels(encoder.bands, raw.shape[1])
                checked = True
            ragged = raw.shape[-1] % patch or raw.shape[-2] % patch
            size = int(encoder.img_size) if resize or ragged else None
            x = prepare(encoder, raw.to(dev), band_index=band_index, size=size)
            with autocast(dev, "bf16" if bf16 else "fp32"):
                feats = _features(encoder, x, kind)
            out.append(feats.float().cpu().numpy())
            bar.update(raw.shape[0])
    if not out:
        return np.zeros((0, 0), dtype=np.float32)
    return np.concatenate(out).astype(np.float32, copy=False)


@torch.inference_mode()
def dense_features(
    encoder: Any,
    raw: np.ndarray | torch.Tensor,
    *,
    window: int | None = None,
    stride: int | None = None,
    batch_size: int = 16,
    device: str | torch.device | None = None,
    bf16: bool = False,
    progress: bool = True,
) -> np.ndarray:
    """Dense feature map (D, ceil(H/p), ceil(W/p)) of one raster in raw units (C, H, W).

    The raster is cut into ``window``-sized tiles (default ``encoder.img_size``) every ``stride``
    pixels (default: ``window``, i.e. no overlap); overlapping patch features are averaged. The
    edges are padded by reflection up to whole windows and the result cropped, so feature pixel
    (i, j) covers input pixels [i·p, (i+1)·p) × [j·p, (j+1)·p).
    """
    dev = resolve_device(device)
    encoder = encoder.eval().to(dev)
    p = int(encoder.patch_size)
    window = int(window or encoder.img_size)
    stride = int(stride or window)
    if window % p or stride % p:
        raise ValueError(f"window ({window}) and stride ({stride}) must be multiples of the patch size {p}")
    x = torch.as_tensor(np.asarray(raw, dtype=np.float32))
    h, w = x.shape[-2:]
    gh, gw = -(-h // p), -(-w // p)

    def starts(n: int) -> list[int]:
        last = max(n - window, 0)
        s = list(range(0, last + 1, stride))
        if s[-1] != last:
            s.append(last)
        return s

    pad_h = max(window, gh * p) - h
    pad_w = max(window, gw * p) - w
    if pad_h or pad_w:
        mode = "reflect" if pad_h < h and pad_w < w else "replicate"
        x = F.pad(x[None], (0, pad_w, 0, pad_h), mode=mode)[0]
    H, W = x.shape[-2:]
    tiles = [(r, q) for r in starts(H) for q in starts(W)]
    acc: torch.Tensor | None = None
    count = torch.zeros(H // p, W // p)
    for k in tqdm(
        range(0, len(tiles), batch_size), desc="windows", disable=progress_disabled() or not progress
    ):
        chunk = tiles[k : k + batch_size]
        batch = torch.stack([x[:, r : r + window, q : q + window] for r, q in chunk]).to(dev)
        with autocast(dev, "bf16" if bf16 else "fp32"):
            feats = encoder.forward_features(encoder.normalize(batch)).float().cpu()
        if acc is None:
            acc = torch.zeros(feats.shape[1], H // p, W // p)
        n = window // p
        for f, (r, q) in zip(feats, chunk, strict=True):
            acc[:, r // p : r // p + n, q // p : q // p + n] += f
            count[r // p : r // p + n, q // p : q // p + n] += 1
    assert acc is not None
    return (acc / count.clamp(min=1))[:, :gh, :gw].numpy()
