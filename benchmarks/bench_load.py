"""Loading a ViT-L-sized encoder: our checkpoint folder vs ``torch.load`` of the same weights (``.pth``).

    python benchmarks/bench_load.py               # DINOv3 ViT-L/16 (q/v bias), 304M params, fp32 (~1.2 GB)
    python benchmarks/bench_load.py --arch dinov3_vits16 --repeats 3   # a quick smoke run

Variants (each run in a fresh subprocess, alternated, median of ``--repeats``; the files are in
the page cache, so this measures CPU + memory work, not the disk):

- ``torch.load``: ``torch.load(path, weights_only=True)`` of the state dict only (no model);
- ``torch.load+model``: what users usually write: build the timm model, ``torch.load``,
  ``load_state_dict`` — it ends, like ours, with a usable model;
- ``ours-first``: ``eo_jepa.load(folder)`` of a file this machine has never hashed (a fresh
  download) — full sha256 of the weights, model on the meta device, safetensors,
  ``load_state_dict(assign=True)``;
- ``ours``: every later load of the unchanged file — the sha256 check is satisfied by the file's
  recorded stamp (inode, size, mtime, ctime; see :mod:`eo_jepa.models.checkpoint`).

Each variant ends by reading every weight once (a sum per tensor), so memory-mapped pages are
really in memory and counted. Peak extra memory: the subprocess imports everything, resets the
kernel's resident-set high-water mark (``/proc/self/clear_refs`` ← 5), loads, and reports
``VmHWM − VmRSS(before)`` (file-backed mmap pages count too). Targets: ours no slower than ``torch.load`` and at most
1.1 × the weights' size of extra peak memory.

Ends with one JSON line: {"bench": "load", "weights_mb", "rows": [{"variant", "seconds", "peak_extra_mb",
"peak_over_weights"}], "ours_vs_torch_load", ...}.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VARIANTS = ("torch.load", "torch.load+model", "ours-first", "ours")


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def worker(variant: str, folder: Path, arch: str) -> dict:
    """Run one load in this (fresh) process and measure it."""
    import timm  # noqa: F401 - imported before the measurement, like torch
    import torch

    from eo_jepa.models.checkpoint import load_encoder
    from eo_jepa.models.vit import create_backbone

    torch.set_num_threads(1)
    pth = folder.parent / "weights.pth"
    Path("/proc/self/clear_refs").write_text("5")
    before = _status_kb("VmRSS")
    t0 = time.perf_counter()
    if variant == "torch.load":
        obj = torch.load(pth, map_location="cpu", weights_only=True)
    elif variant == "torch.load+model":
        obj = create_backbone(arch, 3, 224)
        obj.load_state_dict(torch.load(pth, map_location="cpu", weights_only=True))
    else:  # "ours-first" runs with an empty EO_JEPA_CACHE, "ours" with one that knows the file
        obj = load_encoder(folder)
    # read every weight once, so lazily mapped pages are in memory (and counted) for every variant
    tensors = obj.values() if isinstance(obj, dict) else obj.state_dict().values()
    checksum = sum(float(t.float().sum()) for t in tensors)
    seconds = time.perf_counter() - t0
    peak = _status_kb("VmHWM") - before
    del obj
    return {"variant": variant, "seconds": seconds, "peak_extra_kb": peak, "checksum": checksum}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="dinov3_vitl16_qkvb")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--workdir", type=Path, default=None, help="where to write the two checkpoints (default: temp)"
    )
    parser.add_argument("--worker", nargs=2, metavar=("VARIANT", "FOLDER"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker[0], Path(args.worker[1]), args.arch)))
        return

    import torch

    from eo_jepa.models import build_encoder, save_encoder

    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        folder = Path(tmp) / "ours"
        warm_cache = Path(tmp) / "verified-cache"
        os.environ["EO_JEPA_CACHE"] = str(warm_cache)  # keep the stamps of this run out of ~/.cache
        rgb = ("red", "green", "blue")
        enc = build_encoder(args.arch, rgb, norm_stats={b: {"mean": 0.5, "std": 0.25} for b in rgb})
        save_encoder(enc, folder)
        torch.save(enc.backbone.state_dict(), Path(tmp) / "weights.pth")
        del enc
        weights_mb = (folder / "model.safetensors").stat().st_size / 2**20
        pth_mb = (Path(tmp) / "weights.pth").stat().st_size / 2**20
        runs: dict[str, list[dict]] = {v: [] for v in VARIANTS}

        def run(variant: str, cache: Path) -> dict:
            env = {**os.environ, "OMP_NUM_THREADS": "1", "EO_JEPA_CACHE": str(cache)}
            out = subprocess.run(
                [sys.executable, __file__, "--arch", args.arch, "--worker", variant, str(folder)],
                capture_output=True, text=True, check=True, env=env,
            )  # fmt: skip
            return json.loads(out.stdout.strip().splitlines()[-1])

        run("ours", warm_cache)  # warm-up (save_encoder already recorded the stamp)
        for i in range(args.repeats):
            for variant in VARIANTS:
                cache = warm_cache if variant == "ours" else Path(tmp) / f"empty-cache-{i}"
                runs[variant].append(run(variant, cache))
        sums = {r["checksum"] for rs in runs.values() for r in rs}
        assert max(sums) - min(sums) <= 1e-6 * max(1.0, abs(max(sums))), (
            f"variants loaded different weights: {sums}"
        )
    print(
        f"{args.arch}: weights {weights_mb:.0f} MiB (safetensors), {pth_mb:.0f} MiB (.pth); median of {args.repeats}"
    )
    print(f"{'variant':18} {'seconds':>8} {'peak extra MiB':>15} {'x weights':>10}")
    rows = []
    for variant in VARIANTS:
        secs = statistics.median(r["seconds"] for r in runs[variant])
        peak = statistics.median(r["peak_extra_kb"] for r in runs[variant]) / 1024
        rows.append(
            {"variant": variant, "seconds": round(secs, 3), "peak_extra_mb": round(peak, 1),
             "peak_over_weights": round(peak / weights_mb, 3)}
        )  # fmt: skip
        print(f"{variant:18} {secs:8.3f} {peak:15.1f} {peak / weights_mb:10.3f}")
    by = {r["variant"]: r for r in rows}
    summary = {
        "bench": "load",
        "arch": args.arch,
        "weights_mb": round(weights_mb, 1),
        "rows": rows,
        "ours_vs_torch_load": round(by["ours"]["seconds"] / by["torch.load"]["seconds"], 3),
        "ours_vs_torch_load_model": round(by["ours"]["seconds"] / by["torch.load+model"]["seconds"], 3),
        "ours_first_vs_torch_load": round(by["ours-first"]["seconds"] / by["torch.load"]["seconds"], 3),
        "ours_peak_over_weights": by["ours"]["peak_over_weights"],
        "ours_first_peak_over_weights": by["ours-first"]["peak_over_weights"],
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
