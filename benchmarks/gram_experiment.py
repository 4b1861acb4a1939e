"""Does Gram anchoring keep dense features during continued LeJEPA pretraining? A small CPU experiment.

Start: the quickstart's pretrained model (``eo-jepa quickstart --out DIR --size small``; a ViT-Tiny/8
trained on the generated demo chips). From it, continue training on the same chips for the same
number of steps, per seed, with

- (a) LeJEPA alone (``loss.gram.weight=0``),
- (b) LeJEPA + Gram anchoring to the start (``loss.gram.weight=W``, teacher ``init``),

and evaluate the start, (a) and (b) with

- **kNN (global)**: the quickstart's weighted-kNN on held-out chips (5 reference chips per class,
  mean of 10 draws; and all train chips), from pooled embeddings;
- **dense mIoU (local)**, two probes against the demo's land-cover truth: a minimal per-patch
  linear probe written here first (scikit-learn LogisticRegression on the frozen, standardised patch
  features, truth downsampled to patches by majority vote, IoU over the classes in both tiles), and
  the evaluation package's dense probe (:func:`eo_jepa.eval.dense.dense_probe`: LayerNorm + linear
  head, scored per pixel, mIoU over classes in the truth or the predictions). For each tile, the centre window of its least cloudy acquisition is cut into
  chips of the training size, so the encoder sees inputs like its training chips; the probe is fit on
  one tile's patches and scored on the other's (both ways, IoU pooled), classes present in both.

Continued runs already published under ``--out/models`` are evaluated again, not retrained.
Everything is generated data on CPU; it says nothing about DINOv3 ViT-L on real imagery. Prints a
table and ends with one JSON line of the figures.

    nice -n 10 timeout 3000 .venv/bin/python benchmarks/gram_experiment.py --quickstart DIR \
        --seeds 0 1 2 --steps 60 --weight 1.0
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch


def read_tile_windows(state: dict[str, Any], size: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per tile: (pixels (C, S, S) float32, valid (S, S) bool, truth (S, S) uint8) of the centre
    ``size`` px of its least cloudy acquisition, read by the chip builder's reader (the quickstart's
    :func:`~eo_jepa.demo.quickstart.read_demo_scene`)."""
    from eo_jepa.demo.quickstart import get_preset, read_demo_scene

    scenes = state["steps"]["scenes"]["outputs"]
    preset = get_preset(state["size"])
    out = []
    for tile in scenes["tiles"]:
        scene = read_demo_scene(scenes["items"], scenes["root"], preset, size, tile=tile)
        out.append((scene.pixels, np.asarray(scene.valid, bool), scene.truth))
    return out


def patch_labels(truth: np.ndarray, valid: np.ndarray, p: int) -> np.ndarray:
    """(S, S) truth -> (S/p · S/p,) majority class per patch; 0 where under half the pixels are known and valid."""
    s = truth.shape[0] // p
    t = truth[: s * p, : s * p].reshape(s, p, s, p).transpose(0, 2, 1, 3).reshape(s * s, p * p)
    v = valid[: s * p, : s * p].reshape(s, p, s, p).transpose(0, 2, 1, 3).reshape(s * s, p * p)
    t = np.where(v, t, 0)
    counts = np.stack([(t == k).sum(1) for k in range(int(truth.max()) + 1)], 1)
    counts[:, 0] = 0
    lab = counts.argmax(1)
    lab[counts.max(1) < (p * p) / 2] = 0
    return lab


@torch.no_grad()
def patch_features(encoder: Any, pixels: np.ndarray, chip: int) -> np.ndarray:
    """(S/p · S/p, D) patch features of a window cut into ``chip``-px chips (the training input size)."""
    c, s, _ = pixels.shape
    n = s // chip
    tiles = pixels[:, : n * chip, : n * chip].reshape(c, n, chip, n, chip).transpose(1, 3, 0, 2, 4)
    x = encoder.normalize(torch.from_numpy(np.ascontiguousarray(tiles.reshape(n * n, c, chip, chip))))
    feats = torch.cat([encoder.forward_features(b) for b in x.split(256)])  # (n², D, g, g)
    g, d = feats.shape[-1], feats.shape[1]
    grid = feats.reshape(n, n, d, g, g).permute(0, 3, 1, 4, 2).reshape(n * g * n * g, d)
    return grid.numpy()


