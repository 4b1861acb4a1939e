"""LeJEPA objective, projector head and RankMe effective rank."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from eo_jepa.ssl import EmbeddingError, LeJEPALoss, LeJEPAOutput, Projector, SIGReg, effective_rank

pytestmark = pytest.mark.usefixtures("one_thread")




def _views(vg=2, vl=4, b=64, p=32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    base = torch.randn(1, b, p, generator=gen)
    g = base + 0.3 * torch.randn(vg, b, p, generator=gen)
    loc = base + 0.5 * torch.randn(vl, b, p, generator=gen)
    return g, loc


@pytest.mark.parametrize("with_locals", [True, False])
def test_loss_matches_the_formula(with_locals):
    g, loc = _views()
    lam = 0.05
    loss_fn = LeJEPALoss(num_slices=128, lam=lam)
    out = loss_fn(g, loc if with_locals else None)
    assert isinstance(out, LeJEPAOutput)
    # independent: NumPy prediction term, reference SIGReg on all views with the same directions
    views = np.concatenate([g.numpy(), loc.numpy()]) if with_locals else g.numpy()
    target = g.numpy().astype(np.float64).mean(axis=0)
    pred = ((views.astype(np.float64) - target) ** 2).mean()
    sig = SIGReg(128, impl="reference")(torch.from_numpy(views)).item()
    assert out.pred.item() == pytest.approx(pred, rel=1e-5)
    assert out.sigreg.item() == pytest.approx(sig, rel=1e-5)
    assert out.loss.item() == pytest.approx((1 - lam) * pred + lam * sig, rel=1e-5)
    assert int(loss_fn.sigreg.step) == 1
    assert not out.pred.requires_grad and not out.sigreg.requires_grad


def test_gradient_reaches_every_view_without_stop_gradient():
    g, loc = _views(b=32)
    g.requires_grad_()
    loc.requires_grad_()
    LeJEPALoss(num_slices=64)(g, loc).loss.backward()
    assert g.grad is not None and loc.grad is not None
    assert g.grad.abs().sum() > 0 and loc.grad.abs().sum() > 0
    # no stop-gradient: with lam=0 the gradient into the global views includes the path through the
    # target (their mean); compare with autograd of the plain formula
    g2 = g.detach().clone().requires_grad_()
    loc2 = loc.detach().clone().requires_grad_()
    views = torch.cat([g2, loc2])
    pred = (views - g2.mean(0)).square().mean()
    pred.backward()
    g3 = g.detach().clone().requires_grad_()
    loc3 = loc.detach().clone().requires_grad_()
    LeJEPALoss(num_slices=64, lam=0.0)(g3, loc3).loss.backward()
    torch.testing.assert_close(g3.grad, g2.grad)
    torch.testing.assert_close(loc3.grad, loc2.grad)


def test_lam_bounds_and_bad_views():
    with pytest.raises(ValueError, match="lam must lie in"):
        LeJEPALoss(lam=1.5)
    loss_fn = LeJEPALoss(num_slices=16)
    with pytest.raises(EmbeddingError, match=r"global_proj shaped \(views, batch, dim\), got \(8, 4\)"):
        loss_fn(torch.randn(8, 4))
    with pytest.raises(EmbeddingError, match=r"same \(batch, dim\).*local_proj of shape \(3, 8, 5\)"):
        loss_fn(torch.randn(2, 8, 4), torch.randn(3, 8, 5))
    with pytest.raises(EmbeddingError, match=r"non-finite.*shape \(2, 8, 4\)"):
        loss_fn(torch.full((2, 8, 4), float("nan")))


def test_bf16_autocast_gives_fp32_loss():
    proj = Projector(16, hidden_dim=32, out_dim=24)
    x = torch.randn(3, 20, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z = proj(x)
        out = LeJEPALoss(num_slices=32)(z[:2], z[2:])
    assert out.loss.dtype == torch.float32 and torch.isfinite(out.loss)
    out.loss.backward()
    assert all(p.grad is not None for p in proj.parameters())


def test_training_a_tiny_encoder_lowers_the_loss_and_avoids_collapse():
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    data = torch.randn(256, 12, generator=gen)
    encoder = torch.nn.Sequential(torch.nn.Linear(12, 32), torch.nn.ReLU(), torch.nn.Linear(32, 32))
    proj = Projector(32, hidden_dim=64, out_dim=16, num_layers=2)
    loss_fn = LeJEPALoss(num_slices=64, lam=0.2)
    opt = torch.optim.Adam([*encoder.parameters(), *proj.parameters()], lr=3e-3)
    losses = []
    for _ in range(60):
        g = data + 0.1 * torch.randn(2, *data.shape, generator=gen)
        loc = data + 0.3 * torch.randn(2, *data.shape, generator=gen)
        z = proj(encoder(torch.cat([g, loc])))
        out = loss_fn(z[:2], z[2:])
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(out.loss.item())
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5])
    with torch.no_grad():
        emb = proj(encoder(data))
    assert effective_rank(emb) > 8  # of 16 dims: not collapsed


def test_projector_layers_and_shapes():
    proj = Projector(10, hidden_dim=20, out_dim=7, num_layers=3)
    kinds = [type(m).__name__ for m in proj.net]
    assert kinds == ["Linear", "BatchNorm1d", "ReLU", "Linear", "BatchNorm1d", "ReLU", "Linear"]
    assert proj(torch.randn(5, 10)).shape == (5, 7)
    assert proj(torch.randn(3, 5, 10)).shape == (3, 5, 7)
    # views are folded into the batch: BatchNorm sees all views at once
    x = torch.randn(3, 5, 10)
    torch.testing.assert_close(proj(x), proj(x.reshape(15, 10)).reshape(3, 5, 7))
    assert [type(m).__name__ for m in Projector(4, out_dim=2, num_layers=1).net] == ["Linear"]
    with pytest.raises(ValueError, match=r"got shape \(5, 9\)"):
        proj(torch.randn(5, 9))
    with pytest.raises(ValueError, match="num_layers"):
        Projector(4, num_layers=0)


def test_effective_rank_matches_numpy_and_extremes():
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(300, 20, generator=gen) @ torch.diag(torch.linspace(0.1, 2.0, 20))
    s = np.linalg.svd(z.double().numpy(), compute_uv=False)
    p = s / s.sum() + 1e-12
    assert effective_rank(z) == pytest.approx(float(np.exp(-(p * np.log(p)).sum())), rel=1e-9)
    assert 19 < effective_rank(torch.randn(5000, 20, generator=gen)) <= 20
    line = torch.randn(100, 1, generator=gen) @ torch.randn(1, 20, generator=gen)
    assert effective_rank(line) == pytest.approx(1.0, abs=1e-4)
    with pytest.raises(ValueError, match=r"got shape \(20,\)"):
        effective_rank(torch.randn(20))


def test_sigreg_on_backbone_embeddings_matches_float64_reference():
    """loss.embed_lam: (1-λ)·pred + λ·SIGReg(proj) + w·SIGReg(embeddings), value and gradient in float64."""
    g, loc = _views(b=48, p=16)
    gen = torch.Generator().manual_seed(5)
    emb = torch.randn(6, 48, 24, generator=gen, dtype=torch.float64) * 2 + 1
    lam, w = 0.05, 0.3
    e1 = emb.clone().requires_grad_()
    out = LeJEPALoss(num_slices=64, lam=lam, embed_lam=w)(g.double(), loc.double(), e1)
    out.loss.backward()
    # independent: the direct formula (reference impl, float64) with the same step-0 directions
    e2 = emb.clone().requires_grad_()
    views = torch.cat([g, loc]).double()
    pred = (views - g.double().mean(0)).square().mean()
    ref = (1 - lam) * pred + lam * SIGReg(64, impl="reference")(views)
    sig_e = SIGReg(64, impl="reference")(e2)
    ref = ref + w * sig_e
    ref.backward()
    assert out.loss.item() == pytest.approx(ref.item(), rel=1e-6)  # the prediction term runs in float32
    assert out.sigreg_embed is not None
    assert out.sigreg_embed.item() == pytest.approx(sig_e.item(), rel=1e-10)
    assert out.sigreg_embed.item() > 1.0  # not N(0, I): shifted and scaled
    torch.testing.assert_close(e1.grad, e2.grad, rtol=1e-8, atol=1e-12)
    # the default objective ignores embeddings and reports none
    plain = LeJEPALoss(num_slices=64, lam=lam)(g, loc, emb.float())
    assert plain.sigreg_embed is None
    assert plain.loss.item() == pytest.approx(
        ((1 - lam) * pred + lam * SIGReg(64, impl="reference")(views)).item(), rel=1e-5
    )


def test_sigreg_on_embeddings_needs_them_in_the_right_shape():
    g, loc = _views(b=8, p=4)
    loss_fn = LeJEPALoss(num_slices=8, embed_lam=0.1)
    with pytest.raises(EmbeddingError, match="needs embeddings"):
        loss_fn(g, loc)
    with pytest.raises(EmbeddingError, match=r"same \(views, batch\) \(6, 8\).*\(2, 8, 5\)"):
        loss_fn(g, loc, torch.randn(2, 8, 5))
    with pytest.raises(ValueError, match="embed_lam must be 0 or more"):
        LeJEPALoss(embed_lam=-1.0)


def test_sigreg_grows_with_the_batch_on_low_rank_embeddings_so_lam_is_scaled():
    """Why loss.lam_batch: for non-Gaussian (here rank-4) embeddings the statistic is ~N times a
    distance, for Gaussian ones it stays O(1); the prediction term does not depend on N."""
    from eo_jepa.ssl import batch_scaled_lam

    sig = SIGReg(num_slices=128, distributed=False).eval()
    gen = torch.Generator().manual_seed(0)

    def mean_stat(n: int, rank: int | None) -> float:
        vals = []
        for _ in range(4):
            z = torch.randn(n, 32, generator=gen)
            if rank is not None:
                z = torch.randn(n, rank, generator=gen) @ torch.randn(rank, 32, generator=gen) / rank**0.5
            vals.append(float(sig(z)))
        return float(np.mean(vals))

    low64, low512 = mean_stat(64, 4), mean_stat(512, 4)
    assert 5.0 < low512 / low64 < 11.0  # ~8x for 8x the batch
    assert mean_stat(512, None) < 1.5 and mean_stat(64, None) < 1.5
    # λ'/(1-λ') = λ/(1-λ) · lam_batch / batch, checked against the direct formula
    for lam, ref, n in ((0.05, 256, 32), (0.05, 256, 256), (0.2, 64, 512), (0.5, 10, 10)):
        got = batch_scaled_lam(lam, ref, n)
        assert got / (1 - got) == pytest.approx(lam / (1 - lam) * ref / n, rel=1e-12)
    assert batch_scaled_lam(0.05, None, 32) == 0.05 and batch_scaled_lam(0.05, 256, 256) == pytest.approx(
        0.05
    )
