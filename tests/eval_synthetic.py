"""Generated labelled imagery for the evaluation tests: class-dependent spectra, texture and noise."""

from __future__ import annotations

from pathlib import Path

import numpy as np

BANDS5 = ("blue", "green", "red", "nir", "swir16")
# Typical Sentinel-2 L2A surface reflectance ×10⁴ (blue, green, red, nir, swir16) per land cover.
SPECTRA = {
    "water": (600, 700, 500, 300, 150),
    "vegetation": (400, 700, 450, 3500, 1800),
    "bare": (1200, 1500, 1900, 2400, 3000),
    "urban": (1100, 1200, 1300, 1700, 2000),
}
CLASSES = tuple(SPECTRA)
NORM_STATS5 = {b: {"mean": 1200.0, "std": 900.0} for b in BANDS5}


def make_chip(label: str, rng: np.random.Generator, size: int = 32, noise: float = 0.25) -> np.ndarray:
    """(5, size, size) float32 reflectance: the class spectrum × a smooth texture, plus noise."""
    spec = np.asarray(SPECTRA[label], dtype=np.float64)[:, None, None]
    yy, xx = np.mgrid[0:size, 0:size] / size
    phase = rng.uniform(0, 2 * np.pi, 2)
    texture = 1 + 0.15 * np.sin(2 * np.pi * (2 * xx + phase[0])) * np.cos(2 * np.pi * (2 * yy + phase[1]))
    brightness = rng.uniform(0.8, 1.2)
    img = spec * texture * brightness * (1 + noise * rng.standard_normal((5, size, size)))
    return np.clip(img, 0, 10000).astype(np.float32)


def write_image_folder(
    root: Path, *, per_class: int = 12, size: int = 32, fmt: str = "tif", seed: int = 0
) -> Path:
    """ROOT/<class>/<n>.<fmt>: 5-band GeoTIFFs with band descriptions, or RGB PNG/JPEG (0–255)."""
    import rasterio
    from PIL import Image
    from rasterio.transform import from_origin

    rng = np.random.default_rng(seed)
    for label in CLASSES:
        (root / label).mkdir(parents=True, exist_ok=True)
        for n in range(per_class):
            chip = make_chip(label, rng, size)
            path = root / label / f"{label}_{n:03d}.{fmt}"
            if fmt == "tif":
                with rasterio.open(
                    path,
                    "w",
                    driver="GTiff",
                    width=size,
                    height=size,
                    count=5,
                    dtype="uint16",
                    crs="EPSG:32633",
                    transform=from_origin(500000 + 1000 * n, 4600000, 10, 10),
                ) as dst:
                    dst.write(chip.round().astype(np.uint16))
                    for i, b in enumerate(BANDS5, start=1):
                        dst.set_band_description(i, b)
            else:
                rgb = (
                    np.clip(chip[[2, 1, 0]] / 2000 * 255, 0, 255).round().astype(np.uint8).transpose(1, 2, 0)
                )
                Image.fromarray(rgb).save(path)
    return root


def write_scene(
    path: Path,
    *,
    height: int = 96,
    width: int = 136,
    seed: int = 0,
    change: bool = False,
    named: bool = True,
    count: int = 5,
) -> Path:
    """A UTM (EPSG:32633, 10 m) 5-band uint16 scene of land-cover blocks; ``change`` turns one block to bare."""
    import rasterio
    from rasterio.transform import from_origin

    img = np.zeros((5, height, width), np.float32)
    block = 32
    for r in range(0, height, block):
        for c in range(0, width, block):
            label = CLASSES[((r // block) * 3 + c // block) % len(CLASSES)]
            if change and r == 0 and c == 0:
                label = "bare" if label != "bare" else "water"
            chip = make_chip(label, np.random.default_rng(seed * 1000 + r * 7 + c), block, noise=0.05)
            img[:, r : r + block, c : c + block] = chip[:, : min(block, height - r), : min(block, width - c)]
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=width,
        height=height,
        count=count,
        dtype="uint16",
        crs="EPSG:32633",
        transform=from_origin(399960.0, 5000040.0, 10.0, 10.0),
        nodata=0,
    ) as dst:
        dst.write(np.clip(img[:count], 1, None).round().astype(np.uint16))
        if named:
            for i, b in enumerate(BANDS5[:count], start=1):
                dst.set_band_description(i, b)
    return path