def dense_miou(encoder: Any, windows: list, chip: int) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    p = encoder.patch_size
    data = []
    for pixels, valid, truth in windows:
        y = patch_labels(truth, valid, p)
        x = patch_features(encoder.eval(), pixels, chip)
        data.append((x[y > 0], y[y > 0]))
    inter: dict[int, int] = {}
    union: dict[int, int] = {}
    for i, (x_tr, y_tr) in enumerate(data):
        for j, (x_te, y_te) in enumerate(data):
            if i == j:
                continue
            clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=1.0))
            clf.fit(x_tr, y_tr)
            pred = clf.predict(x_te)
            for k in set(y_tr.tolist()) & set(y_te.tolist()):
                inter[k] = inter.get(k, 0) + int(((pred == k) & (y_te == k)).sum())
                union[k] = union.get(k, 0) + int(((pred == k) | (y_te == k)).sum())
    return float(np.mean([inter[k] / union[k] for k in union]))


def build_larger_chips(state: dict[str, Any], preset: Any, base: Path) -> None:
    """``base/chips``: the quickstart's chip build from the same demo scenes and AOIs at ``preset.chip_size``."""
    from eo_jepa.chips.build import build_chips
    from eo_jepa.demo.quickstart import demo_chip_config

    if (base / "chips" / "dataset.json").is_file():
        return
    scenes = state["steps"]["scenes"]["outputs"]
    build_chips(scenes["aois"], demo_chip_config(preset), base / "chips", stac=scenes["items"], workers=1)


def finish_start_model(qs: Path, preset: Any) -> None:
    """``qs/model``, the start: the quickstart's published model, or, when the quickstart stopped before
    publishing (or for larger chips), its pretraining run resumed or run (same recipe, one torch
    thread) and published, as the quickstart does."""
    from eo_jepa.demo.quickstart import train_config
    from eo_jepa.train.publish import publish
    from eo_jepa.train.trainer import CHECKPOINT_DIR, LAST, run_training

    if (qs / "model").is_dir():
        return
    cfg = dataclasses.replace(train_config(preset, qs), num_threads=1)
    run = run_training(cfg, data=qs / "chips", resume=(cfg.run_dir / CHECKPOINT_DIR / LAST).is_file())
    publish(run, qs / "model")


def dense_probe_miou(encoder: Any, windows: list, chip: int) -> float:
    """mIoU of the evaluation package's dense probe (:func:`eo_jepa.eval.dense.dense_probe`), trained on
    one tile's window cut into ``chip``-px tiles and scored on the other's, both ways, averaged."""
    from eo_jepa.eval.dense import dense_probe, tiles

    sets = [
        tiles(p, np.where(v, t, 0).astype(np.int64), chip, f"w{i}-") for i, (p, v, t) in enumerate(windows)
    ]
    scores = [
        dense_probe(encoder.eval(), sets[i], sets[j]).miou
        for i in range(len(sets))
        for j in range(len(sets))
        if i != j
    ]
    return float(np.mean(scores))


