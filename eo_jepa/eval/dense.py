"""A linear per-patch segmentation probe on frozen dense features: mIoU and per-class IoU.

The local-task counterpart of the kNN / linear probes: each patch token of
``encoder.forward_features`` (B, D, H/p, W/p) is a sample, its target the majority class of
the mask pixels it covers, and a ``LayerNorm → Linear`` head (the same head and schedule as
:mod:`eo_jepa.eval.linear`) is trained on the training images' patches. On held-out images the
predicted class of a patch is given to each of its pixels (nearest upsampling: a per-patch probe
makes one decision per patch) and scored against the full-resolution mask: a confusion matrix
over the labelled pixels, IoU = TP / (TP + FP + FN) per class, mIoU its mean over the classes
present in the truth or the predictions, and pixel accuracy.

Pair layout of a folder (see :func:`find_pairs`)::

    ROOT/images/<name>.{tif,png,jpg}   ROOT/masks/<name>.{png,tif}       (one split, seeded)
    ROOT/<train|val|test>/images/...   ROOT/<train|val|test>/masks/...  (given splits)
    LoveDA: ROOT/Train/Urban/images_png/1.png + ROOT/Train/Urban/masks_png/1.png, Val/...

Masks are single-band integer class codes with the image's height and width; pixels equal to
``ignore_index`` (default 0: LoveDA's no-data code and the demo's "unknown") are not scored and
not trained on. ``ROOT/classes.json`` (``{"1": "building", ...}``) names the codes, optionally.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from eo_jepa.errors import DataError
from eo_jepa.eval.datasets import read_image, resolve_bands, select_bands
from eo_jepa.eval.features import dense_features
from eo_jepa.eval.linear import LinearProbeConfig, linear_predict, train_linear_probe
from eo_jepa.utils.logging import progress_disabled

log = logging.getLogger(__name__)

IMAGE_DIRS = ("images", "images_png", "img", "imgs")
MASK_DIRS = ("masks", "masks_png", "labels", "label", "ann", "gt")
PAIR_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg")
SPLIT_NAMES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
               "test": "test"}  # fmt: skip


@dataclass
class SegmentationItem:
    """One image (C, H, W, raw units) with its mask (H, W, int64 class codes)."""

    pixels: np.ndarray
    mask: np.ndarray
    id: str = ""


# ---------------------------------------------------------------------------------------- folders
def find_pairs(root: str | Path) -> list[tuple[str, Path, Path, str | None]]:
    """``(id, image, mask, split)`` for every image in an ``images`` folder with a same-stem mask.

    ``split`` is ``train``/``val``/``test`` when a folder on the way from ``root`` says so
    (``train``, ``Val``, ``test``...), else None. An image without a mask is an error (one
    sentence naming it), so a half-copied dataset is not silently scored on a subset.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(
            f"Segmentation folder {str(root)!r} does not exist; pass ROOT holding images/ and masks/."
        )
    pairs: list[tuple[str, Path, Path, str | None]] = []
    image_dirs = sorted(d for d in [root, *root.rglob("*")] if d.is_dir() and d.name.lower() in IMAGE_DIRS)
    for img_dir in image_dirs:
        mask_dir = next((img_dir.parent / m for m in MASK_DIRS if (img_dir.parent / m).is_dir()), None)
        if mask_dir is None:
            raise DataError(
                f"{str(img_dir)!r} has no sibling masks folder ({'/'.join(MASK_DIRS)}); put each mask beside "
                "its image as <folder>/masks/<same name>.png."
            )
        masks = {p.stem: p for p in mask_dir.iterdir() if p.suffix.lower() in PAIR_SUFFIXES}
        rel = img_dir.parent.relative_to(root).parts
        split = next((SPLIT_NAMES[p.lower()] for p in rel if p.lower() in SPLIT_NAMES), None)
        for img in sorted(p for p in img_dir.iterdir() if p.suffix.lower() in PAIR_SUFFIXES):
            if img.stem not in masks:
                raise DataError(
                    f"Image {str(img)!r} has no mask {img.stem}.* in {str(mask_dir)!r}; add it or remove the image."
                )
            pairs.append((img.relative_to(root).as_posix(), img, masks[img.stem], split))
    if not pairs:
        raise DataError(
            f"No image/mask pairs under {str(root)!r}; expected ROOT/images/<name>.png with ROOT/masks/<name>.png "
            "(optionally below train/ and test/ folders, or LoveDA's Train/<domain>/images_png + masks_png)."
        )
    return pairs


