"""Labelled data for probes: our chip stores and image-folder datasets, with deterministic splits.

Two layouts are understood:

- a chip store (``DIR/dataset.json``) whose index has a ``label`` column (read through
  :class:`eo_jepa.chips.ChipDataset`);
- an image folder: one sub-folder per class holding JPEG/PNG/GeoTIFF files, the layout of
  AID, UC Merced, RSSCN7 and EuroSAT. JPEG/PNG are read as RGB; GeoTIFFs by band name when
  their band descriptions carry canonical names, otherwise unnamed (the encoder's band order is
  assumed and the count checked).

Splits are a seeded stratified split (each class split in the same proportions, the same seed
gives the same split on every machine), the chip store's own ``split`` column, or a split file
(JSON ``{"train": [ids...], "test": [ids...]}``; ids are chip ids or paths relative to the folder).
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from eo_jepa.bands import match_bands
from eo_jepa.chips import ChipDataset
from eo_jepa.errors import BandMismatchError, DataError
from eo_jepa.models import canonical_bands

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".tif", ".tiff")
RGB_BANDS = ("red", "green", "blue")
SPLITS = ("train", "val", "test")


def raster_band_names(descriptions: Sequence[str | None]) -> tuple[str, ...] | None:
    """Canonical names of a raster's bands from its descriptions, or None unless all are named.

    Names are matched by :func:`eo_jepa.bands.match_band`, the one matcher the trainer uses too.
    """
    return match_bands(descriptions)


@contextmanager
def quiet_rasterio() -> Iterator[None]:
    """Silence rasterio's NotGeoreferencedWarning: plain images (JPEG/PNG/TIFF tiles of scene datasets)
    carry no georeferencing, and a warning per read would drown a run's log."""
    from rasterio.errors import NotGeoreferencedWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        yield


