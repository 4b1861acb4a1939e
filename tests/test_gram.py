"""Gram anchoring (eo_jepa.ssl.gram): the term against a direct float64 formula, exactly zero at the
start when the teacher is the initial model, and a teacher that never changes inside the real trainer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from train_data import BANDS, make_chip_store

from eo_jepa.errors import ConfigError
from eo_jepa.models import build_encoder
from eo_jepa.ssl import gram as G
from eo_jepa.train.config import load_train_config

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "train" / "tiny_cpu.yaml"


def _reference64(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Direct float64 formula, image by image: mean_b ‖G(S_b) − G(T_b)‖²_F / N², token by token normalised."""
    terms = []
    for s, t in zip(student.double(), teacher.double(), strict=True):
        s = s / s.pow(2).sum(-1, keepdim=True).sqrt()
        t = t / t.pow(2).sum(-1, keepdim=True).sqrt()
        gs = torch.einsum("id,jd->ij", s, s)
        gt = torch.einsum("id,jd->ij", t, t)
        n = s.shape[0]
        terms.append(((gs - gt) ** 2).sum() / n**2)
    return torch.stack(terms).mean()


def _encoder(seed: int, arch: str = "vit_tiny_patch8", **stats) -> torch.nn.Module:
    torch.manual_seed(seed)
    norm = stats or {b: {"mean": 1000.0 + 10 * i, "std": 500.0 + i} for i, b in enumerate(BANDS)}
    return build_encoder(arch, BANDS, img_size=32, norm_stats=norm)


def test_value_and_gradient_match_a_direct_float64_formula():
    torch.manual_seed(0)
    s = torch.randn(3, 16, 24, requires_grad=True)
    t = torch.randn(3, 16, 40)  # the teacher's width may differ; only the patch count must match
    got = G.gram_loss(s, t)
    got.backward()
    s64 = s.detach().double().requires_grad_(True)
    ref = _reference64(s64, t)
    ref.backward()
    torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(s.grad.double(), s64.grad, rtol=1e-4, atol=1e-8)
    # the teacher gets no gradient even when its tokens would accept one
    t2 = t.clone().requires_grad_(True)
    G.gram_loss(s.detach().requires_grad_(True), t2).backward()
    assert t2.grad is None


def test_gram_is_float32_under_bf16_autocast():
    """The term is often ~1e-4, below bf16's resolution of a cosine: Gram matrices stay float32."""
    torch.manual_seed(0)
    s, t = torch.randn(2, 64, 32), torch.randn(2, 64, 32)
    t = s + 0.01 * t  # a student close to its teacher, as in training
    ref = _reference64(s, t)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = G.gram_loss(s, t)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), ref, rtol=1e-4, atol=0)


def test_anchor_term_through_encoders_matches_float64_and_is_zero_for_the_initial_model():
    """The whole path (student patch tokens of a block, teacher forward, views of two sizes) against
    float64 tokens, and exactly 0 when the teacher is a copy of the student (the `init` teacher)."""
    student = _encoder(0)
    x_g = torch.randn(2, 3, len(BANDS), 32, 32)
    x_l = torch.randn(4, 3, len(BANDS), 16, 16)
    anchor = G.GramAnchor(G.load_teacher("init", student), student_patch=8, weight=1.0, layer=-1)
    _, pg = G.encode(student, x_g.flatten(0, 1), -1)
    _, pl = G.encode(student, x_l.flatten(0, 1), -1)
    zero = anchor([x_g, x_l], [pg, pl])
    assert zero.item() == 0.0  # bitwise: same weights, same input, same kernels
    # another teacher, an intermediate block: value and gradient vs float64 on the same tokens
    other = _encoder(1)
    anchor = G.GramAnchor(other, student_patch=8, weight=1.0, layer=5)
    _, pg = G.encode(student, x_g.flatten(0, 1), 5)
    got = anchor([x_g], [pg])
    (g_got,) = torch.autograd.grad(got, pg)
    blocks_out = other.backbone.forward_intermediates(
        x_g.flatten(0, 1), indices=[5], norm=True, output_fmt="NLC", intermediates_only=True
    )[0]
    p64 = pg.detach().double().requires_grad_(True)
    ref = _reference64(p64, blocks_out.detach())
    (g_ref,) = torch.autograd.grad(ref, p64)
    torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(g_got.double(), g_ref, rtol=1e-4, atol=1e-9)
    # the student's block-5 tokens are the block's output after the final norm, by a manual loop
    with torch.no_grad():
        bb = student.backbone
        h = bb.norm_pre(bb._pos_embed(bb.patch_embed(x_g.flatten(0, 1))))
        for blk in bb.blocks[:6]:
            h = blk(h)
        torch.testing.assert_close(pg.detach(), bb.norm(h)[:, bb.num_prefix_tokens :])


