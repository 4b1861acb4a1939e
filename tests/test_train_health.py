"""Training-time representation health (eo_jepa/train/health.py) on cases with a known answer."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from train_data import make_chip_store

from eo_jepa.eval.health import rankme, sigreg_standardized
from eo_jepa.ssl import expected_gaussian_value
from eo_jepa.train.health import HEALTH, HealthMonitor, two_fold_knn

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "train" / "tiny_cpu.yaml"


def rankme_numpy(z: np.ndarray) -> float:
    """Independent float64 RankMe: exp of the entropy of the normalised singular values."""
    s = np.linalg.svd(z.astype(np.float64), compute_uv=False)
    p = s / s.sum() + 1e-12
    return float(np.exp(-(p * np.log(p)).sum()))


def known_rank(n: int, dim: int, singular: list[float], offset: float = 0.0, seed: int = 0) -> np.ndarray:
    """(n, dim) embeddings with centred singular values exactly ``singular``, plus ``offset`` on every row."""
    rng = np.random.default_rng(seed)
    k = len(singular)
    a = rng.standard_normal((n, k))
    a -= a.mean(0)  # columns orthogonal to the all-ones vector: the samples are centred
    u, _ = np.linalg.qr(a)
    v, _ = np.linalg.qr(rng.standard_normal((dim, k)))
    z = u @ np.diag(singular) @ v.T
    return z + offset * rng.standard_normal(dim)


@pytest.mark.parametrize("r", [1, 3, 7])
def test_rankme_of_an_embedding_of_known_rank(r):
    z = known_rank(200, 16, [2.0] * r, offset=5.0)
    # equal singular values: entropy log r, RankMe exactly r once the common offset is removed
    assert rankme(torch.from_numpy(z), center=True) == pytest.approx(r, rel=1e-6)
    # un-centred (RankMe's definition) matches NumPy float64; the large common offset takes most of the
    # spectrum's mass, so the un-centred value understates the spread the samples have
    assert rankme(z) == pytest.approx(rankme_numpy(z), rel=1e-9)
    assert rankme(z) != pytest.approx(r, abs=0.02)
    if r > 1:
        assert rankme(z) < 0.7 * r


def test_rankme_unequal_singular_values_direct_formula():
    s = np.array([3.0, 2.0, 1.0])
    z = known_rank(100, 8, list(s))
    p = s / s.sum()
    assert rankme(z, center=True) == pytest.approx(np.exp(-(p * np.log(p)).sum()), rel=1e-6)


def test_sigreg_standardized_gaussian_vs_low_rank():
    rng = np.random.default_rng(0)
    gauss = rng.standard_normal((2000, 32)).astype(np.float32) * 3 + 1
    low = known_rank(2000, 32, [1.0] * 3).astype(np.float32)
    g = sigreg_standardized(gauss, num_slices=256)
    # estimating mean and std from the sample takes part of the mismatch away: below the raw expectation
    assert 0.3 * expected_gaussian_value() < g < expected_gaussian_value()
    assert sigreg_standardized(low, num_slices=256) > 20 * g


# ------------------------------------------------------------------ the monitor on a known model
class _Images:
    """Probe images whose first ``r`` pixels carry centred orthogonal columns of equal norm."""

    def __init__(self, n: int, r: int, labels: list[str] | None = None) -> None:
        z = known_rank(n, 48, [8.0] * r, seed=1)  # (n, 48) = 3 bands x 4 x 4 pixels
        self.pixels = z.reshape(n, 3, 4, 4).astype(np.float32)
        self.labels = labels or [None] * n

    def __len__(self) -> int:
        return len(self.pixels)

    def __getitem__(self, i: int) -> dict:
        return {"pixels": self.pixels[i]}


class _Encoder(nn.Module):
    """Identity normalisation; the embedding is the flattened image (rank known)."""

    patch_size = 4
    pooling = "mean"

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.eye(48))

    def normalize(self, raw: torch.Tensor) -> torch.Tensor:
        return raw

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) @ self.w

    def forward_probe_features(self, x: torch.Tensor) -> torch.Tensor:
        e = self(x)
        return torch.cat([e, e], dim=1)


class _Model(nn.Module):
    def __init__(self, proj: nn.Module) -> None:
        super().__init__()
        self.encoder = _Encoder()
        self.projector = proj


def test_monitor_measures_known_ranks_and_restores_training_mode():
    proj = nn.Sequential(nn.Linear(48, 2, bias=False))  # a rank-2 projector
    model = _Model(proj).train()
    monitor = HealthMonitor(model.encoder, _Images(120, 5), size=4, samples=1000)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    rng_before = torch.get_rng_state()
    row = monitor.measure(model)
    assert row["rank_embed_c"] == pytest.approx(5, rel=1e-5)
    assert row["rank_probe_c"] == pytest.approx(5, rel=1e-5)
    assert row["rank_proj_c"] <= 2.0 + 1e-6
    assert "rank_patch" not in row and "knn" not in row  # mean pooling; no labels
    assert model.training and model.projector.training
    assert torch.equal(torch.get_rng_state(), rng_before)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())


def test_monitor_subset_is_fixed_and_knn_on_separable_labels():
    labels = ["a" if i % 2 else "b" for i in range(120)]
    images = _Images(120, 5, labels)
    images.pixels[::2, 0] += 50.0  # class 'b' far away along one band
    a = HealthMonitor(_Encoder(), images, size=4, samples=40, seed=3)
    b = HealthMonitor(_Encoder(), images, size=4, samples=40, seed=3)
    assert torch.equal(a.inputs, b.inputs) and len(a.inputs) == 40
    row = a.measure(_Model(nn.Linear(48, 8)))
    assert row["knn"] == 1.0
    assert two_fold_knn(np.zeros((10, 2)), [None] * 10) is None


def test_warns_once_when_backbone_rank_falls(caplog):
    monitor = HealthMonitor(_Encoder(), _Images(50, 5), size=4, samples=50, warn_fraction=0.5)
    with caplog.at_level(logging.WARNING, logger="eo_jepa.train.health"):
        for step, rank in [(0, 20.0), (10, 15.0), (20, 9.0), (30, 4.0), (40, 3.0)]:
            monitor.check(step, {"rank_embed_c": rank, "rank_proj_c": 60.0})
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "step 20" in warnings[0].getMessage()


# ------------------------------------------------------------------ in the trainer
def test_trainer_logs_health_on_held_out_probe_set(tmp_path, caplog):
    from eo_jepa.chips.dataset import ChipDataset
    from eo_jepa.train.config import load_train_config
    from eo_jepa.train.trainer import run_training

    store = make_chip_store(tmp_path / "store", n_locations=24)
    index = ChipDataset(store).index
    index.loc[index.index[-12:], "split"] = "val"  # a held-out split for the probe set
    index.to_parquet(store / "index.parquet")
    cfg = load_train_config(
        TINY, [f"output_dir={tmp_path}", "max_steps=6", "log.rank_every=3", "log.tensorboard=false"]
    )
    with caplog.at_level(logging.INFO, logger="eo_jepa.train.health"):
        run = run_training(cfg, data=store)
    assert "12 images of split val" in caplog.text
    health = [json.loads(ln) for ln in (run / HEALTH).read_text().splitlines()]
    assert [r["step"] for r in health] == [0, 3, 6]
    metrics = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    by_step = {r["step"]: r for r in metrics}
    for h in health[1:]:
        row = by_step[h["step"]]
        for key in ("rank_embed_c", "rank_probe_c", "rank_proj_c", "sigreg_embed", "knn", "effective_rank"):
            assert row[key] == h[key]
        assert 1.0 <= row["rank_embed_c"] <= 12 and 1.0 <= row["rank_proj_c"] <= 12
    assert "rank_embed" not in by_step[1]


def test_resume_drops_later_health_rows_and_keeps_the_start(tmp_path):
    from eo_jepa.train.health import HealthLog, TrainHealth

    rows = [{"step": s, "rank_embed_c": r, "rank_proj_c": 9.0} for s, r in ((0, 20.0), (3, 12.0), (6, 4.0))]
    (tmp_path / HEALTH).write_text("".join(json.dumps(r) + "\n" for r in rows))
    log = HealthLog(tmp_path, None, resume_step=3)
    assert [r["step"] for r in log.rows] == [0, 3]
    assert [json.loads(ln)["step"] for ln in (tmp_path / HEALTH).read_text().splitlines()] == [0, 3]
    # a resumed run takes its start value from step 0 of health.jsonl instead of measuring again
    health = TrainHealth.__new__(TrainHealth)
    health.every, health.log = 3, None
    health.monitor = HealthMonitor(_Encoder(), _Images(20, 5), size=4, samples=20)
    health.start(_Model(nn.Linear(48, 4)), tmp_path, None, step=3)
    assert health.monitor.start == 20.0
    assert [json.loads(ln)["step"] for ln in (tmp_path / HEALTH).read_text().splitlines()] == [0, 3]


def test_trainer_scales_lam_to_its_batch_when_lam_batch_is_set():
    from eo_jepa.train.config import load_train_config
    from eo_jepa.train.model import make_loss

    plain = make_loss(load_train_config(TINY, ["loss.lam=0.05"]))
    assert plain.lam == 0.05
    scaled = make_loss(load_train_config(TINY, ["loss.lam=0.05", "loss.lam_batch=256", "data.batch_size=16"]))
    ratio = 0.05 / 0.95 * 256 / 16  # the recipe's trade-off at 256 samples per view, at 16
    assert scaled.lam == pytest.approx(ratio / (1 + ratio), rel=1e-12)