def read_image(path: str | Path, *, mask: bool = False) -> tuple[np.ndarray, tuple[str, ...] | None]:
    """Pixels (C, H, W) float32 in the file's units (8- or 16-bit kept as is) and the band names.

    TIFFs (georeferenced or not, any band count: EuroSAT's 13-band files) are read with rasterio,
    named by their band descriptions when every one matches a band; JPEG/PNG with Pillow: 3 or 4
    channels are red, green, blue (alpha dropped); a single channel (grey, 16-bit, palette) is
    unnamed. ``mask=True`` keeps palette indices (segmentation masks) instead of converting them.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    try:
        if suffix in (".tif", ".tiff"):
            import rasterio

            with quiet_rasterio(), rasterio.open(path) as src:
                return src.read().astype(np.float32), raster_band_names(src.descriptions)
        from PIL import Image

        with Image.open(path) as img:
            if not mask and img.mode in ("LA", "1"):
                arr = np.asarray(img.convert("L"))
            elif not mask and img.mode in ("P", "PA", "CMYK", "YCbCr", "HSV", "LAB"):
                arr = np.asarray(img.convert("RGB"))
            else:
                arr = np.asarray(img)
        if arr.ndim == 2:
            return arr.astype(np.float32)[None], None
        arr = arr[..., :3] if arr.shape[-1] == 4 else arr
        names = RGB_BANDS if arr.shape[-1] == 3 else None
        return np.ascontiguousarray(arr.transpose(2, 0, 1).astype(np.float32)), names
    except (OSError, ValueError) as exc:
        if isinstance(exc, DataError):
            raise
        raise DataError(f"Cannot read image {str(path)!r} ({exc}); remove or replace the file.") from exc


def resolve_bands(
    given: Sequence[str] | None, in_file: tuple[str, ...] | None, what: str
) -> tuple[str, ...] | None:
    """The band names of a dataset: ``given`` (by name, each must be known and present in the files when
    they name their bands), else the names the files carry, else None (unnamed)."""
    if given is None:
        return in_file
    names = canonical_bands(given)
    if in_file is not None:
        missing = [b for b in names if b not in in_file]
        if missing:
            raise BandMismatchError(
                f"Bands {missing} are not in {what}, which has {list(in_file)}; choose --bands among those."
            )
    return names


def select_bands(
    pixels: np.ndarray, names: tuple[str, ...] | None, bands: tuple[str, ...] | None, item: str
) -> np.ndarray:
    """``pixels`` with the channels of ``bands`` in that order (by name, or checked by count when unnamed)."""
    if bands is None:
        return pixels
    if names is None:
        if pixels.shape[0] != len(bands):
            raise DataError(
                f"Image {item!r} has {pixels.shape[0]} bands but the dataset has {len(bands)} "
                f"{list(bands)}; keep one band layout per dataset."
            )
        return pixels
    if names == bands:
        return pixels
    if not set(bands) <= set(names):
        raise DataError(
            f"Image {item!r} has bands {list(names)} but the dataset has {list(bands)}; keep one band layout per dataset."
        )
    return pixels[[names.index(b) for b in bands]]


class ImageFolderDataset:
    """Class sub-folders of images (AID / UC Merced / RSSCN7 / EuroSAT layout).

    ``__getitem__`` gives ``dict(pixels=(C,H,W) float32, label=str, chip_id=relative path)``.
    ``bands`` are taken from the first file (RGB for JPEG/PNG, band descriptions for GeoTIFF) or
    given explicitly; ``None`` means unnamed bands.
    """

    def __init__(
        self, root: str | Path, *, bands: Sequence[str] | None = None, channels: Sequence[int] | None = None
    ) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(f"Dataset folder {str(self.root)!r} does not exist; pass an existing folder.")
        classes = sorted(d.name for d in self.root.iterdir() if d.is_dir() and not d.name.startswith("."))
        paths: list[Path] = []
        labels: list[str] = []
        for cls in classes:
            files = sorted(
                f
                for f in (self.root / cls).rglob("*")
                if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS
            )
            paths += files
            labels += [cls] * len(files)
        if not paths:
            raise DataError(
                f"No images found in class sub-folders of {str(self.root)!r}; expected ROOT/<class>/<image> "
                f"with extensions {', '.join(IMAGE_EXTENSIONS)}."
            )
        self.paths = paths
        self.labels: list[str | None] = list(labels)
        self.classes = sorted(set(labels))
        self.ids = [p.relative_to(self.root).as_posix() for p in paths]
        # channels: file channels kept (0-based, in this order) before naming, e.g. EuroSAT-MS without B10
        self.channels = None if channels is None else [int(c) for c in channels]
        self.bands: tuple[str, ...] | None = resolve_bands(
            bands, None if self.channels else read_image(paths[0])[1], f"image folder {str(self.root)!r}"
        )
        self.sensor = None

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict[str, Any]:
        pixels, names = read_image(self.paths[i])
        if self.channels is not None:
            if max(self.channels) >= pixels.shape[0]:
                raise DataError(
                    f"Image {self.ids[i]!r} has {pixels.shape[0]} bands, fewer than this dataset's layout reads; "
                    "keep one band layout per dataset."
                )
            pixels, names = pixels[self.channels], None
        pixels = select_bands(pixels, names, self.bands, self.ids[i])
        return {"pixels": pixels, "label": self.labels[i], "chip_id": self.ids[i], "row": i}


def stratified_split(
    labels: Sequence[str],
    *,
    test_fraction: float = 0.2,
    val_fraction: float = 0.0,
    seed: int = 0,
    groups: Sequence[str] | None = None,
) -> dict[str, np.ndarray]:
    """Seeded stratified split of positions ``0..N-1``: each class split in the same proportions.

    Classes are visited in sorted order and each gets its own permutation from one
    ``numpy.random.default_rng(seed)``, so the split depends only on labels and seed. A class with
    at least 2 items keeps at least one in train and one in test. With ``groups`` (e.g. the chip
    store's ``location_id``: the same place on several dates) whole groups are assigned, so no
    place is in both train and test; a group belongs to the class of its first item.
    """
    if not 0 < test_fraction < 1 or not 0 <= val_fraction < 1 or test_fraction + val_fraction >= 1:
        raise DataError(
            f"Split fractions test={test_fraction}, val={val_fraction} are invalid; use 0 < test, 0 <= val, "
            "test + val < 1."
        )
    labels_arr = np.asarray(labels, dtype=object)
    group_arr = np.asarray(groups if groups is not None else np.arange(len(labels_arr)), dtype=object)
    members: dict[object, list[int]] = {}
    for i, g in enumerate(group_arr.tolist()):
        members.setdefault(g, []).append(i)
    units = list(members)  # first-seen order
    unit_label = np.asarray([labels_arr[members[u][0]] for u in units], dtype=object)
    rng = np.random.default_rng(seed)
    out: dict[str, list[int]] = {s: [] for s in SPLITS}
    for cls in sorted(set(unit_label.tolist())):
        idx = np.flatnonzero(unit_label == cls)
        idx = idx[rng.permutation(len(idx))]
        n = len(idx)
        n_test = min(max(round(test_fraction * n), 1), n - 1) if n >= 2 else 0
        n_val = min(round(val_fraction * n), max(n - n_test - 1, 0))
        parts = {"test": idx[:n_test], "val": idx[n_test : n_test + n_val], "train": idx[n_test + n_val :]}
        for split, chosen in parts.items():
            for u in chosen:
                out[split] += members[units[u]]
    return {s: np.sort(np.asarray(v, dtype=np.int64)) for s, v in out.items()}


def fewshot_indices(labels: Sequence[str], shots: int, seed: int) -> np.ndarray:
    """``shots`` positions per class (all of a class when it has fewer), drawn with ``seed``."""
    labels_arr = np.asarray(labels, dtype=object)
    rng = np.random.default_rng(seed)
    picked: list[int] = []
    for cls in sorted(set(labels_arr.tolist())):
        idx = np.flatnonzero(labels_arr == cls)
        picked += rng.choice(idx, size=min(shots, len(idx)), replace=False).tolist()
    return np.sort(np.asarray(picked, dtype=np.int64))


def read_split_file(path: str | Path, ids: Sequence[str]) -> dict[str, np.ndarray]:
    """Positions of each split from a JSON split file ``{"train": [ids], "test": [ids], "val": [...]}``."""
    path = Path(path)
    try:
        spec = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"Cannot read split file {str(path)!r} ({exc}); pass a JSON file.") from exc
    if not isinstance(spec, dict) or "train" not in spec or not set(spec) <= set(SPLITS):
        raise DataError(
            f"Split file {str(path)!r} must be a JSON object with a 'train' list and 'test'/'val' lists of ids."
        )
    position = {i: k for k, i in enumerate(ids)}
    out: dict[str, np.ndarray] = {}
    for split in SPLITS:
        wanted = spec.get(split, [])
        unknown = [i for i in wanted if i not in position]
        if unknown:
            raise DataError(
                f"Split file {str(path)!r} lists {len(unknown)} unknown ids (first: {unknown[0]!r}); "
                "use chip ids or paths relative to the dataset folder."
            )
        out[split] = np.sort(np.asarray([position[i] for i in wanted], dtype=np.int64))
    return out


def _known_bands(bands: Sequence[str] | None) -> tuple[str, ...] | None:
    """``bands`` by canonical name (an unknown name is a :class:`BandMismatchError`), or None."""
    if bands is None:
        return None
    return canonical_bands(bands)


def open_unlabelled(path: str | Path, *, bands: Sequence[str] | None = None) -> Any:
    """A chip store or an image folder for label-free uses (health, embeddings), with ``bands`` checked."""
    if (Path(path) / "dataset.json").is_file():
        return ChipDataset(path, bands=_known_bands(bands))
    return ImageFolderDataset(path, bands=bands)


class _Subset:
    """A view of ``dataset`` at ``positions`` that keeps its attributes (bands, ...)."""

    def __init__(self, dataset: Any, positions: np.ndarray) -> None:
        self.dataset = dataset
        self.positions = positions
        self.bands = getattr(dataset, "bands", None)

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.dataset[int(self.positions[i])]


@dataclass
class LabelledData:
    """A labelled dataset with its splits (positions into ``dataset``)."""

    dataset: Any  # items: dict(pixels=(C,H,W) raw units, label, chip_id)
    labels: list[str]
    ids: list[str]
    bands: tuple[str, ...] | None
    splits: dict[str, np.ndarray]
    source: str  # "chip-store" or "image-folder"
    split_source: str  # "store", "file" or "seeded"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def classes(self) -> list[str]:
        return sorted(set(self.labels))

    @property
    def eval_split(self) -> str:
        """'test' when it has items, else 'val'."""
        return "test" if len(self.splits.get("test", ())) else "val"


def open_labelled(
    path: str | Path,
    *,
    bands: Sequence[str] | None = None,
    split_file: str | Path | None = None,
    seed: int = 0,
    test_fraction: float = 0.2,
    use_store_splits: bool = True,
) -> LabelledData:
    """Open a chip store with labels or an image folder, and resolve its train/test split.

    Chip stores use their own ``split`` column when it has labelled train and test/val rows
    (unless ``use_store_splits`` is False); otherwise, and for image folders, a seeded stratified
    split (for chip stores grouped by ``location_id``, so no place is in train and test on different
    dates); a ``split_file`` overrides both.
    """
    path = Path(path)
    if (path / "dataset.json").is_file():
        store = ChipDataset(path, bands=_known_bands(bands))
        keep = np.asarray([k for k, lab in enumerate(store.labels) if lab is not None], dtype=np.int64)
        if len(keep) == 0:
            raise DataError(
                f"Chip store {str(path)!r} has no labelled chips; give the AOIs a 'label' property and rebuild."
            )
        dataset: Any = _Subset(store, keep)
        labels = [str(store.labels[k]) for k in keep]
        chip_ids = store.index["chip_id"].astype(str).to_numpy()[keep].tolist()
        store_splits = store.index["split"].astype(str).to_numpy()[keep]
        splits: dict[str, np.ndarray] | None = None
        split_source = "seeded"
        if split_file is not None:
            splits, split_source = read_split_file(split_file, chip_ids), "file"
        elif use_store_splits:
            candidate = {s: np.flatnonzero(store_splits == s) for s in SPLITS}
            if len(candidate["train"]) and (len(candidate["test"]) or len(candidate["val"])):
                splits, split_source = candidate, "store"
        if splits is None:
            locations = store.index["location_id"].astype(str).to_numpy()[keep].tolist()
            splits = stratified_split(labels, test_fraction=test_fraction, seed=seed, groups=locations)
        return LabelledData(
            dataset,
            labels,
            chip_ids,
            tuple(store.bands),
            splits,
            "chip-store",
            split_source,
            {"sensor": getattr(store, "sensor", None)},
        )
    folder = ImageFolderDataset(path, bands=bands)
    labels = [str(lab) for lab in folder.labels]
    if split_file is not None:
        splits, split_source = read_split_file(split_file, folder.ids), "file"
    else:
        splits, split_source = stratified_split(labels, test_fraction=test_fraction, seed=seed), "seeded"
    return LabelledData(folder, labels, folder.ids, folder.bands, splits, "image-folder", split_source)
