"""Trainer benchmark: LeJEPA objective overhead and data-loading throughput.

1. Step time of ViT-S/8 (5 bands) on the default views (2 global 224 px + 6 local 96 px):
   encoder forward+backward alone (loss = mean of the embeddings) versus the full LeJEPA
   objective (encoder + projector + prediction + SIGReg with K=1024 slices), side by side on
   the same view tensors. Overhead = the objective's share of the full step, t_objective /
   (t_encoder + t_objective), with the objective (its forward + backward from the embeddings of all
   views: the only work the full step adds) timed alone, best of many (target <= 10%); the two full
   steps' back-to-back ratio is printed too (on a drifting shared machine it is mostly noise).
2. Loader throughput (chips/s) of the chip-store loader with the default 5-band 256 px views,
   with 0 (in the main process), 1 and 2 workers (target >= 150 chips/s per worker); batches are
   released after use, as the trainer does, so view buffers are reused. Best of a few fresh loaders.
3. Gram anchoring (``loss.gram``, ``init`` teacher on the global views, last block) for ViT-S/8 and
   the DINOv3 ViT-L/16 shape (random weights, RGB): the LeJEPA step with and without the Gram term,
   interleaved, and the term alone (teacher forward under no_grad + Gram matrices forward + their
   backward to the student's patch tokens: the only work the term adds, as the student's patch
   tokens come from the step's own forward). Overhead = t_term / (t_step + t_term). Beside it, the
   expected share from the FLOP count (:func:`gram_flop_share`) with the teacher at the student's
   resolution and at 2x (``teacher_upsample=2``): on GPUs, where the teacher's no-grad bf16 forward
   runs at the student's efficiency, this is the cost to expect. ``--skip-gram`` leaves it out.

4. Data-parallel step time: the real trainer (``eo-jepa train``, tiny CPU config) on one process with
   the whole batch and 2 threads beside ``torchrun`` with 2 DDP processes (gloo) of half the batch and
   one thread each: the same global batch and the same 2 cores; median step time from the runs' own
   metrics. Cores are printed: on a 2-core machine this shows the overhead of DDP (all-reduces, the
   global-batch SIGReg, a second process), not a speed-up.

    python benchmarks/bench_train.py                    # CPU defaults (small batch)
    python benchmarks/bench_train.py --device cuda --batch 64

Prints a table and ends with one JSON line of the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the generated chip store used by the tests


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _clock(device: torch.device):
    """GPU: wall clock; CPU: process CPU time, which other processes sharing the machine barely move."""
    return time.perf_counter if device.type == "cuda" else time.process_time


def _time_interleaved(
    fns: dict[str, Any], repeats: int, device: torch.device, model: torch.nn.Module
) -> dict[str, list[float]]:
    """Each variant warmed up once, then timed ``repeats`` times, interleaved in a rotating order so
    the machine's drifts hit every variant alike (for two variants: alternating order)."""
    clock = _clock(device)
    for f in fns.values():  # warm-up
        f()
        model.zero_grad(set_to_none=True)
    times: dict[str, list[float]] = {name: [] for name in fns}
    order = list(fns)
    for i in range(repeats):
        k = i % len(order)
        for name in order[k:] + order[:k]:
            _sync(device)
            t = clock()
            fns[name]()
            _sync(device)
            times[name].append(clock() - t)
            model.zero_grad(set_to_none=True)
    return times


