"""Generated training data for the trainer tests: a chip store written with the documented layout.

The store is the contract (dataset.json, chips.zarr with pixels/valid, index.parquet,
norm_stats.json, data_card.md), written with the chip builder's own array writer; its chips are
synthetic Sentinel-2-like uint16 reflectances of four land-cover classes (distinct spectra and
textures), two dates per location, with a few invalid (masked) pixels.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

BANDS = ["red", "green", "blue", "nir", "swir16"]
# Mean reflectance x 10000 per class (water, vegetation, bare soil, urban), roughly as in S2 L2A.
SPECTRA = {
    "water": [300, 500, 700, 200, 100],
    "vegetation": [400, 800, 500, 3500, 1800],
    "bare": [2200, 1800, 1400, 2800, 3300],
    "urban": [1500, 1400, 1300, 2000, 2200],
}


def _texture(rng: np.random.Generator, label: str, size: int) -> np.ndarray:
    y, x = np.mgrid[0:size, 0:size] / size
    if label == "water":
        return 0.05 * rng.standard_normal((size, size))
    if label == "vegetation":  # field stripes at a random angle
        a = rng.uniform(0, np.pi)
        return 0.25 * np.sin(2 * np.pi * 6 * (x * np.cos(a) + y * np.sin(a)) + rng.uniform(0, 6))
    if label == "bare":  # smooth blobs
        cx, cy = rng.uniform(0, 1, 2)
        return 0.3 * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / 0.05) - 0.1
    blocks = rng.uniform(-0.3, 0.3, (size // 8 + 1, size // 8 + 1))  # urban: a block grid
    return np.kron(blocks, np.ones((8, 8)))[:size, :size]


def make_chip_store(
    root: str | Path,
    *,
    n_locations: int = 48,
    dates: int = 2,
    size: int = 32,
    seed: int = 0,
    rgb: bool = False,
) -> Path:
    """Write a chip store of ``n_locations * dates`` chips (all in the train split) and return its path.

    ``rgb=True``: 8-bit red/green/blue chips (sensor 'rgb') instead of 5-band uint16 reflectance.
    """
    import geopandas as gpd
    from shapely.geometry import box

    from eo_jepa.chips.store import ChipWriter, create_arrays

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    labels = list(SPECTRA)
    n = n_locations * dates
    bands = BANDS[:3] if rgb else BANDS
    dtype, top, div = ("uint8", 255, 12.0) if rgb else ("uint16", 10000, 1.0)
    create_arrays(root, n, len(bands), size, dtype)
    writer = ChipWriter(root, fsync=False)
    rows, all_px = [], []
    for loc in range(n_locations):
        label = labels[loc % len(labels)]
        base = _texture(rng, label, size)
        for d in range(dates):
            i = loc * dates + d
            spectrum = (
                np.array(SPECTRA[label][: len(bands)], dtype=np.float64) * rng.uniform(0.85, 1.15) / div
            )
            noise = 0.03 * rng.standard_normal((len(bands), size, size))
            px = np.clip(spectrum[:, None, None] * (1 + base[None] + noise), 1, top).astype(dtype)
            valid = np.ones((size, size), dtype=bool)
            if i % 5 == 0:  # a masked cloud patch
                valid[: size // 4, : size // 3] = False
                px[:, ~valid] = 0
            writer.write(i, px, valid)
            all_px.append(px[:, valid].astype(np.float64))
            lon, lat = 10 + loc * 0.01, 45.0
            rows.append(
                {
                    "chip_id": f"c{i:04d}",
                    "row": i,
                    "location_id": f"loc{loc:03d}",
                    "aoi_id": f"aoi_{label}",
                    "split": "train",
                    "label": label,
                    "datetime": f"2023-0{d + 1}-15T10:00:00Z",
                    "crs": "EPSG:32632",
                    "transform": [10.0, 0.0, 500000.0 + loc * 320, 0.0, -10.0, 5000000.0],
                    "item_ids": [f"item{loc}_{d}"],
                    "hrefs": [],
                    "cloud_fraction": 0.0,
                    "nodata_fraction": float(1 - valid.mean()),
                    "status": "ok",
                    "reason": None,
                    "geometry": box(lon, lat, lon + 0.004, lat + 0.003),
                }
            )
    gpd.GeoDataFrame(rows, geometry="geometry", crs="EPSG:4326").to_parquet(root / "index.parquet")
    stacked = np.concatenate(all_px, axis=1)
    stats = {
        "bands": {
            b: {
                "count": int(stacked.shape[1]),
                "mean": float(stacked[k].mean()),
                "std": float(stacked[k].std()),
                "min": float(stacked[k].min()),
                "max": float(stacked[k].max()),
            }
            for k, b in enumerate(bands)
        },
        "band_order": bands,
        "units": "8-bit digital numbers" if rgb else "reflectance x 10000",
    }
    (root / "norm_stats.json").write_text(json.dumps(stats))
    (root / "data_card.md").write_text("---\nname: synthetic-test\n---\n# Synthetic chips for tests\n")
    info = {
        "sensor": "rgb" if rgb else "sentinel-2-l2a",
        "bands": bands,
        "chip_size": size,
        "gsd_m": 10,
        "dtype": dtype,
        "counts": {"planned": n, "ok": n, "rejected": 0},
        "config": {"name": "synthetic-test"},
        "eo_jepa_version": "test",
        "created": "2026-01-01T00:00:00Z",
    }
    (root / "dataset.json").write_text(json.dumps(info))
    return root
