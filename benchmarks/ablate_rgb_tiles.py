"""The from-scratch RGB tile recipe on NAIP-like tiles: held-out rank and kNN, untrained vs trained (issue #19).

Cuts the demo's NAIP-like aerial rasters (``eo_jepa.demo.naip``, 0.6 m, 5 land covers) into RGB PNG
tiles in one folder per land cover (the tile's majority class): training tiles from
``make_naip_scenes(seed=0)``, held-out tiles from another layout (``seed=1``). Then trains
``configs/train/vits16_rgb_tiles_cpu.yaml`` for one epoch on the training tiles, once per ``--lr``,
and measures, for the run's untrained encoder (``publish --checkpoint init``) and the trained one:
the centred RankMe of the backbone embedding on the held-out tiles (centre crops at the global
view size) and kNN on the LeJEPA probe features with the training tiles as reference (5 per class,
mean of 10 draws, and all of them).

    python benchmarks/ablate_rgb_tiles.py --lr 5e-4 1e-4          # ~4 min of tiles + ~9 min per run (2 busy cores)
    python benchmarks/ablate_rgb_tiles.py --cells 4 --heldout-cells 4 --steps 2   # a quick check

Prints a table and ends with one JSON line of the figures.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
from pathlib import Path

import numpy as np
import rasterio
import torch
from PIL import Image

from eo_jepa.demo.naip import make_naip_scenes
from eo_jepa.demo.scenes import CLASS_CODES
from eo_jepa.eval.datasets import fewshot_indices
from eo_jepa.eval.health import rankme
from eo_jepa.eval.knn import knn_predict
from eo_jepa.train.config import load_train_config
from eo_jepa.train.data import RasterFolderDataset
from eo_jepa.train.health import center_crop
from eo_jepa.train.publish import load_run_encoder
from eo_jepa.train.trainer import run_training

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "train" / "vits16_rgb_tiles_cpu.yaml"
RGB = {"red": 1, "green": 2, "blue": 3}


def make_tiles(out: Path, *, seed: int, cells: int, tile: int) -> Path:
    """RGB PNG tiles of every NAIP-like year, in ``out/tiles/<majority land cover>/``; returns that folder."""
    scenes = make_naip_scenes(out / "scenes", seed=seed, cells=cells)
    with rasterio.open(scenes.landcover_path) as f:
        landcover = f.read(1)
    names = {code: name for name, code in CLASS_CODES.items()}
    for cog in sorted(scenes.cog_dir.glob("*.tif")):
        with rasterio.open(cog) as f:
            rgb = f.read(list(RGB.values()))
        for i in range(0, rgb.shape[1] - tile + 1, tile):
            for j in range(0, rgb.shape[2] - tile + 1, tile):
                label = names[int(np.bincount(landcover[i : i + tile, j : j + tile].ravel()).argmax())]
                folder = out / "tiles" / label
                folder.mkdir(parents=True, exist_ok=True)
                image = Image.fromarray(rgb[:, i : i + tile, j : j + tile].transpose(1, 2, 0))
                image.save(folder / f"{cog.stem}_{i}_{j}.png")
    return out / "tiles"


def load_tiles(folder: Path, size: int) -> tuple[torch.Tensor, list[str]]:
    """Centre crops (raw units) of every tile and its folder's name as the label."""
    ds = RasterFolderDataset(folder, list(RGB), band_map=RGB, pattern="**/*.png")
    x = torch.stack([center_crop(ds[i]["pixels"], size) for i in range(len(ds))])
    return x, [p.parent.name for p in ds.files]


@torch.no_grad()
def measure(encoder, train_x, train_y, test_x, test_y) -> dict[str, float]:
    """Held-out rank of the embedding and of the probe features; 5-shot and full kNN on the probe features."""

    def run(x: torch.Tensor, fn) -> torch.Tensor:
        return torch.cat([fn(encoder.normalize(x[i : i + 128])) for i in range(0, len(x), 128)])

    classes = sorted(set(train_y))
    keep = [i for i, c in enumerate(test_y) if c in classes]  # a small held-out scene may have others
    test_x = test_x[keep]
    ytr = np.array([classes.index(c) for c in train_y])
    yte = np.array([classes.index(test_y[i]) for i in keep])
    emb = run(test_x, encoder)
    probe_te = run(test_x, encoder.forward_probe_features).numpy()
    probe_tr = run(train_x, encoder.forward_probe_features).numpy()
    draws = [fewshot_indices(train_y, 5, seed) for seed in range(10)]
    few = [
        (knn_predict(probe_tr[d], ytr[d], probe_te, k=5, num_classes=len(classes)) == yte).mean()
        for d in draws
    ]
    full = knn_predict(probe_tr, ytr, probe_te, k=20, num_classes=len(classes)) == yte
    return {
        "rank": rankme(emb, center=True),
        "rank_probe": rankme(torch.from_numpy(probe_te), center=True),
        "knn5": float(np.mean(few)),
        "knn_all": float(full.mean()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lr", nargs="+", default=["5e-4", "1e-4"], help="learning rates to train with")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cells", type=int, default=16, help="training scene side in 224 px land-cover cells")
    ap.add_argument("--heldout-cells", type=int, default=8)
    ap.add_argument("--tile", type=int, default=128, help="tile side in pixels")
    ap.add_argument("--steps", type=int, help="optimiser steps (default: one epoch)")
    ap.add_argument("--out", type=Path, help="work folder (default: a temporary one)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp)
        train_dir = make_tiles(out / "train", seed=0, cells=args.cells, tile=args.tile)
        test_dir = make_tiles(out / "heldout", seed=1, cells=args.heldout_cells, tile=args.tile)
        results = {}
        for lr in args.lr:
            overrides = [
                f"output_dir={out / 'runs'}", f"name=lr{lr}_s{args.seed}", f"seed={args.seed}", f"optim.lr={lr}",
                "data.pattern=**/*.png", "log.tensorboard=false", "checkpoint.every=100000",
                *([f"max_steps={args.steps}"] if args.steps else []),
            ]  # fmt: skip
            cfg = load_train_config(CONFIG, overrides)
            run = run_training(cfg, data=train_dir)
            train_x, train_y = load_tiles(train_dir, cfg.views.global_size)
            test_x, test_y = load_tiles(test_dir, cfg.views.global_size)
            results[lr] = {
                tag: measure(load_run_encoder(run, *ckpt)[0].eval(), train_x, train_y, test_x, test_y)
                for tag, ckpt in (("untrained", ("init",)), ("trained", ()))
            }
            results[lr]["tiles"] = {"train": len(train_y), "heldout": len(test_y)}
    print(f"{'lr':>8} {'held-out rank':>18} {'5-shot kNN':>16} {'kNN all':>16}")
    for lr, r in results.items():
        u, t = r["untrained"], r["trained"]
        print(
            f"{lr:>8} {u['rank']:>8.1f} -> {t['rank']:<6.1f} {u['knn5']:>7.3f} -> {t['knn5']:<6.3f}"
            f" {u['knn_all']:>7.3f} -> {t['knn_all']:<6.3f}"
        )
    print(json.dumps({"bench": "ablate_rgb_tiles", "seed": args.seed, "results": results}))


if __name__ == "__main__":
    main()