def test_upsampled_teacher_is_resampled_to_the_student_grid():
    teacher = _encoder(1)
    x = torch.randn(1, 2, len(BANDS), 32, 32)
    anchor = G.GramAnchor(teacher, student_patch=8, weight=1.0, upsample=2)
    flat = x.flatten(0, 1)
    got = anchor.teacher_patches(flat, (4, 4))
    with torch.no_grad():
        big = torch.nn.functional.interpolate(flat, scale_factor=2, mode="bicubic", align_corners=False)
        fmap = teacher.forward_features(big)  # (B, D, 8, 8)
        ref = torch.nn.functional.interpolate(fmap, size=(4, 4), mode="bicubic", align_corners=False)
    torch.testing.assert_close(got, ref.flatten(2).transpose(1, 2))
    assert got.shape == (2, 16, teacher.embed_dim)


def test_a_teacher_with_other_statistics_sees_its_own_normalisation():
    student = _encoder(0)
    teacher = _encoder(
        1, **{b: {"mean": 200.0 * (i + 1), "std": 900.0 - 50 * i} for i, b in enumerate(BANDS)}
    )
    scale, shift = G.input_affine(student, teacher)
    raw = torch.rand(2, len(BANDS), 16, 16) * 5000
    torch.testing.assert_close(
        student.normalize(raw) * scale.view(-1, 1, 1) + shift.view(-1, 1, 1), teacher.normalize(raw)
    )
    assert G.input_affine(student, _encoder(2)) is None  # same statistics: no mapping


def test_bad_settings_are_named():
    with pytest.raises(ConfigError, match=r"loss.gram.layer=12 is outside the 12 blocks"):
        G.GramAnchor(_encoder(0), student_patch=8, weight=1.0, layer=12)
    with pytest.raises(ConfigError, match=r"Invalid value -1.0 for 'loss.gram.weight'; allowed: a finite number >= 0"):
        load_train_config(TINY, ["loss.gram.weight=-1"])
    with pytest.raises(ConfigError, match=r"loss.gram.views.*choose one of: 'global', 'all'"):
        load_train_config(TINY, ["loss.gram.views=local"])


def test_trainer_logs_gram_and_never_touches_the_teacher(tmp_path):
    """The real trainer with loss.gram on: `gram` is logged beside pred/sigreg, exactly 0 at the first
    step (teacher = initial model), then positive; the teacher's tensors are bitwise unchanged, never
    get a gradient, hold no optimiser state and are not saved in the checkpoint."""
    from eo_jepa.train import distributed
    from eo_jepa.train.checkpointing import load_state
    from eo_jepa.train.model import build_model
    from eo_jepa.train.trainer import Trainer

    store = make_chip_store(tmp_path / "store", n_locations=16)
    cfg = load_train_config(
        TINY,
        [f"output_dir={tmp_path}", "name=g", "max_steps=4", "data.batch_size=8", "log.tensorboard=false",
         "loss.gram.weight=1.0", "loss.gram.views=all"],
    )  # fmt: skip
    trainer = Trainer(cfg, distributed.setup(cfg.device), data=store)
    anchor = trainer.gram
    before = {k: v.clone() for k, v in anchor.state_dict().items()}
    run = trainer.fit()
    rows = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert rows[0]["gram"] == 0.0
    assert rows[-1]["gram"] > 0.0
    assert all(r["loss"] != (1 - cfg.loss.lam) * r["pred"] + cfg.loss.lam * r["sigreg"] for r in rows[1:])
    for name, p in anchor.named_parameters():
        assert not p.requires_grad and p.grad is None, name
    for k, v in anchor.state_dict().items():
        assert torch.equal(v, before[k]), k
    state = load_state(run / "checkpoints" / "last.pt")
    n_params = sum(1 for _ in build_model(cfg, anchor.encoder).parameters())
    assert len(state["optimizer"]["state"]) == n_params  # the student's and projector's only
    assert not any("anchor" in k or "teacher" in k for k in state["model"])
    student = state["model"]["encoder.backbone.blocks.0.mlp.fc1.weight"]
    assert not torch.equal(student, before["encoder.backbone.blocks.0.mlp.fc1.weight"])  # the student moved


def test_teacher_from_a_checkpoint_folder_keeps_its_weights_and_normalisation(tmp_path):
    """loss.gram.teacher = a saved model: loaded for the student's bands, frozen, and fed the views in
    its own normalisation (the student's normalised input mapped by input_affine)."""
    from eo_jepa.models import save_encoder

    student = _encoder(0)
    other = _encoder(1, **{b: {"mean": 300.0 + i, "std": 800.0 - i} for i, b in enumerate(BANDS)})
    save_encoder(other, tmp_path / "teacher")
    teacher = G.load_teacher(str(tmp_path / "teacher"), student)
    assert not any(p.requires_grad for p in teacher.parameters())
    for k, v in other.state_dict().items():
        torch.testing.assert_close(teacher.state_dict()[k], v, rtol=0, atol=0)
    anchor = G.GramAnchor(teacher, student_patch=8, weight=1.0, input_affine=G.input_affine(student, teacher))
    raw = torch.rand(3, len(BANDS), 32, 32) * 4000
    got = anchor.teacher_patches(student.normalize(raw), (4, 4))
    with torch.no_grad():
        ref = other.forward_tokens(other.normalize(raw))[:, other.num_prefix_tokens :]
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)
