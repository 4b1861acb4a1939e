"""Public scene-classification datasets by name, from a local root, with their published protocols.

Nothing is downloaded: the user passes ``--root`` and each dataset is looked for at the
relative paths its official archive unpacks to (first match wins). The protocols are the ones the
papers that introduced the datasets, and the remote-sensing SSL papers that report on them, use:
a random stratified split at a fixed *training ratio*, repeated over seeds, reported as mean ± std.

=================  =======  ====================  =====================================  =====================
name               classes  images                layout under ROOT                      train ratios
=================  =======  ====================  =====================================  =====================
``aid``            30       10,000 JPEG 600x600   ``AID/<class>/*.jpg``                  20 %, 50 % (Xia et al. 2017)
``ucmerced``       21       2,100 TIFF 256x256    ``UCMerced_LandUse/Images/<class>/*``  80 % (Yang & Newsam 2010); 50 %
``rsscn7``         7        2,800 JPEG 400x400    ``RSSCN7/<class>/*.jpg``               50 % (Zou et al. 2015)
``nwpu-resisc45``  45       31,500 JPEG 256x256   ``NWPU-RESISC45/<class>/*.jpg``        10 %, 20 % (Cheng et al. 2017)
``eurosat-rgb``    10       27,000 JPEG 64x64     ``EuroSAT/2750/<class>/*.jpg``         80 % (Helber et al. 2019)
``eurosat-ms``     10       27,000 13-band TIFF   ``EuroSAT_MS/<class>/*.tif``           80 % (Helber et al. 2019)
=================  =======  ====================  =====================================  =====================

EuroSAT-MS files hold Sentinel-2 L1C bands B01-B12 with B10 (cirrus) and B8A: 13 unnamed bands;
B10 is dropped (no L2A model has it) and the other 12 are named as in :mod:`eo_jepa.bands`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from eo_jepa.errors import ConfigError, DataError, did_you_mean
from eo_jepa.eval.datasets import IMAGE_EXTENSIONS, ImageFolderDataset

log = logging.getLogger(__name__)

EUROSAT_MS_BANDS = ("coastal", "blue", "green", "red", "rededge1", "rededge2", "rededge3", "nir", "nir08",
                    "nir09", "swir16", "swir22")  # fmt: skip
EUROSAT_MS_KEEP = (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 12)  # file band 11 (index 10) is B10, cirrus


@dataclass(frozen=True)
class Layout:
    """Where a named dataset lives under a root, what it holds, and its protocol."""

    name: str
    title: str
    paths: tuple[str, ...]  # candidate folders (relative to ROOT) holding the class sub-folders
    num_classes: int
    num_images: int
    train_ratios: tuple[float, ...]
    protocol: str  # the citation / wording of the protocol
    bands: tuple[str, ...] = ("red", "green", "blue")
    channels: tuple[int, ...] | None = None  # file channels kept, before naming
    example: str = ""  # one class folder name, for the error message


LAYOUTS: dict[str, Layout] = {
    layout.name: layout
    for layout in (
        Layout("aid", "AID", ("AID", "aid", "AID_dataset/AID"), 30, 10_000, (0.2, 0.5),
               "Xia et al. 2017: random splits with 20% and 50% of each class for training", example="Airport"),
        Layout("ucmerced", "UC Merced", ("UCMerced_LandUse/Images", "UCMerced_LandUse", "ucmerced"), 21, 2_100,
               (0.8, 0.5), "Yang & Newsam 2010: 80% of each class for training (50% also common)",
               example="agricultural"),
        Layout("rsscn7", "RSSCN7", ("RSSCN7", "rsscn7", "RSSCN7-master"), 7, 2_800, (0.5,),
               "Zou et al. 2015: half of each class for training", example="aGrass"),
        Layout("nwpu-resisc45", "NWPU-RESISC45", ("NWPU-RESISC45", "NWPU-RESISC45/NWPU-RESISC45", "nwpu-resisc45"),
               45, 31_500, (0.1, 0.2), "Cheng et al. 2017: 10% and 20% of each class for training",
               example="airplane"),
        Layout("eurosat-rgb", "EuroSAT (RGB)", ("EuroSAT/2750", "EuroSAT_RGB", "EuroSAT", "eurosat-rgb"), 10, 27_000,
               (0.8,), "Helber et al. 2019: 80% / 20% train / test", example="AnnualCrop"),
        Layout("eurosat-ms", "EuroSAT (13-band)", ("EuroSAT_MS", "EuroSATallBands", "EuroSAT/allBands", "eurosat-ms"),
               10, 27_000, (0.8,), "Helber et al. 2019: 80% / 20% train / test", bands=EUROSAT_MS_BANDS,
               channels=EUROSAT_MS_KEEP, example="AnnualCrop"),
    )
}  # fmt: skip

SUITES: dict[str, tuple[str, ...]] = {
    "scene": ("aid", "ucmerced", "rsscn7", "nwpu-resisc45", "eurosat-rgb", "eurosat-ms"),
    "scene-rgb": ("aid", "ucmerced", "rsscn7", "nwpu-resisc45", "eurosat-rgb"),
}


def get_layout(name: str) -> Layout:
    try:
        return LAYOUTS[name]
    except KeyError:
        raise ConfigError(
            f"Unknown dataset layout {name!r}; known layouts are: {', '.join(LAYOUTS)}.{did_you_mean(name, LAYOUTS)}"
        ) from None


def suite_datasets(suite: str) -> tuple[str, ...]:
    """The dataset names of a suite, or of a comma-separated list of layout names."""
    if suite in SUITES:
        return SUITES[suite]
    names = tuple(n.strip() for n in suite.split(",") if n.strip())
    for n in names:
        if n not in LAYOUTS:
            raise ConfigError(
                f"Unknown suite or dataset {n!r}; suites: {', '.join(SUITES)}; datasets: {', '.join(LAYOUTS)}."
                f"{did_you_mean(n, [*SUITES, *LAYOUTS])}"
            )
    return names


def _has_class_folders(folder: Path) -> bool:
    if not folder.is_dir():
        return False
    for sub in folder.iterdir():
        if sub.is_dir() and any(f.suffix.lower() in IMAGE_EXTENSIONS for f in sub.iterdir()):
            return True
    return False


def find_layout(root: str | Path, name: str) -> Path | None:
    """The folder of dataset ``name`` under ``root``, or None when no candidate path holds class folders."""
    layout = get_layout(name)
    root = Path(root)
    for rel in layout.paths:
        if _has_class_folders(root / rel):
            return root / rel
    return None


def open_layout(root: str | Path, name: str) -> ImageFolderDataset:
    """Dataset ``name`` under ``root`` as an image folder with its bands named; a one-sentence
    :class:`DataError` naming the expected layout when it is not there."""
    layout = get_layout(name)
    folder = find_layout(root, name)
    if folder is None:
        raise DataError(
            f"No {layout.title} dataset under {str(root)!r}: expected {Path(root) / layout.paths[0]!s}/<class>/"
            f"<image> (e.g. {layout.example}/), {layout.num_classes} class folders as the official archive unpacks."
        )
    ds = ImageFolderDataset(folder, bands=layout.bands, channels=layout.channels)
    if len(ds.classes) != layout.num_classes or len(ds) != layout.num_images:
        log.warning(
            "%s at %s has %d classes and %d images, the published dataset %d and %d: results are not comparable "
            "to published figures.", layout.title, folder, len(ds.classes), len(ds), layout.num_classes,
            layout.num_images,
        )  # fmt: skip
    return ds


# ------------------------------------------------------------------------------ generated layouts
def write_synthetic_layouts(
    root: str | Path,
    names: Sequence[str] | None = None,
    *,
    classes: int = 3,
    per_class: int = 6,
    size: int = 32,
    seed: int = 0,
) -> Path:
    """Small generated datasets in the on-disk layout of each named dataset (tests, README table).

    Each class has its own mean colour/spectrum plus texture and noise; file formats follow the
    originals (JPEG for AID/RSSCN7/NWPU/EuroSAT-RGB, RGB TIFF without georeferencing for UC Merced,
    13-band uint16 TIFF for EuroSAT-MS). They are *not* the public datasets.
    """
    import warnings

    import rasterio
    from PIL import Image
    from rasterio.errors import NotGeoreferencedWarning

    root = Path(root)
    rng = np.random.default_rng(seed)
    for name in names or LAYOUTS:
        layout = get_layout(name)
        base = root / layout.paths[0]
        for c in range(classes):
            cls = f"{layout.example}{c}" if c else layout.example
            (base / cls).mkdir(parents=True, exist_ok=True)
            center = rng.uniform(0.15, 0.85, 13)
            for i in range(per_class):
                _yy, xx = np.mgrid[0:size, 0:size] / size
                texture = 0.08 * np.sin(2 * np.pi * (rng.uniform(1, 3) * xx + rng.uniform(0, 1)))[None]
                img = np.clip(
                    center[:, None, None] + texture + 0.06 * rng.standard_normal((13, size, size)), 0, 1
                )
                if name == "eurosat-ms":
                    data = (img * 4000).astype(np.uint16)
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore", NotGeoreferencedWarning)
                        with rasterio.open(base / cls / f"{cls}_{i}.tif", "w", driver="GTiff", width=size,
                                           height=size, count=13, dtype="uint16") as dst:  # fmt: skip
                            dst.write(data)
                    continue
                rgb = (img[:3] * 255).astype(np.uint8).transpose(1, 2, 0)
                ext = "tif" if name == "ucmerced" else "jpg"
                Image.fromarray(rgb).save(
                    base / cls / f"{cls}{i:02d}.{ext}", **({"quality": 95} if ext == "jpg" else {})
                )
    return root