def read_mask(path: str | Path) -> np.ndarray:
    """A single-band mask as (H, W) int64."""
    arr = read_image(path, mask=True)[0]
    return arr[0].astype(np.int64)


class SegmentationFolder:
    """Image + mask pairs of a folder (see :func:`find_pairs`), read lazily.

    ``self[i]`` is a :class:`SegmentationItem`; ``splits`` maps train/val/test to positions
    (empty when the folder gives none); ``bands`` as for :class:`eo_jepa.eval.datasets.ImageFolderDataset`.
    """

    def __init__(self, root: str | Path, *, bands: Sequence[str] | None = None) -> None:
        self.root = Path(root)
        pairs = find_pairs(self.root)
        self.ids = [p[0] for p in pairs]
        self.images = [p[1] for p in pairs]
        self.masks = [p[2] for p in pairs]
        self.splits = {s: np.asarray([i for i, p in enumerate(pairs) if p[3] == s], dtype=np.int64)
                       for s in ("train", "val", "test")}  # fmt: skip
        self.bands = resolve_bands(
            bands, read_image(self.images[0])[1], what=f"segmentation folder {str(root)!r}"
        )
        self.class_names = _class_names(self.root)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> SegmentationItem:
        pixels, names = read_image(self.images[i])
        pixels = select_bands(pixels, names, self.bands, self.ids[i])
        mask = read_mask(self.masks[i])
        if mask.shape != pixels.shape[1:]:
            raise DataError(
                f"Mask {str(self.masks[i])!r} is {mask.shape[0]}x{mask.shape[1]} but its image is "
                f"{pixels.shape[1]}x{pixels.shape[2]}; masks must have their image's size."
            )
        return SegmentationItem(pixels, mask, self.ids[i])


def _class_names(root: Path) -> dict[int, str]:
    path = root / "classes.json"
    if not path.is_file():
        return {}
    try:
        raw = json.loads(path.read_text())
        return {int(k): str(v) for k, v in raw.items()}
    except (ValueError, AttributeError, OSError) as exc:
        raise DataError(f'Cannot read {str(path)!r} ({exc}); write it as {{"1": "name", ...}}.') from exc


