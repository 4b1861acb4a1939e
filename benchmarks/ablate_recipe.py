"""Recipe ablation: which LeJEPA setting keeps the backbone embedding's rank (issue #19).

Trains the quickstart's model (ViT-Tiny/8 on the demo scenes' chips) with the paper's lambda at the
quickstart's batch (``base``) and with one change at a time, or a named combination, towards or
away from the official LeJEPA recipe, a few seeds each, and reads the trainer's own health figures
(``health.jsonl``, measured on the chip store's held-out split: see ``eo_jepa/train/health.py``).
Columns: RankMe of the backbone embedding at step 0 and at the end (centred), of the projector
output (centred), the standardised SIGReg statistic of the backbone embedding, within-probe-set kNN
top-1, the quickstart's 5-shot kNN of the run's untrained and trained encoders, and the last loss.
It first prints the SIGReg statistic of Gaussian and of low-rank embeddings against the batch size.

    python benchmarks/ablate_recipe.py                       # builds the small demo chips in a temp dir
    python benchmarks/ablate_recipe.py --chips DIR --steps 30 --seeds 0 1 --only base lam_batch256 lb256_lr2e-4

Prints a table (mean ± std over seeds) and ends with one JSON line of the figures.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

import numpy as np

# name -> (what it changes, overrides on top of the quickstart's training config)
VARIANTS: dict[str, tuple[str, list[str]]] = {
    "base": ("paper lambda 0.05 at batch 32 (proj 2x512->64, 256 slices, 2+2 views, lr 1e-3)", []),
    "proj_paper": (
        "paper projector 3 layers 2048 -> 128",
        ["model.proj_layers=3", "model.proj_hidden=2048", "model.proj_out=128"],
    ),
    "proj_out16": ("projector output 16 (official minimal example)", ["model.proj_out=16"]),
    "proj_linear": ("linear projector (1 layer, no BatchNorm)", ["model.proj_layers=1"]),
    "lam0.02": ("lambda 0.02", ["loss.lam=0.02"]),
    "lam0.2": ("lambda 0.2", ["loss.lam=0.2"]),
    "lam0.5": ("lambda 0.5", ["loss.lam=0.5"]),
    "slices1024": ("1024 slices", ["loss.num_slices=1024"]),
    "bs64": ("batch 64 per view (2x)", ["data.batch_size=64"]),
    "bs128": ("batch 128 per view (4x)", ["data.batch_size=128"]),
    "bs128_lam0.0125": (
        "batch 128, lambda 0.0125 (lambda x batch as base)",
        ["data.batch_size=128", "loss.lam=0.0125"],
    ),
    "lam_batch256": (
        "lambda 0.05 meant at batch 256 (loss.lam_batch): 0.30 at 32",
        ["loss.lam_batch=256"],
    ),
    "embed0.05": ("+ SIGReg on the backbone embedding, weight 0.05", ["loss.embed_lam=0.05"]),
    "embed0.2": ("+ SIGReg on the backbone embedding, weight 0.2", ["loss.embed_lam=0.2"]),
    "embed0.5": ("+ SIGReg on the backbone embedding, weight 0.5", ["loss.embed_lam=0.5"]),
    "embed1": ("+ SIGReg on the backbone embedding, weight 1", ["loss.embed_lam=1.0"]),
    "embed2": ("+ SIGReg on the backbone embedding, weight 2", ["loss.embed_lam=2.0"]),
    "local6": ("6 local views (paper)", ["views.num_local=6"]),
    "local0": ("no local views", ["views.num_local=0"]),
    "lr5e-4": ("lr 5e-4 (paper)", ["optim.lr=5e-4"]),
    "wd0": ("no weight decay", ["optim.weight_decay=0.0"]),
    "nowarmup": ("no warm-up", ["optim.warmup_steps=0"]),
    # combinations of the best single changes
    "lb256_lr5e-4": ("lam_batch 256 + lr 5e-4", ["loss.lam_batch=256", "optim.lr=5e-4"]),
    "lam0.5_lr5e-4": ("lambda 0.5 + lr 5e-4", ["loss.lam=0.5", "optim.lr=5e-4"]),
    "lb256_lr5e-4_local0": (
        "lam_batch 256 + lr 5e-4 + no local views",
        ["loss.lam_batch=256", "optim.lr=5e-4", "views.num_local=0"],
    ),
    "lam0.5_lr5e-4_local0": (
        "lambda 0.5 + lr 5e-4 + no local views",
        ["loss.lam=0.5", "optim.lr=5e-4", "views.num_local=0"],
    ),
    "local0_embed1": (
        "no local views + backbone SIGReg weight 1 (on the global views only)",
        ["views.num_local=0", "loss.embed_lam=1.0"],
    ),
    "lb256_embed1": (
        "lam_batch 256 + backbone SIGReg weight 1",
        ["loss.lam_batch=256", "loss.embed_lam=1.0"],
    ),
    "lr2e-4": ("lr 2e-4", ["optim.lr=2e-4"]),
    "lr1e-4": ("lr 1e-4", ["optim.lr=1e-4"]),
    "lb256_lr2e-4": ("lam_batch 256 + lr 2e-4", ["loss.lam_batch=256", "optim.lr=2e-4"]),
    "lb256_lr1e-4": ("lam_batch 256 + lr 1e-4", ["loss.lam_batch=256", "optim.lr=1e-4"]),
    "lb256_lr2e-4_local0": (
        "lam_batch 256 + lr 2e-4 + no local views",
        ["loss.lam_batch=256", "optim.lr=2e-4", "views.num_local=0"],
    ),
    "lb256_lr1e-4_embed1": (
        "lam_batch 256 + lr 1e-4 + backbone SIGReg weight 1",
        ["loss.lam_batch=256", "optim.lr=1e-4", "loss.embed_lam=1.0"],
    ),
    "lam0.5_lr5e-4_embed1": (
        "lambda 0.5 + lr 5e-4 + backbone SIGReg weight 1",
        ["loss.lam=0.5", "optim.lr=5e-4", "loss.embed_lam=1.0"],
    ),
}


def sigreg_vs_batch(
    batches: tuple[int, ...] = (16, 32, 64, 128, 256, 512), reps: int = 5
) -> dict[str, list[float]]:
    """SIGReg (256 slices, fixed directions) of Gaussian and of rank-6 embeddings in 64 dims, per batch N.

    Why lambda depends on the batch: on a collapsing (non-Gaussian) batch the statistic grows ~N,
    on a Gaussian one it stays ~1, and the prediction term does not depend on N.
    """
    import torch

    from eo_jepa.ssl import SIGReg

    sig = SIGReg(num_slices=256, distributed=False).eval()
    gen = torch.Generator().manual_seed(0)
    out: dict[str, list[float]] = {"batch": list(batches), "gaussian": [], "rank6": []}
    for n in batches:
        g = [float(sig(torch.randn(n, 64, generator=gen))) for _ in range(reps)]
        low = [
            float(sig(torch.randn(n, 6, generator=gen) @ torch.randn(6, 64, generator=gen) / 6**0.5))
            for _ in range(reps)
        ]
        out["gaussian"].append(float(np.mean(g)))
        out["rank6"].append(float(np.mean(low)))
    return out


def invariant_rank(encoder, x) -> float:
    """Centred RankMe of the embedding averaged over the 8 flips / 90° rotations (D4) of each input.

    The part of the rank the views' flip and rotation augmentations do not ask to remove: an
    untrained network's rank on the demo chips is mostly orientation (26.4, 9.3 once averaged).
    """
    import torch

    from eo_jepa.eval.health import rankme

    with torch.no_grad():
        views = [torch.rot90(x, k, dims=(2, 3)) for k in range(4)]
        views += [torch.flip(v, dims=(3,)) for v in views]
        return rankme(torch.stack([encoder(v) for v in views]).mean(0), center=True)


def build_chips(out: Path, size: str) -> Path:
    from eo_jepa.demo.quickstart import run_quickstart

    # the quickstart's first two steps (scenes, chips) only, through its own resumable runner
    run_quickstart(out, size=size, upto="chips")
    return out / "chips"


def run_one(chips: Path, out: Path, name: str, overrides: list[str], seed: int, steps: int | None) -> dict:
    from eo_jepa.config import to_dict
    from eo_jepa.demo.quickstart import get_preset, knn_compare, train_config
    from eo_jepa.train.config import load_train_config
    from eo_jepa.train.health import HealthMonitor, health_rows, probe_dataset
    from eo_jepa.train.publish import load_run_encoder
    from eo_jepa.train.trainer import METRICS, run_training

    base = to_dict(train_config(get_preset("small"), out))
    # The variants are changes to the paper's lambda as given at the quickstart's batch of 32 (the
    # quickstart itself now ships loss.lam_batch 256: the "lam_batch256" row)
    base["loss"]["lam_batch"] = None
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}_s{seed}.yaml"
    import yaml

    path.write_text(yaml.safe_dump(base))
    extra = [
        f"name={name}_s{seed}",
        f"seed={seed}",
        "log.tensorboard=false",
        "log.every=10",
        "log.rank_every=30",
    ]
    extra += ["checkpoint.every=100000", "num_threads=1"]
    if steps:
        extra.append(f"max_steps={steps}")
    cfg = load_train_config(path, [*overrides, *extra])
    t0 = time.perf_counter()
    run = run_training(cfg, data=chips)
    health = health_rows(run)
    rows = [json.loads(ln) for ln in (run / METRICS).read_text().splitlines() if ln.strip()]
    first, last = health[0], health[-1]
    seconds = time.perf_counter() - t0
    # the quickstart's kNN (k 10, LeJEPA probe features, train chips as reference, val + test as
    # queries): 5 chips per class (mean of 10 draws), where the untrained network leaves room to
    # learn, and all train chips; the untrained encoder is the run's own starting point
    encoders = {"init": load_run_encoder(run, "init")[0], "last": load_run_encoder(run)[0]}
    knn = knn_compare(encoders, chips, k=10)
    # the trainer's probe crops (normalised by the encoder; both share its statistics)
    probe = HealthMonitor(
        encoders["init"], probe_dataset(cfg, None, chips)[0], size=cfg.views.global_size,
        samples=cfg.log.health_samples, seed=cfg.seed,
    ).inputs.float()  # fmt: skip
    return {
        "rank_embed_start": first["rank_embed_c"],
        "rank_embed": last["rank_embed_c"],
        "rank_embed_uncentred": last["rank_embed"],
        "rank_probe": last["rank_probe_c"],
        "rank_proj": last["rank_proj_c"],
        "sigreg_embed": last["sigreg_embed"],
        "knn_start": first.get("knn", float("nan")),
        "knn": last.get("knn", float("nan")),
        "loss": rows[-1]["loss"],
        "rank_invariant_start": invariant_rank(encoders["init"], probe),
        "rank_invariant": invariant_rank(encoders["last"], probe),
        "knn5_start": knn["init"]["accuracy"],
        "knn5": knn["last"]["accuracy"],
        "knn_all_start": knn["init"]["full_accuracy"],
        "knn_all": knn["last"]["full_accuracy"],
        "seconds": seconds,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--chips", type=Path, help="a chip store (default: build the small demo chips)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--only", nargs="+", help=f"variants to run (default all: {' '.join(VARIANTS)})")
    ap.add_argument("--steps", type=int, help="optimiser steps (default: the quickstart's 120)")
    ap.add_argument("--out", type=Path, help="work folder (default: a temporary one)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    names = args.only or list(VARIANTS)
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; known: {', '.join(VARIANTS)}")
    scaling = sigreg_vs_batch()
    print("SIGReg statistic vs batch N (256 slices, mean of 5 draws):")
    print(f"{'N':>6} {'Gaussian':>10} {'rank-6 in 64 dims':>18}")
    for n, g, low in zip(scaling["batch"], scaling["gaussian"], scaling["rank6"], strict=True):
        print(f"{n:>6} {g:>10.2f} {low:>18.2f}")
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        chips = args.chips or build_chips(out / "demo", "small")
        results: dict[str, list[dict]] = {}
        for name in names:
            for seed in args.seeds:
                r = run_one(chips, out / "runs", name, VARIANTS[name][1], seed, args.steps)
                results.setdefault(name, []).append(r)
                print(f"# {name} seed {seed}: " + ", ".join(f"{k} {v:.3g}" for k, v in r.items()), flush=True)
    cols = [
        ("rank_embed_start", "bb rank@0"),
        ("rank_embed", "bb rank"),
        ("rank_probe", "probe rank"),
        ("rank_proj", "proj rank"),
        ("rank_invariant_start", "D4 rank@0"),
        ("rank_invariant", "D4 rank"),
        ("sigreg_embed", "bb SIGReg"),
        ("knn", "kNN"),
        ("knn5_start", "5-shot@0"),
        ("knn5", "5-shot"),
        ("loss", "loss"),
    ]
    summary: dict[str, dict[str, float]] = {}
    header = f"{'variant':<12} " + " ".join(f"{title:>14}" for _, title in cols) + "  change"
    print(header)
    print("-" * len(header))
    for name, runs in results.items():
        summary[name] = {}
        cells = []
        for key, _ in cols:
            v = np.array([r[key] for r in runs], dtype=float)
            summary[name][key] = float(v.mean())
            summary[name][key + "_std"] = float(v.std())
            cells.append(f"{v.mean():>8.3g} ±{v.std():<5.2g}")
        print(f"{name:<12} " + " ".join(cells) + f"  {VARIANTS[name][0]}")
    print(
        json.dumps(
            {"bench": "ablate_recipe", "seeds": args.seeds, "sigreg_vs_batch": scaling, "results": summary}
        )
    )


if __name__ == "__main__":
    main()