def bench_step(device: torch.device, batch: int, repeats: int, slices: int) -> dict[str, float]:
    from eo_jepa.models import build_encoder
    from eo_jepa.ssl import LeJEPALoss, Projector
    from eo_jepa.train.model import LeJEPAModel

    bands = ["red", "green", "blue", "nir", "swir16"]
    torch.manual_seed(0)
    enc = build_encoder(
        "vit_small_patch8", bands, img_size=256, norm_stats={b: {"mean": 0.0, "std": 1.0} for b in bands}
    )
    model = LeJEPAModel(enc, Projector(enc.embed_dim, 2048, 128, 3)).to(device).train()
    loss_fn = LeJEPALoss(num_slices=slices).to(device).train()
    glob = torch.randn(2, batch, 5, 224, 224, device=device)
    loc = torch.randn(6, batch, 5, 96, 96, device=device)
    use_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()

    def autocast():
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16)

    def encoder_only() -> None:
        with autocast():
            e = torch.cat([enc(glob.flatten(0, 1)), enc(loc.flatten(0, 1))])
            loss = e.float().mean()
        loss.backward()

    def lejepa() -> None:
        with autocast():
            pg, pl = model(glob, loc)
            out = loss_fn(pg.float(), pl.float())
        out.loss.backward()

    # The objective's own forward + backward (projector, prediction, SIGReg) from the embeddings of
    # all views: the only work the full step adds to the encoder's.
    emb = torch.randn(8 * batch, enc.embed_dim, device=device, requires_grad=True)

    def objective_only() -> None:
        with autocast():
            proj = model.projector(emb)
            out = loss_fn(
                proj[: 2 * batch].reshape(2, batch, -1).float(),
                proj[2 * batch :].reshape(6, batch, -1).float(),
            )
        out.loss.backward()

    times = _time_interleaved({"encoder": encoder_only, "lejepa": lejepa}, repeats, device, model)
    clock = _clock(device)
    t_enc = min(times["encoder"])
    t_lej = min(times["lejepa"])
    objective_only()  # warm-up
    t_obj = []
    for _ in range(max(10, 4 * repeats)):
        _sync(device)
        t = clock()
        objective_only()
        _sync(device)
        t_obj.append(clock() - t)
        model.zero_grad(set_to_none=True)
        emb.grad = None
    # Overhead = the objective's share of a full step. On a machine whose speed drifts by tens of
    # percent over minutes, the difference of two ~10 s steps is mostly drift, so the share is taken
    # from the objective timed alone (milliseconds, best of many); the steps' own back-to-back
    # ratio (median over repeats) is reported alongside.
    paired = [1 - e / j for e, j in zip(times["encoder"], times["lejepa"], strict=True)]
    return {
        "encoder_s": t_enc,
        "lejepa_s": t_lej,
        "objective_s": min(t_obj),
        "encoder_img_s": batch / t_enc,
        "lejepa_img_s": batch / t_lej,
        "overhead": min(t_obj) / (t_enc + min(t_obj)),
        "overhead_paired_steps": float(np.median(paired)),
    }


def vit_forward_flops(depth: int, dim: int, tokens: int, mlp_ratio: float = 4.0) -> float:
    """Forward FLOPs of a ViT's blocks on one image of ``tokens`` tokens (multiply-add = 2 FLOPs):
    QKV + output projection 8·D², MLP 4·r·D², attention scores and weighted sum 4·N·D, per token."""
    return depth * tokens * ((8 + 4 * mlp_ratio) * dim * dim + 4 * tokens * dim)


