"""SIGReg: ``reference`` (direct formula) vs ``fused`` (custom autograd), forward + backward.

    python benchmarks/bench_sigreg.py            # the three rows of issue #3, fp32, CPU (+ CUDA if present)
    python benchmarks/bench_sigreg.py --quick    # a small smoke run

For each (N, D, K) row and device: median wall time of forward+backward with respect to the
embeddings (both variants timed alternately in one process), peak memory of the op, and the
deviation of ``fused`` from ``reference`` (value, and gradient as ‖Δg‖/‖g‖) and from a float64
run of ``fused``.

Peak memory, CPU: PyTorch's CPU allocator has no statistics API and tracemalloc cannot see its
allocations, so each (variant, row) runs in a fresh subprocess that builds its inputs, resets the
kernel's resident-set high-water mark (``/proc/self/clear_refs`` ← 5), runs the op once and reports
``VmHWM − VmRSS`` (read before the op): every byte the op touches (autograd-saved tensors,
temporaries, the gradient) counts, and nothing else. Where clear_refs is not writable the
``ru_maxrss`` delta is used instead. CUDA: ``torch.cuda.max_memory_allocated`` delta.

Ends with one JSON line: {"bench": "sigreg", "rows": [{"N", "D", "K", "speedup", "mem_ratio",
"max_rel_err", ...}, ...]}.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch

from eo_jepa.ssl import SIGReg

FULL_ROWS = [(512, 256, 1024), (2048, 512, 1024), (4096, 1024, 1024)]
QUICK_ROWS = [(256, 64, 256)]
IMPLS = ("reference", "fused")


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _fwd_bwd(module: SIGReg, z: torch.Tensor) -> tuple[float, torch.Tensor]:
    z = z.detach().requires_grad_()
    value = module(z)
    value.backward()
    return value.item(), z.grad


def _time_row(n: int, d: int, k: int, device: str, repeats: int) -> dict:
    gen = torch.Generator().manual_seed(n + d + k)
    z = (torch.randn(n, d, generator=gen) * 1.2 + 0.1).to(device)
    # training mode: every call draws fresh slices (part of the per-step cost), in step for both
    modules = {impl: SIGReg(k, impl=impl).to(device) for impl in IMPLS}
    times: dict[str, list[float]] = {impl: [] for impl in IMPLS}
    results = {}
    for rep in range(repeats + 1):  # the first round is a warm-up
        for impl in IMPLS:
            _sync(device)
            t0 = time.perf_counter()
            value, grad = _fwd_bwd(modules[impl], z)
            _sync(device)
            if rep:
                times[impl].append(time.perf_counter() - t0)
            results[impl] = (value, grad)
    modules["fused"].step -= 1  # the slices of the last round
    exact_value, exact_grad = _fwd_bwd(modules["fused"], z.double())
    (rv, rg), (fv, fg) = results["reference"], results["fused"]

    def rel_grad(a: torch.Tensor, b: torch.Tensor) -> float:
        return float((a.double() - b.double()).norm() / b.double().norm())

    return {
        "ref_s": statistics.median(times["reference"]),
        "fused_s": statistics.median(times["fused"]),
        "value_rel_err": abs(fv - rv) / abs(rv),
        "grad_rel_err": rel_grad(fg, rg),
        "fused_vs_f64": max(abs(fv - exact_value) / abs(exact_value), rel_grad(fg, exact_grad)),
        "ref_vs_f64": max(abs(rv - exact_value) / abs(exact_value), rel_grad(rg, exact_grad)),
    }


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def _measure_memory_child(impl: str, n: int, d: int, k: int, threads: int) -> None:
    """Run in a fresh process: print the peak extra resident memory (bytes) of one fwd+bwd."""
    torch.set_num_threads(threads)
    warm = SIGReg(16, impl=impl)  # load code paths, start the thread pool
    _fwd_bwd(warm, torch.randn(64, 8))
    gen = torch.Generator().manual_seed(n + d + k)
    z = torch.randn(n, d, generator=gen) * 1.2 + 0.1
    module = SIGReg(k, impl=impl)  # training mode: drawing the slices is part of the op
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current RSS
        before = _status_kib("VmRSS")
        _value, grad = _fwd_bwd(module, z)
        peak = _status_kib("VmHWM") - before
        method = "VmHWM"
    except OSError:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        _value, grad = _fwd_bwd(module, z)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
        method = "ru_maxrss"
    assert grad is not None
    print(json.dumps({"peak_bytes": peak * 1024, "method": method}))


def _memory_cpu(impl: str, n: int, d: int, k: int, threads: int) -> tuple[int, str]:
    cmd = [sys.executable, __file__, "--memory-child", impl, str(n), str(d), str(k), str(threads)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=os.environ.copy())
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return result["peak_bytes"], result["method"]


def _memory_cuda(impl: str, n: int, d: int, k: int) -> int:
    gen = torch.Generator().manual_seed(n + d + k)
    z = (torch.randn(n, d, generator=gen) * 1.2 + 0.1).cuda()
    module = SIGReg(k, impl=impl).cuda()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    _fwd_bwd(module, z)
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - before


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one small row, two repeats (smoke test)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats per variant (median)")
    parser.add_argument("--memory-child", nargs=5, metavar="ARG", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        impl, *dims = args.memory_child
        n, d, k, threads = map(int, dims)
        _measure_memory_child(impl, n, d, k, threads)
        return

    torch.set_num_threads(args.threads)
    rows = QUICK_ROWS if args.quick else FULL_ROWS
    repeats = 2 if args.quick else args.repeats
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    print(f"SIGReg fwd+bwd, fp32, T=17 knots, torch {torch.__version__}, {args.threads} CPU threads")
    header = (
        f"{'device':6} {'N':>5} {'D':>5} {'K':>5} | {'ref s':>8} {'fused s':>8} {'speedup':>7} | "
        f"{'ref MiB':>8} {'fused MiB':>9} {'mem x':>6} | {'val err':>8} {'grad err':>8} {'f32-f64':>8}"
    )
    print(header)
    print("-" * len(header))
    out_rows = []
    for device in devices:
        for n, d, k in rows:
            r = _time_row(n, d, k, device, repeats)
            if device == "cpu":
                mem = {impl: _memory_cpu(impl, n, d, k, args.threads) for impl in IMPLS}
                method = mem["fused"][1]
                ref_mem, fused_mem = mem["reference"][0], mem["fused"][0]
            else:
                method = "cuda.max_memory_allocated"
                ref_mem, fused_mem = (_memory_cuda(impl, n, d, k) for impl in IMPLS)
            row = {
                "device": device,
                "N": n,
                "D": d,
                "K": k,
                "ref_ms": round(r["ref_s"] * 1e3, 2),
                "fused_ms": round(r["fused_s"] * 1e3, 2),
                "speedup": round(r["ref_s"] / r["fused_s"], 2),
                "ref_peak_mib": round(ref_mem / 2**20, 1),
                "fused_peak_mib": round(fused_mem / 2**20, 1),
                "mem_ratio": round(ref_mem / max(fused_mem, 1), 2),
                "value_rel_err": float(f"{r['value_rel_err']:.3g}"),
                "grad_rel_err": float(f"{r['grad_rel_err']:.3g}"),
                "max_rel_err": float(f"{max(r['value_rel_err'], r['grad_rel_err']):.3g}"),
                "fused_vs_f64": float(f"{r['fused_vs_f64']:.3g}"),
                "ref_vs_f64": float(f"{r['ref_vs_f64']:.3g}"),
                "memory_method": method,
            }
            out_rows.append(row)
            print(
                f"{device:6} {n:5d} {d:5d} {k:5d} | {r['ref_s']:8.3f} {r['fused_s']:8.3f} "
                f"{row['speedup']:6.1f}x | {row['ref_peak_mib']:8.1f} {row['fused_peak_mib']:9.1f} "
                f"{row['mem_ratio']:5.1f}x | {r['value_rel_err']:8.1e} {r['grad_rel_err']:8.1e} "
                f"{r['fused_vs_f64']:8.1e}",
                flush=True,
            )
    print(json.dumps({"bench": "sigreg", "threads": args.threads, "rows": out_rows}))


if __name__ == "__main__":
    main()
