"""Representation health while training, measured on a fixed held-out probe set.

A loss that keeps decreasing does not say that the backbone is healthy: SIGReg acts on the
projector's output, and a projector can make a low-rank backbone embedding look isotropic. The
:class:`HealthMonitor` therefore measures, at step 0 and every ``log.rank_every`` optimiser
steps, on the same probe images every time (centre crops at the global-view size, no
augmentation, cached once, normalised by the encoder):

- ``rank_embed`` / ``rank_embed_c``: RankMe of the backbone embedding (the class token, or the mean
  patch token for models without one), un-centred (the RankMe paper's definition) and centred;
- ``rank_patch`` / ``rank_patch_c``: the same for the mean patch token (class-token models only);
- ``rank_probe`` / ``rank_probe_c``: the LeJEPA linear-probe features (last two blocks, concatenated);
- ``rank_proj`` / ``rank_proj_c``: the projector output (the space SIGReg acts on);
- ``sigreg_embed``: the SIGReg statistic of the standardised backbone embedding (about 0.6 for
  Gaussian embeddings, growing with the probe size when they are low-rank);
- ``knn``: weighted kNN top-1 within the probe set (two folds: even/odd samples as reference and
  query), when the probe images have labels;
- ``effective_rank``: ``rank_embed`` under the name earlier runs used.

The probe set is the chip store's ``val`` split (else ``test``) when the run trains on ``train``,
otherwise a fixed random subset of the training data (``probe_split`` says which). Every
measurement is appended to ``health.jsonl`` (step 0 included) and to TensorBoard under
``health/``; the trainer adds the same figures to the ``metrics.jsonl`` row of that step. When the
centred backbone rank falls below ``log.health_warn_fraction`` of its step-0 value a warning is
logged, once per run.

The measurement uses the unwrapped model in eval mode on the main process, touches no random
number generator and changes no parameter or buffer, so it leaves training bit-for-bit as it was.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from eo_jepa.chips.dataset import ChipDataset
from eo_jepa.eval.health import rankme, sigreg_standardized
from eo_jepa.eval.knn import knn_predict
from eo_jepa.utils.io import atomic_write_text

log = logging.getLogger(__name__)

HEALTH = "health.jsonl"
BATCH = 64
CACHE_FP32_BYTES = 256 * 2**20


def center_crop(raw: np.ndarray, size: int) -> torch.Tensor:
    """(C, H, W) raw pixels -> (C, size, size): the central square, resized (bilinear, antialiased) if needed."""
    x = torch.from_numpy(np.nan_to_num(np.asarray(raw, dtype=np.float32)))
    h, w = x.shape[-2:]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    x = x[:, top : top + s, left : left + s]
    if s != size:
        x = F.interpolate(x[None], size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0]
    return x


def probe_dataset(cfg: Any, train_source: Any, data: str | Path | None) -> tuple[Any, str]:
    """(dataset, split name) of the probe images: a held-out split of the chip store when there is one."""
    if cfg.data.kind == "chips" and cfg.data.split == "train":
        for split in ("val", "test"):
            ds = ChipDataset(data or cfg.data.path, split=split, bands=cfg.data.bands)
            if len(ds):
                return ds, split
    return train_source, f"{cfg.data.split or 'all'} (no held-out split)"


def two_fold_knn(x: np.ndarray, labels: list[Any], k: int = 20) -> float | None:
    """kNN top-1 within a labelled set: even samples as reference for the odd ones and back, averaged."""
    keep = [i for i, lab in enumerate(labels) if lab is not None]
    classes = sorted({labels[i] for i in keep})
    if len(classes) < 2 or len(keep) < 4:
        return None
    y = np.array([classes.index(labels[i]) for i in keep])
    xs = x[keep]
    a, b = np.arange(0, len(keep), 2), np.arange(1, len(keep), 2)
    acc = [
        float((knn_predict(xs[r], y[r], xs[q], k=k, num_classes=len(classes)) == y[q]).mean())
        for r, q in ((a, b), (b, a))
    ]
    return float(np.mean(acc))


class HealthMonitor:
    """Periodic health of the backbone and projector on a cached probe set (see the module doc)."""

    def __init__(
        self,
        encoder: Any,
        dataset: Any,
        *,
        size: int,
        samples: int,
        seed: int = 0,
        split: str = "",
        warn_fraction: float = 0.5,
        num_slices: int = 1024,
    ) -> None:
        n = len(dataset)
        order = (
            np.arange(n)
            if samples >= n
            else np.sort(np.random.default_rng(seed).choice(n, samples, replace=False))
        )
        labels = list(getattr(dataset, "labels", [None] * n))
        self.labels = [labels[i] for i in order]
        size -= size % encoder.patch_size
        # float32 unless the cache would be large (float16 rounding adds a small noise floor to ranks)
        channels = len(getattr(encoder, "bands", ())) or np.asarray(dataset[0]["pixels"]).shape[0]
        big = len(order) * channels * size * size * 4 > CACHE_FP32_BYTES
        chunks = []
        for start in range(0, len(order), BATCH):  # read and normalise in chunks: a small peak memory
            raw = torch.stack(
                [center_crop(dataset[int(i)]["pixels"], size) for i in order[start : start + BATCH]]
            )
            with torch.no_grad():  # the encoder's statistics are fixed for the run: normalise once
                chunks.append(encoder.normalize(raw).to("cpu", torch.float16 if big else torch.float32))
        self.inputs = torch.cat(chunks)
        self.split = split
        self.warn_fraction = warn_fraction
        self.num_slices = num_slices
        self.start: float | None = None
        self.warned = False

    @classmethod
    def for_run(cls, cfg: Any, source: Any, data: str | Path | None, encoder: Any) -> HealthMonitor | None:
        """The monitor the trainer uses (``None`` when ``log.rank_every`` is 0)."""
        if not cfg.log.rank_every:
            return None
        dataset, split = probe_dataset(cfg, source, data)
        monitor = cls(
            encoder,
            dataset,
            size=cfg.views.global_size,
            samples=cfg.log.health_samples,
            seed=cfg.seed,
            split=split,
            warn_fraction=cfg.log.health_warn_fraction,
        )
        log.info("Health probe set: %d images of split %s.", len(monitor.inputs), split)
        return monitor

    def due(self, step: int, every: int, total: int) -> bool:
        return bool(every) and (step % every == 0 or step == total)

    @torch.no_grad()
    def features(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """Backbone embedding, mean patch token (class-token models), probe features and projector output."""
        encoder, projector = model.encoder, model.projector
        device = next(model.parameters()).device
        modes = [(m, m.training) for m in model.modules()]
        model.eval()
        out: dict[str, list[torch.Tensor]] = {"embed": [], "patch": [], "probe": [], "proj": []}
        try:
            for start in range(0, len(self.inputs), BATCH):
                x = self.inputs[start : start + BATCH].to(device, torch.float32)
                emb = encoder(x).float()
                out["embed"].append(emb)
                out["probe"].append(encoder.forward_probe_features(x).float())
                out["proj"].append(projector(emb).float())
                if encoder.pooling == "cls":
                    out["patch"].append(encoder.forward_features(x).float().mean(dim=(2, 3)))
        finally:
            for m, training in modes:
                m.train(training)
        return {k: torch.cat(v).cpu() for k, v in out.items() if v}

    def measure(self, model: nn.Module) -> dict[str, float]:
        """The health figures of ``model`` (a :class:`~eo_jepa.train.model.LeJEPAModel`) now."""
        feats = self.features(model)
        row: dict[str, float] = {}
        for name, z in feats.items():
            row[f"rank_{name}"] = rankme(z)
            row[f"rank_{name}_c"] = rankme(z, center=True)
        row["sigreg_embed"] = sigreg_standardized(feats["embed"], num_slices=self.num_slices)
        knn = two_fold_knn(feats["embed"].numpy(), self.labels)
        if knn is not None:
            row["knn"] = knn
        row["effective_rank"] = row["rank_embed"]
        return row

    def check(self, step: int, row: dict[str, float]) -> None:
        """Remember the step-0 backbone rank; warn once when it falls below ``warn_fraction`` of it."""
        rank = row["rank_embed_c"]
        if self.start is None:
            self.start = rank
            return
        if not self.warned and self.warn_fraction > 0 and rank < self.warn_fraction * self.start:
            self.warned = True
            log.warning(
                "The backbone embedding's rank on the probe set fell to %.1f at step %d, below %.0f%% of "
                "its %.1f at the start: the projector may be hiding a collapse (projector rank %.1f). "
                "See the README's 'Recipe ablation' section (optim.lr, loss.lam_batch, loss.lam).",
                rank,
                step,
                100 * self.warn_fraction,
                self.start,
                row.get("rank_proj_c", math.nan),
            )


class HealthLog:
    """``health.jsonl`` (rank 0) + TensorBoard ``health/*``; rows after a resumed step are dropped."""

    def __init__(self, run_dir: Path, writer: Any, resume_step: int) -> None:
        self.path = Path(run_dir) / HEALTH
        self.writer = writer
        self.rows: list[dict[str, Any]] = []
        if self.path.exists():
            self.rows = [json.loads(ln) for ln in self.path.read_text().splitlines() if ln.strip()]
            self.rows = [r for r in self.rows if r["step"] <= resume_step]
            atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in self.rows))

    def log(self, step: int, row: dict[str, Any]) -> None:
        full = {"step": step, **row}
        self.rows.append(full)
        with open(self.path, "a") as fh:
            fh.write(json.dumps(full) + "\n")
        if self.writer is not None:
            for k, v in row.items():
                self.writer.add_scalar(f"health/{k}", v, step)


class TrainHealth:
    """What the trainer holds: monitor + log, driven by two calls (start, after each optimiser step)."""

    def __init__(
        self, cfg: Any, source: Any, data: str | Path | None, encoder: Any, *, enabled: bool
    ) -> None:
        self.every = cfg.log.rank_every
        self.monitor = HealthMonitor.for_run(cfg, source, data, encoder) if enabled else None
        self.log: HealthLog | None = None

    def start(self, model: nn.Module, run_dir: Path, writer: Any, step: int) -> None:
        """Measure step 0 of a fresh run; on resume, take the start value from ``health.jsonl``."""
        if self.monitor is None:
            return
        self.log = HealthLog(run_dir, writer, step)
        first = next((r for r in self.log.rows if r["step"] == 0), None)
        if first is not None:
            self.monitor.check(0, first)
        elif step == 0:
            row = self.monitor.measure(model)
            self.monitor.check(0, row)
            self.log.log(0, row)

    def after_step(self, model: nn.Module, step: int, total: int) -> dict[str, float]:
        """The health figures when ``step`` is due (also logged), else ``{}``."""
        if self.monitor is None or self.log is None or not self.monitor.due(step, self.every, total):
            return {}
        row = self.monitor.measure(model)
        self.monitor.check(step, row)
        self.log.log(step, row)
        return row


def health_rows(run_dir: str | Path) -> list[dict[str, Any]]:
    """The rows of a run's ``health.jsonl`` (empty when it has none)."""
    path = Path(run_dir) / HEALTH
    if not path.is_file():
        return []
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]


def plot_health(ax: Any, rows: list[dict[str, Any]]) -> None:
    """Centred RankMe of the backbone embedding, probe features and projector output against the step."""
    steps = [r["step"] for r in rows]
    for key, label in (
        ("rank_embed_c", "backbone"),
        ("rank_probe_c", "probe (last 2 blocks)"),
        ("rank_proj_c", "projector"),
    ):
        if all(key in r for r in rows):
            ax.plot(steps, [r[key] for r in rows], lw=1.2, marker=".", label=label)
    ax.set_title("RankMe on held-out probe set (centred)")
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