def continue_training(qs: Path, preset: Any, seed: int, steps: int, weight: float, out: Path) -> Any:
    import eo_jepa
    from eo_jepa.demo.quickstart import train_config
    from eo_jepa.train.publish import publish
    from eo_jepa.train.trainer import run_training

    cfg = train_config(preset, out)
    name = f"{'gram' if weight else 'lejepa'}_s{seed}"
    if (out / "models" / name).is_dir():  # published by an earlier run of this script: evaluate it again
        return eo_jepa.load(str(out / "models" / name)), {}
    cfg = dataclasses.replace(
        cfg,
        name=name,
        seed=seed,
        num_threads=1,  # one thread: a shared 2-core machine makes two spin-waiting threads far slower
        max_steps=steps,
        model=dataclasses.replace(cfg.model, init=str(qs / "model")),
        loss=dataclasses.replace(cfg.loss, gram=dataclasses.replace(cfg.loss.gram, weight=weight)),
        optim=dataclasses.replace(cfg.optim, warmup_steps=max(1, steps // 10)),
        log=dataclasses.replace(cfg.log, tensorboard=False, rank_every=0),
        checkpoint=dataclasses.replace(cfg.checkpoint, every=10**9),
    )
    run = run_training(cfg, data=qs / "chips")
    rows = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    publish(run, out / "models" / name)
    return eo_jepa.load(str(out / "models" / name)), rows[-1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quickstart", type=Path, required=True, help="folder of a finished eo-jepa quickstart")
    ap.add_argument("--out", type=Path, default=Path("gram_experiment"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=60, help="continued-training steps, same for (a) and (b)")
    ap.add_argument("--weight", type=float, default=1.0, help="loss.gram.weight of arm (b)")
    ap.add_argument("--arms", nargs="+", default=["lejepa", "gram"], choices=["lejepa", "gram"])
    ap.add_argument(
        "--chip-size",
        type=int,
        default=None,
        help="rebuild the chips at this size (local views half of it) and pretrain a start model on them the "
        "quickstart's way, instead of the quickstart's 16 px chips (more patches per view for the Gram term)",
    )
    ap.add_argument("--window", type=int, default=256, help="px per side of each tile's probe window")
    args = ap.parse_args()

    import eo_jepa
    from eo_jepa.demo.quickstart import get_preset, knn_compare

    torch.set_num_threads(1)
    qs = args.quickstart.resolve()
    state = json.loads((qs / "quickstart_state.json").read_text())
    preset = get_preset(state["size"])
    if args.chip_size:
        preset = dataclasses.replace(preset, chip_size=args.chip_size, local_crop=args.chip_size // 2)
        qs = (args.out / f"base_{args.chip_size}px").resolve()
        build_larger_chips(state, preset, qs)
    finish_start_model(qs, preset)
    windows = read_tile_windows(state, args.window)
    chips = qs / "chips"
    start = eo_jepa.load(str(qs / "model"))
    t0 = time.perf_counter()
    results: dict[str, list[dict[str, float]]] = {"start": [], "lejepa": [], "gram": []}

    def evaluate(tag: str, encoder: Any, extra: dict[str, float]) -> None:
        knn = knn_compare({tag: encoder}, chips, k=preset.knn_k)[tag]
        row = {
            "knn_fewshot": knn["accuracy"],
            "knn_full": knn["full_accuracy"],
            "dense_miou": dense_miou(encoder, windows, preset.chip_size),
            "dense_probe_miou": dense_probe_miou(encoder, windows, preset.chip_size),
            **extra,
        }
        results[tag].append(row)
        print(f"  {tag:<7} {json.dumps(row)}", file=sys.stderr, flush=True)

    evaluate("start", start, {})
    for seed in args.seeds:
        for tag, w in (("lejepa", 0.0), ("gram", args.weight)):
            if tag not in args.arms:
                continue
            enc, last = continue_training(qs, preset, seed, args.steps, w, args.out.resolve())
            evaluate(
                tag,
                enc,
                {"seed": seed, "last_pred": last.get("pred"), "last_gram": last.get("gram")},
            )

    def agg(tag: str, key: str) -> tuple[float, float]:
        vals = [r[key] for r in results[tag]]
        return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)

    print(
        f"\nContinued pretraining from the quickstart ({state['size']}, {preset.chip_size} px chips) model: "
        f"{args.steps} steps, "
        f"seeds {args.seeds}, Gram weight {args.weight}; mean ± std over seeds\n"
    )
    print(f"{'model':<22}{'kNN 5-shot':>16}{'kNN all train':>16}{'dense mIoU':>16}{'#16 probe mIoU':>16}")
    figures: dict[str, Any] = {
        "chip_size": preset.chip_size,
        "steps": args.steps,
        "seeds": args.seeds,
        "weight": args.weight,
    }
    for tag, label in (("start", "start"), ("lejepa", "(a) LeJEPA"), ("gram", "(b) LeJEPA + Gram")):
        if not results[tag]:
            continue
        cells = []
        for key in ("knn_fewshot", "knn_full", "dense_miou", "dense_probe_miou"):
            m, s = agg(tag, key)
            figures[f"{tag}_{key}"] = round(m, 4)
            figures[f"{tag}_{key}_std"] = round(s, 4)
            cells.append(f"{m:.3f} ± {s:.3f}")
        print(f"{label:<22}" + "".join(f"{c:>16}" for c in cells))
    figures["seconds"] = round(time.perf_counter() - t0, 1)
    figures["per_seed"] = results
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