# ---------------------------------------------------------------------------------------- targets
def patch_targets(mask: np.ndarray, patch: int, ignore_index: int | None = 0) -> np.ndarray:
    """(ceil(H/p), ceil(W/p)) majority class of each patch's labelled pixels (``ignore_index`` when none).

    Ties go to the smaller code. Edge patches count only the pixels inside the mask.
    """
    mask = np.asarray(mask, dtype=np.int64)
    h, w = mask.shape
    gh, gw = -(-h // patch), -(-w // patch)
    fill = -1 if ignore_index is None else ignore_index
    padded = np.full((gh * patch, gw * patch), -1 if ignore_index is None else ignore_index, np.int64)
    padded[:h, :w] = mask
    blocks = padded.reshape(gh, patch, gw, patch).transpose(0, 2, 1, 3).reshape(gh * gw, patch * patch)
    valid_pad = np.zeros((gh * patch, gw * patch), bool)
    valid_pad[:h, :w] = True if ignore_index is None else mask != ignore_index
    valid = valid_pad.reshape(gh, patch, gw, patch).transpose(0, 2, 1, 3).reshape(gh * gw, patch * patch)
    codes = np.unique(padded[valid_pad]) if valid_pad.any() else np.zeros(0, np.int64)
    out = np.full(gh * gw, fill, np.int64)
    if len(codes):
        counts = np.stack([((blocks == c) & valid).sum(1) for c in codes], axis=1)
        has = counts.sum(1) > 0
        out[has] = codes[counts[has].argmax(1)]
    return out.reshape(gh, gw)


# ---------------------------------------------------------------------------------------- features
def _window(encoder: Any, h: int, w: int) -> int:
    """Window of :func:`dense_features`: the whole image (rounded up to the patch) when it is not much
    larger than the model's training size, else the training size."""
    p = int(encoder.patch_size)
    side = -(-max(h, w) // p) * p
    return side if side <= 4 * int(encoder.img_size) else int(encoder.img_size)


def item_features(
    encoder: Any,
    items: Iterable[SegmentationItem],
    *,
    batch_size: int = 16,
    device: Any = None,
    bf16: bool = False,
) -> list[np.ndarray]:
    """Dense features (D, ceil(H/p), ceil(W/p)) of each item (see :func:`eo_jepa.eval.features.dense_features`)."""
    out = []
    for it in tqdm(list(items), desc="dense features", unit="img", disable=progress_disabled()):
        win = _window(encoder, *it.pixels.shape[1:])
        out.append(
            dense_features(
                encoder,
                it.pixels,
                window=win,
                batch_size=batch_size,
                device=device,
                bf16=bf16,
                progress=False,
            )
        )
    return out


# ---------------------------------------------------------------------------------------- scores
@dataclass
class DenseProbeResult:
    miou: float
    pixel_accuracy: float
    per_class_iou: dict[str, float]
    classes: list[int]  # the class codes, in the order of the confusion matrix
    confusion: list[list[int]]  # rows: truth, columns: prediction (labelled test pixels)
    num_train_patches: int
    num_test_pixels: int
    seeds: list[int] = field(default_factory=list)
    miou_per_seed: list[float] = field(default_factory=list)

    @property
    def miou_std(self) -> float:
        return float(np.std(self.miou_per_seed)) if self.miou_per_seed else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "miou_std": self.miou_std}

    def summary(self) -> str:
        per = ", ".join(f"{k} {100 * v:.1f}" for k, v in self.per_class_iou.items())
        return (
            f"dense  mIoU {100 * self.miou:6.2f} ± {100 * self.miou_std:5.2f} %  pixel acc {100 * self.pixel_accuracy:6.2f} %"
            f"  (train {self.num_train_patches} patches, test {self.num_test_pixels} px; IoU: {per})"
        )


def confusion_matrix(truth: np.ndarray, pred: np.ndarray, num_classes: int) -> np.ndarray:
    """(C, C) int64 counts, rows truth, columns prediction; inputs are class indices 0..C-1."""
    flat = np.asarray(truth, np.int64).ravel() * num_classes + np.asarray(pred, np.int64).ravel()
    return np.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def iou_scores(conf: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Per-class IoU (NaN for a class absent from truth and predictions), mIoU over the others, pixel accuracy."""
    conf = np.asarray(conf, np.float64)
    tp = np.diag(conf)
    union = conf.sum(0) + conf.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
    miou = float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")
    total = conf.sum()
    return iou, miou, float(tp.sum() / total) if total else float("nan")


def _upsample(pred: np.ndarray, patch: int, shape: tuple[int, int]) -> np.ndarray:
    return np.repeat(np.repeat(pred, patch, axis=0), patch, axis=1)[: shape[0], : shape[1]]


def default_config(num_patches: int, *, steps: int = 500, batch_size: int = 1024) -> LinearProbeConfig:
    """The linear probe's recipe (:mod:`eo_jepa.eval.linear`) sized to at least ``steps`` optimiser steps
    (and 10 epochs), so that a few images train the head as fully as a large dataset does."""
    per_epoch = max(-(-num_patches // batch_size), 1)
    epochs = max(10, -(-steps // per_epoch))
    return LinearProbeConfig(
        epochs=epochs, lr=1e-3, batch_size=batch_size, warmup_epochs=max(1, epochs // 10)
    )


def dense_probe(
    encoder: Any,
    train: Sequence[SegmentationItem],
    test: Sequence[SegmentationItem],
    *,
    ignore_index: int | None = 0,
    class_names: Mapping[int, str] | None = None,
    seeds: Sequence[int] = (0,),
    config: LinearProbeConfig | None = None,
    max_train_patches: int = 200_000,
    batch_size: int = 16,
    device: Any = None,
    bf16: bool = False,
    train_features: list[np.ndarray] | None = None,
    test_features: list[np.ndarray] | None = None,
) -> DenseProbeResult:
    """Train the per-patch linear probe on ``train`` and score it on ``test`` (mIoU, per-class IoU).

    Features are extracted once (or passed in, e.g. from a cache); each seed re-initialises and
    re-orders the head (and re-draws the patch subsample when there are more than
    ``max_train_patches``); reported figures are the mean over seeds (the confusion matrix is the
    first seed's).
    """
    if not train or not test:
        raise DataError("The dense probe needs at least one training and one test image with a mask.")
    patch = int(encoder.patch_size)
    ftr = (
        train_features
        if train_features is not None
        else item_features(encoder, train, batch_size=batch_size, device=device, bf16=bf16)
    )
    fte = (
        test_features
        if test_features is not None
        else item_features(encoder, test, batch_size=batch_size, device=device, bf16=bf16)
    )
    xs, ys = [], []
    for it, f in zip(train, ftr, strict=True):
        target = patch_targets(it.mask, patch, ignore_index)
        if target.shape != f.shape[1:]:
            raise DataError(
                f"Features of {it.id!r} are {f.shape[1:]} patches but its mask gives {target.shape}."
            )
        keep = target.ravel() != (-1 if ignore_index is None else ignore_index)
        xs.append(f.reshape(f.shape[0], -1).T[keep])
        ys.append(target.ravel()[keep])
    x = np.concatenate(xs).astype(np.float32)
    y_codes = np.concatenate(ys)
    ignore = -1 if ignore_index is None else ignore_index
    codes = sorted(set(np.unique(y_codes).tolist()) | {
        int(c) for it in test for c in np.unique(it.mask).tolist() if c != ignore
    })  # fmt: skip
    if len(np.unique(y_codes)) < 2:
        raise DataError("The training masks label fewer than 2 classes; the dense probe needs at least 2.")
    index = {c: i for i, c in enumerate(codes)}
    y = np.asarray([index[c] for c in y_codes.tolist()], np.int64)
    lut_size = max(codes) + 1
    cfg = config or default_config(min(len(y), max_train_patches))
    mious, accs, ious, first_conf = [], [], [], None
    for seed in seeds:
        sel = np.arange(len(y))
        if len(y) > max_train_patches:
            sel = np.sort(np.random.default_rng(seed).choice(len(y), max_train_patches, replace=False))
        head = train_linear_probe(
            x[sel], y[sel], len(codes), LinearProbeConfig(**{**asdict(cfg), "seed": int(seed)})
        )
        conf = np.zeros((len(codes), len(codes)), np.int64)
        for it, f in zip(test, fte, strict=True):
            pred = linear_predict(head, f.reshape(f.shape[0], -1).T).reshape(f.shape[1:])
            pix = _upsample(pred, patch, it.mask.shape)
            labelled = it.mask != ignore
            lut = np.full(max(lut_size, int(it.mask.max()) + 1), -1, np.int64)
            for c, i in index.items():
                lut[c] = i
            truth = lut[it.mask[labelled]]
            if (truth < 0).any():  # cannot happen: codes include every test code
                raise DataError(f"Mask of {it.id!r} has codes outside {codes}.")
            conf += confusion_matrix(truth, pix[labelled], len(codes))
        iou, miou, acc = iou_scores(conf)
        mious.append(miou)
        accs.append(acc)
        ious.append(iou)
        first_conf = conf if first_conf is None else first_conf
    names = dict(class_names or {})
    mean_iou = np.nanmean(np.stack(ious), axis=0) if len(ious) > 1 else ious[0]
    assert first_conf is not None
    return DenseProbeResult(
        miou=float(np.mean(mious)),
        pixel_accuracy=float(np.mean(accs)),
        per_class_iou={names.get(c, str(c)): float(v) for c, v in zip(codes, mean_iou, strict=True)},
        classes=codes,
        confusion=first_conf.tolist(),
        num_train_patches=int(min(len(y), max_train_patches)),
        num_test_pixels=int(first_conf.sum()),
        seeds=[int(s) for s in seeds],
        miou_per_seed=[float(m) for m in mious],
    )


def split_folder(
    folder: SegmentationFolder, *, test_fraction: float = 0.25, seed: int = 0
) -> dict[str, np.ndarray]:
    """The folder's own train/test(/val) split, else a seeded random split of the images."""
    if len(folder.splits["train"]) and (len(folder.splits["test"]) or len(folder.splits["val"])):
        test = folder.splits["test"] if len(folder.splits["test"]) else folder.splits["val"]
        return {"train": folder.splits["train"], "test": test}
    n = len(folder)
    if n < 2:
        raise DataError(
            f"Segmentation folder {str(folder.root)!r} has {n} image; the probe needs at least 2."
        )
    order = np.random.default_rng(seed).permutation(n)
    n_test = min(max(round(test_fraction * n), 1), n - 1)
    return {"train": np.sort(order[n_test:]), "test": np.sort(order[:n_test])}


def tiles(pixels: np.ndarray, mask: np.ndarray, size: int, prefix: str = "") -> list[SegmentationItem]:
    """Cut one scene (C, H, W) + mask (H, W) into non-overlapping ``size`` tiles (edges dropped)."""
    h, w = mask.shape
    out = []
    for r in range(0, h - size + 1, size):
        for c in range(0, w - size + 1, size):
            out.append(SegmentationItem(pixels[:, r : r + size, c : c + size], mask[r : r + size, c : c + size],
                                        f"{prefix}{r}_{c}"))  # fmt: skip
    return out