def gram_flop_share(
    depth: int,
    dim: int,
    patch: int,
    prefix: int,
    globals_: tuple[int, int],
    locals_: tuple[int, int],
    up: int,
) -> float:
    """Expected share of the Gram term in a training step from FLOPs: teacher forward on the global
    views (at ``up``× resolution) + Gram matrices (student forward+backward, teacher forward), over the
    student's forward+backward (≈ 3× forward) on all views plus that."""
    (ng, sg), (nl, sl) = globals_, locals_
    tok = lambda s: (s // patch) ** 2 + prefix  # noqa: E731
    student = 3 * (ng * vit_forward_flops(depth, dim, tok(sg)) + nl * vit_forward_flops(depth, dim, tok(sl)))
    n = (sg // patch) ** 2
    gram = ng * (3 * 2 * n * n * dim + 2 * n * n * dim)  # S·Sᵀ fwd+bwd (student), T·Tᵀ fwd (teacher)
    teacher = ng * vit_forward_flops(depth, dim, tok(sg * up))
    return (teacher + gram) / (student + teacher + gram)


def bench_gram(
    device: torch.device,
    arch: str,
    bands: list[str],
    size: int,
    local: int,
    batch: int,
    repeats: int,
    up: int,
) -> dict[str, float]:
    """Step time of LeJEPA with and without Gram anchoring (``init`` teacher, global views), and the
    Gram term alone (teacher forward under no_grad + Gram matrices forward + their backward to the
    student's patch tokens), on 2 global + 6 local views."""
    from eo_jepa.models import build_encoder
    from eo_jepa.ssl import LeJEPALoss, Projector
    from eo_jepa.ssl.gram import GramAnchor, encode, frozen_copy
    from eo_jepa.train.model import LeJEPAModel

    torch.manual_seed(0)
    enc = build_encoder(arch, bands, img_size=size, norm_stats={b: {"mean": 0.0, "std": 1.0} for b in bands})
    model = LeJEPAModel(enc, Projector(enc.embed_dim, 2048, 128, 3)).to(device).train()
    model_g = LeJEPAModel(enc, model.projector)
    model_g.gram_layer = -1
    anchor = GramAnchor(frozen_copy(enc), student_patch=enc.patch_size, weight=1.0, upsample=up).to(device)
    loss_fn = LeJEPALoss(num_slices=1024).to(device).train()
    glob = torch.randn(2, batch, len(bands), size, size, device=device)
    loc = torch.randn(6, batch, len(bands), local, local, device=device)
    use_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    with torch.no_grad():
        _, patches0 = encode(enc, glob.flatten(0, 1), -1)
    patches0 = patches0.detach()

    def step(gram: bool) -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
            pg, pl = (model_g if gram else model)(glob, loc)
            out = loss_fn(pg.float(), pl.float())
            if gram:
                out = anchor.add_to(out, (glob, loc), model_g.patches)
        out.loss.backward()

    def gram_alone() -> None:
        p = patches0.clone().requires_grad_(True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
            term = anchor([glob], [p])
        term.backward()

    fns = {"lejepa": lambda: step(False), "lejepa_gram": lambda: step(True), "gram_alone": gram_alone}
    times = _time_interleaved(fns, repeats, device, model)
    best = {k: min(v) for k, v in times.items()}
    spec = __import__("eo_jepa.models.vit", fromlist=["get_arch"]).get_arch(arch)
    shares = [
        gram_flop_share(
            spec.depth, spec.embed_dim, enc.patch_size, enc.num_prefix_tokens, (2, size), (6, local), u
        )
        for u in (1, 2)
    ]
    return {
        "lejepa_s": best["lejepa"],
        "lejepa_gram_s": best["lejepa_gram"],
        "gram_alone_s": best["gram_alone"],
        "overhead": best["gram_alone"] / (best["lejepa"] + best["gram_alone"]),
        "overhead_paired_steps": float(
            np.median([g / b - 1 for b, g in zip(times["lejepa"], times["lejepa_gram"], strict=True)])
        ),
        "flop_share": shares[0],  # teacher at the student's resolution
        "flop_share_up2": shares[1],  # teacher_upsample=2 (DINOv3's high-resolution Gram teacher)
    }


def bench_loader(
    n_batches: int, batch: int, workers: list[int], repeats: int
) -> tuple[dict[int, float], float]:
    """(wall-clock chips/s per worker count, chips per CPU-second of the main-process loader), best of
    ``repeats`` fresh loaders each (a shared 2-core machine drifts by tens of percent between runs)."""
    from train_data import make_chip_store

    from eo_jepa.train.config import DataConfig, ViewsConfig
    from eo_jepa.train.data import make_loader, open_source
    from eo_jepa.train.views import MultiCropViews

    out: dict[int, float] = {}
    per_cpu_s = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        store = make_chip_store(Path(tmp) / "s2", n_locations=max(64, batch * (n_batches + 1)) // 2, size=256)
        for _ in range(repeats):
            for w in workers:  # interleaved, so drifts of a shared machine hit every variant alike
                cfg = DataConfig(batch_size=batch, num_workers=w)
                src = open_source(cfg, store)
                views = MultiCropViews(ViewsConfig(), src.bands, src.norm_stats, sensor=src.sensor)
                loader, sampler = make_loader(src, views, cfg, seed=0)
                sampler.set_epoch(0)
                it = iter(loader)
                loader.dataset.release(next(it))  # worker start-up and first batch are not throughput
                t, c = time.perf_counter(), time.process_time()
                got = 0
                for _ in range(n_batches):
                    batch_views = next(it)
                    got += batch_views["globals"].shape[1]
                    loader.dataset.release(batch_views)  # as the trainer does after its backward pass
                out[w] = max(out.get(w, 0.0), got / (time.perf_counter() - t))
                if w == 0:  # CPU time is robust to other processes sharing the machine
                    per_cpu_s = max(per_cpu_s, got / (time.process_time() - c))
                del it, loader
    return out, per_cpu_s


def bench_ddp(steps: int, global_batch: int) -> dict[str, float]:
    """Median step time (s) of the tiny config on 1 process vs 2 DDP processes, the same global batch."""
    import socket
    import statistics
    import subprocess

    from train_data import make_chip_store

    work = Path(tempfile.mkdtemp(prefix="bench_ddp_"))
    store = make_chip_store(work / "store", n_locations=max(48, 2 * global_batch))
    env = {**os.environ, "EO_JEPA_NO_PROGRESS": "1", "PYTHONPATH": str(ROOT)}
    common = [
        "train", "--config", str(ROOT / "configs/train/tiny_cpu.yaml"), "--data", str(store),
        f"output_dir={work}", f"max_steps={steps}", f"checkpoint.every={steps}", "log.tensorboard=false",
        "log.rank_every=0",
    ]  # fmt: skip
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    runs = {
        "1 process": [
            sys.executable, "-m", "eo_jepa", *common, "name=one", f"data.batch_size={global_batch}", "num_threads=2",
        ],
        "DDP 2 processes": [
            sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
            "--master-port", str(port), "-m", "eo_jepa", *common, "name=two", f"data.batch_size={global_batch // 2}",
        ],
    }  # fmt: skip
    out: dict[str, float] = {}
    for (label, cmd), name in zip(runs.items(), ("one", "two"), strict=True):
        threads = "2" if name == "one" else "1"  # the same 2 cores either way
        subprocess.run(
            cmd, env={**env, "OMP_NUM_THREADS": threads}, check=True, capture_output=True, timeout=1800
        )
        rows = [json.loads(ln) for ln in (work / name / "metrics.jsonl").read_text().splitlines()]
        # images_per_s of a row covers the steps since the previous row: step time = global batch / rate
        times = [global_batch / r["images_per_s"] for r in rows[2:]]  # the first steps include warm-up
        out[label] = statistics.median(times)
    import shutil

    shutil.rmtree(work, ignore_errors=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, default=None, help="chips per step (default 64 on GPU, 2 on CPU)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--slices", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=None, help="torch threads for the step benchmark")
    ap.add_argument("--loader-batches", type=int, default=10)
    ap.add_argument("--loader-repeats", type=int, default=3)
    ap.add_argument("--loader-batch", type=int, default=16)
    ap.add_argument("--skip-step", action="store_true")
    ap.add_argument("--ddp-steps", type=int, default=12, help="steps of each data-parallel run (0: skip)")
    ap.add_argument("--ddp-batch", type=int, default=16, help="global batch of the data-parallel runs")
    ap.add_argument(
        "--gram-repeats", type=int, default=2, help="Gram-anchoring overhead: timed steps per variant"
    )
    ap.add_argument("--skip-gram", action="store_true")
    args = ap.parse_args()
    device = torch.device(args.device)
    batch = args.batch or (64 if device.type == "cuda" else 2)
    if args.threads:
        torch.set_num_threads(args.threads)

    step = None if args.skip_step else bench_step(device, batch, args.repeats, args.slices)
    gram_shapes = {  # name: (arch, bands, global px, local px)
        "vits8": ("vit_small_patch8", ["red", "green", "blue", "nir", "swir16"], 224, 96),
        "vitl16": ("dinov3_vitl16", ["red", "green", "blue"], 224, 96),
    }
    gram = {} if args.skip_gram else {
        k: bench_gram(device, a, b, g, lo, batch, args.gram_repeats, 1)
        for k, (a, b, g, lo) in gram_shapes.items()
    }  # fmt: skip
    torch.set_num_threads(1)  # the loader figure is per worker (one core each)
    loader, per_cpu_s = bench_loader(args.loader_batches, args.loader_batch, [0, 1, 2], args.loader_repeats)

    clock = "wall clock" if device.type == "cuda" else "CPU time"
    print(
        f"\nLeJEPA step, ViT-S/8 5-band, 2x224 + 6x96 views, batch {batch}, K={args.slices}, {device} ({clock})"
    )
    print("| variant | time / step (s) | images/s |")
    print("|---|---|---|")
    if step:
        print(f"| encoder fwd+bwd alone | {step['encoder_s']:.3f} | {step['encoder_img_s']:.2f} |")
        print(
            f"| full LeJEPA (projector + pred + SIGReg) | {step['lejepa_s']:.3f} | {step['lejepa_img_s']:.2f} |"
        )
        print(f"| objective alone (projector + pred + SIGReg fwd+bwd) | {step['objective_s']:.4f} | |")
        print(
            f"objective overhead: {100 * step['overhead']:.2f}% of the step (target <= 10%); the two full "
            f"steps timed back to back differ by {100 * step['overhead_paired_steps']:.1f}% (median over repeats)"
        )
    if gram:
        print(
            f"\nGram anchoring (init teacher, global views, last block), 2x224 + 6x96 views, batch {batch}, {clock}"
        )
        print(
            "| model | LeJEPA step (s) | + Gram step (s) | Gram term alone (s) | overhead measured | FLOP share x1 | x2 teacher |"
        )
        print("|---|---|---|---|---|---|---|")
        for k, r in gram.items():
            print(
                f"| {k} | {r['lejepa_s']:.3f} | {r['lejepa_gram_s']:.3f} | {r['gram_alone_s']:.4f} | "
                f"{100 * r['overhead']:.1f}% (paired steps {100 * r['overhead_paired_steps']:+.1f}%) | "
                f"{100 * r['flop_share']:.1f}% | {100 * r['flop_share_up2']:.1f}% |"
            )
    print(
        f"\nLoader, 5-band 256 px chips, 2+6 default views, batch {args.loader_batch}, "
        f"{args.loader_batches} batches, best of {args.loader_repeats}"
    )
    print("| workers | chips/s | chips/s per worker |")
    print("|---|---|---|")
    for w, rate in loader.items():
        print(
            f"| {w} (main process) | {rate:.1f} | {rate:.1f} |"
            if w == 0
            else f"| {w} | {rate:.1f} | {rate / w:.1f} |"
        )
    print(f"main-process loader: {per_cpu_s:.1f} chips per CPU-second (one dedicated core; target >= 150)")
    ddp = bench_ddp(args.ddp_steps, args.ddp_batch) if args.ddp_steps else None
    if ddp:
        print(
            f"\nData-parallel step, tiny config (ViT-Ti/8, 32 px), global batch {args.ddp_batch}, "
            f"{args.ddp_steps} steps, median; {os.cpu_count()} CPU cores, load average "
            f"{os.getloadavg()[0]:.1f} at the end (above the core count: other work shares them)"
        )
        print("| variant | time / step (s) | vs 1 process |")
        print("|---|---|---|")
        for label, sec in ddp.items():
            print(f"| {label} | {sec:.3f} | {sec / ddp['1 process']:.2f} |")
        print(
            f"(1 process x 2 threads vs 2 processes x 1 thread: the same 2 of {os.cpu_count()} cores, so "
            "this is DDP's overhead (all-reduces, global-batch SIGReg, a second process), not a speed-up)"
        )
    figures = {
        "bench": "train",
        "device": str(device),
        "cpu": platform.processor() or platform.machine(),
        "batch": batch,
        "slices": args.slices,
        **({f"step_{k}": round(v, 5) for k, v in step.items()} if step else {}),
        **{f"gram_{m}_{k}": round(v, 5) for m, r in gram.items() for k, v in r.items()},
        **{f"loader_chips_per_s_w{w}": round(r, 2) for w, r in loader.items()},
        "loader_chips_per_cpu_s": round(per_cpu_s, 2),
        "loader_chips_per_s_per_worker_w1": round(loader[1], 2),
        "loader_chips_per_s_per_worker_w2": round(loader[2] / 2, 2),
        **(
            {
                "cpus": os.cpu_count(),
                "load_average": round(os.getloadavg()[0], 2),
                "ddp_step_s_1proc": round(ddp["1 process"], 4),
                "ddp_step_s_2proc": round(ddp["DDP 2 processes"], 4),
            }
            if ddp
            else {}
        ),
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
