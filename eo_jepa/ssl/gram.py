"""Gram anchoring: keep the patch-similarity structure of a frozen "Gram teacher" during training.

DINOv3 (Siméoni et al. 2025, section "Gram anchoring") observed that long self-supervised
training degrades dense (patch-level) features while global ones keep improving, and restored them
with a loss that ties the Gram matrix of the student's L2-normalised patch tokens to that of an
earlier model. For continued pretraining the natural Gram teacher is the starting checkpoint,
frozen; eo-jepa adds the term to the LeJEPA objective (``loss.gram`` in the training config)::

    loss = (1 − λ)·prediction + λ·SIGReg + w·gram

For one image with N patch tokens, student tokens S (N×D) and teacher tokens T (N×D'), each token
L2-normalised, G(S) = S·Sᵀ (N×N cosine similarities) and

    gram(image) = ‖G(S) − G(T)‖²_F / N²    (the mean over the N² entries, as DINOv3's MSE)

and the term is the mean over the images (and views) of the batch. Each entry lies in [−2, 2], so the
term lies in [0, 4]; the teacher's embedding size D' may differ from the student's, only the patch
grid has to match. Under DDP/FSDP each rank averages its own images and the gradient averaging of
the wrapper turns that into the mean over the global batch (equal batch sizes per rank).

The teacher is an :class:`~eo_jepa.models.encoder.Encoder` with ``requires_grad=False``, run in
eval mode under :func:`torch.no_grad` inside the trainer's autocast (the training precision); it is
never updated and has no optimiser state, and under FSDP it is sharded like the student (per block,
then the whole anchor). Optional ``upsample``: the teacher sees the views at ``upsample``× the
resolution and its patch-feature map is brought back to the student's grid with bicubic
interpolation, DINOv3's "high-resolution Gram teacher". The Gram matrices and the term are computed
in float32 also under bf16 autocast: the term is often ~1e-4, below bf16's resolution of a cosine.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from eo_jepa.errors import ConfigError, MissingNormStatsError
from eo_jepa.models import build_encoder


def gram_matrix(tokens: Tensor) -> Tensor:
    """(B, N, D) patch tokens -> (B, N, N) cosine similarities, in float32 at least (autocast off)."""
    x = tokens.float() if tokens.dtype in (torch.float16, torch.bfloat16) else tokens
    with torch.autocast(device_type=x.device.type, enabled=False):
        x = F.normalize(x, dim=-1)
        return x @ x.transpose(1, 2)


def gram_loss(student: Tensor, teacher: Tensor) -> Tensor:
    """Mean over images of ‖G(student) − G(teacher)‖²_F / N² for (B, N, D) and (B, N, D') tokens."""
    if student.dim() != 3 or teacher.dim() != 3 or student.shape[:2] != teacher.shape[:2]:
        raise ValueError(
            f"gram_loss needs (batch, patches, dim) tokens with the same batch and patch count, got "
            f"student {tuple(student.shape)} and teacher {tuple(teacher.shape)}."
        )
    return (gram_matrix(student) - gram_matrix(teacher.detach())).square().mean()


def block_index(encoder: Any, layer: int) -> int:
    """``layer`` (Python-style, −1 = last block) as a non-negative block index of ``encoder``."""
    depth = len(encoder.backbone.blocks)
    if not -depth <= layer < depth:
        raise ConfigError(
            f"loss.gram.layer={layer} is outside the {depth} blocks of {encoder.arch}; "
            f"use -1 (the last block) or an index in [-{depth}, {depth - 1}]."
        )
    return layer % depth


def embed_and_patches(encoder: Any, x: Tensor, layer: int = -1) -> tuple[Tensor, Tensor]:
    """One forward of ``encoder`` on (B, C, H, W): (global embedding (B, D), patch tokens (B, N, D)).

    The patch tokens are those of block ``layer`` after the encoder's final norm (for the last block
    these are exactly the tokens the global embedding is pooled from).
    """
    index = block_index(encoder, layer)
    if index == len(encoder.backbone.blocks) - 1:
        tokens = encoder.forward_tokens(x)
        return encoder.pool(tokens), tokens[:, encoder.num_prefix_tokens :]
    encoder._check(x)
    tokens, (patches,) = encoder.backbone.forward_intermediates(
        x, indices=[index], norm=True, output_fmt="NLC", intermediates_only=False
    )
    return encoder.pool(tokens), patches


class GramAnchor(nn.Module):
    """The Gram-anchoring term against a frozen teacher encoder.

    Args:
        teacher: the Gram teacher (an :class:`~eo_jepa.models.encoder.Encoder`); it is put in
            eval mode and its parameters are frozen.
        student_patch: the student's patch size (gives the patch grid of a view).
        weight: w, the term's weight in the loss.
        layer: the block whose patch tokens are compared (after the final norm), −1 = last.
        upsample: integer factor of the teacher's input resolution (1 = the student's).
        input_affine: optional per-channel (scale, shift), each (C,), mapping the student's
            normalised input to the teacher's normalisation (a teacher with other statistics).

    ``forward(views, student_patches)`` takes the view groups the term applies to, each
    (V, B, C, H, W), and the student's patch tokens of the same groups, each (V·B, N, D), and returns
    the mean term over all their images (unweighted; :meth:`add_to` adds ``weight`` times it to a loss).
    """

    def __init__(
        self,
        teacher: nn.Module,
        *,
        student_patch: int,
        weight: float,
        layer: int = -1,
        upsample: int = 1,
        input_affine: tuple[Tensor, Tensor] | None = None,
    ) -> None:
        super().__init__()
        if weight < 0:
            raise ConfigError(f"loss.gram.weight must be 0 or more, got {weight}.")
        if upsample < 1:
            raise ConfigError(f"loss.gram.teacher_upsample must be an integer >= 1, got {upsample}.")
        self.encoder = teacher.eval().requires_grad_(False)
        self.weight = float(weight)
        self.layer = block_index(teacher, layer)
        self.upsample = int(upsample)
        self.student_patch = int(student_patch)
        self.has_affine = input_affine is not None
        if input_affine is not None:
            scale, shift = (t.float().view(-1, 1, 1) for t in input_affine)
            self.register_buffer("_scale", scale, persistent=False)
            self.register_buffer("_shift", shift, persistent=False)

    def extra_repr(self) -> str:
        return f"weight={self.weight}, layer={self.layer}, upsample={self.upsample}"

    def train(self, mode: bool = True) -> GramAnchor:  # the teacher stays in eval mode
        return super().train(False)

    @torch.no_grad()
    def teacher_patches(self, x: Tensor, grid: tuple[int, int]) -> Tensor:
        """Teacher patch tokens (B, h·w, D') of (B, C, H, W) on the student's ``grid`` (h, w)."""
        if self.has_affine:
            x = x * self._scale + self._shift
        if self.upsample > 1:
            x = F.interpolate(x, scale_factor=self.upsample, mode="bicubic", align_corners=False)
        _, patches = embed_and_patches(self.encoder, x, self.layer)
        p = self.encoder.patch_size
        th, tw = x.shape[-2] // p, x.shape[-1] // p
        if (th, tw) != grid:
            fmap = patches.transpose(1, 2).reshape(x.shape[0], -1, th, tw)
            fmap = F.interpolate(fmap.float(), size=grid, mode="bicubic", align_corners=False)
            patches = fmap.flatten(2).transpose(1, 2)
        return patches

    def forward(self, views: Sequence[Tensor], student_patches: Sequence[Tensor]) -> Tensor:
        terms, count = [], 0
        for x, s in zip(views, student_patches, strict=True):
            flat = x.flatten(0, 1)
            grid = (flat.shape[-2] // self.student_patch, flat.shape[-1] // self.student_patch)
            if grid[0] * grid[1] != s.shape[1]:
                raise ValueError(
                    f"{s.shape[1]} student patch tokens do not tile {tuple(flat.shape[-2:])} views "
                    f"with patch size {self.student_patch}."
                )
            terms.append(gram_loss(s, self.teacher_patches(flat, grid)) * s.shape[0])
            count += s.shape[0]
        if not terms:
            raise ValueError("GramAnchor got no views.")
        return torch.stack(terms).sum() / count

    def add_to(self, out: Any, views: Sequence[Tensor | None], student_patches: Sequence[Tensor]) -> Any:
        """``out`` (a :class:`~eo_jepa.ssl.lejepa.LeJEPAOutput`) with ``weight · gram`` added to its loss
        and ``gram`` (detached) set; ``views`` are (globals, locals or None), of which the first
        ``len(student_patches)`` groups are used."""
        groups = [v for v in views if v is not None][: len(student_patches)]
        term = self(groups, student_patches)
        return dataclasses.replace(out, loss=out.loss + self.weight * term, gram=term.detach())


def frozen_copy(encoder: nn.Module) -> nn.Module:
    """A frozen deep copy of ``encoder`` (the ``init`` teacher: the student's starting weights)."""
    return copy.deepcopy(encoder).eval().requires_grad_(False)


def input_affine(student: Any, teacher: Any) -> tuple[Tensor, Tensor] | None:
    """Per-channel (scale, shift) taking the student's normalised input to the teacher's, or None when equal.

    Student: x_s = ((raw + o_s)·s_s − m_s)/d_s; teacher: x_t = ((raw + o_t)·s_t − m_t)/d_t.
    """
    if list(student.bands) != list(teacher.bands):
        raise ConfigError(
            f"The Gram teacher's bands {list(teacher.bands)} differ from the student's {list(student.bands)}."
        )
    ms, ds = student._mean.flatten().double(), student._std.flatten().double()
    mt, dt = teacher._mean.flatten().double(), teacher._std.flatten().double()
    ss, os_ = student.input_scale, student.input_offset
    st, ot = teacher.input_scale, teacher.input_offset
    if torch.equal(ms, mt) and torch.equal(ds, dt) and (ss, os_) == (st, ot):
        return None
    # raw = (x_s·d_s + m_s)/s_s − o_s  =>  x_t = x_s·(d_s·s_t/(s_s·d_t)) + ((m_s/s_s − o_s + o_t)·s_t − m_t)/d_t
    scale = ds * st / (ss * dt)
    shift = ((ms / ss - os_ + ot) * st - mt) / dt
    return scale.float(), shift.float()


def shard_like_student(anchor: GramAnchor, env: Any, strategy: str) -> GramAnchor:
    """Under FSDP, shard the teacher per transformer block and then as a whole (as the student);
    under DDP it is replicated (it has no gradients to reduce). Parameters are resharded after
    every forward: the teacher has no backward."""
    if strategy == "fsdp" and env.distributed:
        from torch.distributed.fsdp import fully_shard

        for block in anchor.encoder.backbone.blocks:
            fully_shard(block, reshard_after_forward=True)
        fully_shard(anchor, reshard_after_forward=True)
    return anchor


def encode(encoder: Any, x: Tensor, layer: int | None) -> tuple[Tensor, Tensor | None]:
    """(global embedding, patch tokens of ``layer``) of one forward; ``layer=None``: (``encoder(x)``, None)."""
    if layer is None:
        return encoder(x), None
    emb, patches = embed_and_patches(encoder, x, layer)
    return emb, patches.clone()  # a fresh tensor, not a view of the token sequence (FSDP hooks)


def load_teacher(source: str, student: Any) -> Any:
    """The Gram teacher: ``'init'`` (a frozen copy of the student as built, i.e. its starting
    weights) or a registry name / ``hf://`` / local checkpoint adapted to the student's bands,
    keeping its own normalisation when it covers them (the views are mapped to it)."""
    if source == "init":
        return frozen_copy(student)
    kwargs = {"img_size": student.img_size, "sensor": student.sensor}
    try:
        teacher = build_encoder(None, student.bands, pretrained=source, **kwargs)
    except MissingNormStatsError:  # the teacher has no statistics for some of the student's bands
        teacher = build_encoder(
            None, student.bands, pretrained=source, norm_stats=student.norm_stats,
            input_scale=student.input_scale, **kwargs,
        )  # fmt: skip
    return teacher.to(student._mean.device).eval().requires_grad_(False)


def make_gram(cfg: Any, student: Any, env: Any) -> GramAnchor | None:
    """The trainer's Gram anchor from ``cfg.loss.gram`` (None when its weight is 0), on the student's
    device and, under FSDP, sharded like it. Build it before a resume loads the student's weights:
    the ``init`` teacher is the run's starting point, not the checkpoint's."""
    g = cfg.loss.gram
    if g.weight == 0:
        return None
    teacher = load_teacher(g.teacher, student)
    anchor = GramAnchor(
        teacher,
        student_patch=student.patch_size,
        weight=g.weight,
        layer=g.layer,
        upsample=g.teacher_upsample,
        input_affine=input_affine(student, teacher),
    ).to(student._mean.device)
    return shard_like_student(anchor, env, cfg.dist.strategy)
