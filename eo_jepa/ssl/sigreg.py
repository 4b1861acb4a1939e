"""SIGReg: the sliced Epps–Pulley test of LeJEPA (Balestriero & LeCun 2025, arXiv:2511.08544).

SIGReg pushes a batch of embeddings towards an isotropic standard Gaussian. The embeddings
``z`` (N, D) are projected on K random unit directions (slices); on every slice the empirical
characteristic function (ECF) of the N projections is compared with that of N(0, 1),
``phi(t) = exp(-t²/2)``, on a quadrature grid of T knots ``t_j`` in ``[0, t_max]``:

    stat_k = N · Σ_j w_j · ((mean_n cos(t_j x_nk) − phi(t_j))² + (mean_n sin(t_j x_nk))²)

with ``w_j`` the trapezoid weights doubled (the integrand is even in t, so the integral over the
real line is twice the one over t ≥ 0) times the Gaussian window ``exp(-t_j²/2)``. The statistic
is the mean of ``stat_k`` over slices (and over views for (V, N, D) inputs). It is the Epps–Pulley
(1983) goodness-of-fit statistic on each slice; by Cramér–Wold, matching all 1-D marginals means
matching the distribution.

Two implementations share one interface:

* ``"reference"``: the formula as written, materialising (V, N, K, T) tensors; the oracle.
* ``"fused"`` (default): a custom autograd function that keeps only the (V, N, K) projections.
  With the knots equally spaced, ``t_j = j·Δt``, the identity ``exp(i t_j x) = exp(i Δt x)^j``
  turns T cos/sin pairs per element into one complex exponential followed by complex
  multiplications; the backward pass recomputes those powers (Horner's scheme) instead of
  storing them. Work is done in chunks of rows so the temporaries stay small and in cache.

Both compute in float32 (float64 inputs stay float64), also under bf16 autocast; the fused
kernel adds its per-chunk ECF sums in float64.

Distributed training: when ``torch.distributed`` is initialised, the cos/sin sums and the row
count are all-reduced (SUM, then divided: gloo has no AVG) before squaring, so the value is the
statistic of the global batch and each rank's gradient is exactly the gradient of that global
statistic with respect to its own rows. See :func:`scale_grad` for DDP's gradient averaging.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from eo_jepa.errors import EOJepaError
from eo_jepa.utils.allreduce import sum_over_ranks_grad_unchanged

Impl = Literal["fused", "reference"]
IMPLS: tuple[str, ...] = ("fused", "reference")

# Elements (rows × slices) per chunk in the fused kernel. On CPU the chunk stays just below ATen's
# intra-op grain size (32768), so every op of the kernel runs inline on the calling thread: no
# OpenMP fork/join per op, whose barriers cost milliseconds each when the cores are shared
# (measured on 2 busy cores: 256K-element chunks with 2 threads ran 15× slower than these), and
# the complex temporaries (256 KiB) stay in L2. On GPUs bigger chunks amortise kernel launches.
_CHUNK_ELEMENTS = {"cpu": 32767, "default": 1 << 22}


class EmbeddingError(EOJepaError, ValueError):
    """Embeddings given to SIGReg / LeJEPA have a bad shape or non-finite values."""


# ----------------------------------------------------------------------------------------------
# quadrature, directions, distributed helpers
# ----------------------------------------------------------------------------------------------


def quadrature(
    num_knots: int = 17, t_max: float = 3.0, *, dtype: torch.dtype = torch.float64
) -> tuple[Tensor, Tensor, Tensor]:
    """Knots ``t`` (T,), target ECF ``phi = exp(-t²/2)`` and weights ``w`` (T,) of SIGReg.

    ``w`` are the trapezoid weights on [0, t_max] doubled for the symmetric half (t < 0) and
    multiplied by the Gaussian window ``exp(-t²/2)``.
    """
    if num_knots < 2:
        raise ValueError(f"num_knots must be at least 2, got {num_knots}; the default is 17.")
    if not t_max > 0:
        raise ValueError(f"t_max must be positive, got {t_max}; the default is 3.0.")
    t = torch.linspace(0.0, t_max, num_knots, dtype=torch.float64)
    dt = t_max / (num_knots - 1)
    trapezoid = torch.full((num_knots,), dt, dtype=torch.float64)
    trapezoid[0] = trapezoid[-1] = dt / 2
    phi = torch.exp(-0.5 * t * t)
    w = 2.0 * trapezoid * phi
    return t.to(dtype), phi.to(dtype), w.to(dtype)


def random_directions(dim: int, num_slices: int, seed: int, *, dtype: torch.dtype = torch.float32) -> Tensor:
    """Unit-norm Gaussian directions (dim, num_slices), drawn on CPU from ``seed``.

    Drawing on CPU with a seeded ``torch.Generator`` gives the same directions on every rank
    and every device type.
    """
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    a = torch.randn(dim, num_slices, generator=gen, dtype=torch.float64)
    a /= a.norm(dim=0, keepdim=True)
    return a.to(dtype)


def world_size() -> int:
    """Number of ``torch.distributed`` ranks, 1 when it is not initialised."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


class _ScaleGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, factor: float) -> Tensor:  # type: ignore[override]
        ctx.factor = factor
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        return grad * ctx.factor, None


def scale_grad(x: Tensor, factor: float) -> Tensor:
    """Return ``x`` unchanged in value whose gradient is multiplied by ``factor`` in backward.

    Used to compensate DDP/FSDP gradient averaging for SIGReg: every rank's SIGReg value is the
    statistic of the *global* batch and its gradient is already the exact global gradient with
    respect to the local rows, so DDP's average over ranks would divide it by the world size.
    ``scale_grad(sigreg, world_size)`` undoes that.
    """
    return _ScaleGrad.apply(x, float(factor))


# ----------------------------------------------------------------------------------------------
# the two implementations; both take projections x (V, N, K) and return per-view values (V,)
# ----------------------------------------------------------------------------------------------


def _statistic(cos_mean: Tensor, sin_mean: Tensor, n: Tensor, phi: Tensor, w: Tensor) -> Tensor:
    """Per-view statistic from ECF means (V, K, T): N · Σ_j w_j err_j, averaged over slices."""
    err = (cos_mean - phi).square() + sin_mean.square()
    return n * (err @ w).mean(dim=-1)


def _reference(x: Tensor, t: Tensor, phi: Tensor, w: Tensor, reduce: bool) -> Tensor:
    xt = x.unsqueeze(-1) * t  # (V, N, K, T)
    cos_sum = torch.cos(xt).sum(dim=1)
    sin_sum = torch.sin(xt).sum(dim=1)
    n = torch.tensor(float(x.shape[1]), dtype=x.dtype, device=x.device)
    if reduce:
        cos_sum = sum_over_ranks_grad_unchanged(cos_sum)
        sin_sum = sum_over_ranks_grad_unchanged(sin_sum)
        n = sum_over_ranks_grad_unchanged(n)
        _check_count(int(n.item()), x.shape)  # the local N was checked by the module
    return _statistic(cos_sum / n, sin_sum / n, n, phi, w)


def _check_count(n: int, shape: torch.Size) -> None:
    if n < 2:
        raise EmbeddingError(
            f"SIGReg needs at least 2 samples in the (global) batch, got embeddings of shape "
            f"{tuple(shape)}; pass a batch with N >= 2 rows."
        )


def _chunk_rows(num_slices: int, device: torch.device) -> int:
    elements = _CHUNK_ELEMENTS.get(device.type, _CHUNK_ELEMENTS["default"])
    return max(1, elements // max(1, num_slices))


class _FusedSIGReg(torch.autograd.Function):
    """SIGReg on projections x (V, N, K) without materialising (V, N, K, T) tensors."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx,
        x: Tensor,
        dt: float,
        phi: Tensor,
        w: Tensor,
        reduce: bool,
    ) -> Tensor:
        v, n_local, k = x.shape
        num_knots = phi.shape[0]
        cdtype = torch.complex128 if x.dtype == torch.float64 else torch.complex64
        # ecf[v, j, k] = Σ_n exp(i t_j x_vnk), accumulated over chunks in complex128 (it is tiny)
        ecf = torch.zeros(v, num_knots, k, dtype=torch.complex128, device=x.device)
        ecf[:, 0] = float(n_local)  # t_0 = 0: cos = 1, sin = 0
        rows = _chunk_rows(k, x.device)
        part = torch.empty(num_knots - 1, k, dtype=cdtype, device=x.device)
        with torch.no_grad():
            for vi in range(v):
                for start in range(0, n_local, rows):
                    theta = x[vi, start : start + rows] * dt
                    base = torch.polar(torch.ones_like(theta), theta)  # exp(i Δt x)
                    power = base.clone()
                    for j in range(1, num_knots):
                        if j > 1:
                            power.mul_(base)  # exp(i j Δt x): angle addition, no cos/sin
                        torch.sum(power, dim=0, out=part[j - 1])
                    ecf[vi, 1:] += part
            sums = torch.view_as_real(ecf)  # (V, T, K, 2) float64: cos sums, sin sums
            n = torch.tensor(float(n_local), dtype=torch.float64, device=x.device)
            if reduce:  # global ECF: SUM over ranks, divide by the global N below
                packed = torch.cat([sums.flatten(), n.reshape(1)])
                dist.all_reduce(packed, op=dist.ReduceOp.SUM)
                sums = packed[:-1].view_as(sums)
                n = packed[-1]
                _check_count(int(n.item()), x.shape)
            phi64, w64 = phi.to(torch.float64), w.to(torch.float64)
            cos_mean = sums[..., 0].transpose(1, 2) / n  # (V, K, T)
            sin_mean = sums[..., 1].transpose(1, 2) / n
            value = _statistic(cos_mean, sin_mean, n, phi64, w64)
        ctx.save_for_backward(x, cos_mean, sin_mean, phi64, w64)
        ctx.dt = dt
        ctx.cdtype = cdtype
        return value.to(x.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor | None, None, None, None, None]:  # type: ignore[override]
        x, cos_mean, sin_mean, phi, w = ctx.saved_tensors
        v, n_local, k = x.shape
        num_knots = phi.shape[0]
        t = torch.arange(num_knots, dtype=phi.dtype, device=x.device) * ctx.dt
        # d stat_v / d x_nk = (2/K) Σ_j w_j t_j (s_jk cos(t_j x) − (c_jk − phi_j) sin(t_j x))
        #                   = Re Σ_j beta_jk exp(i t_j x),  beta_jk = (2/K) w_j t_j (s_jk + i (c_jk − phi_j))
        scale = grad_out.to(phi.dtype).reshape(v, 1, 1) * (2.0 / k) * (w * t)  # (V, 1, T)
        beta = torch.complex(sin_mean * scale, (cos_mean - phi) * scale)  # (V, K, T)
        beta = beta.transpose(1, 2).to(ctx.cdtype).contiguous()  # (V, T, K)
        grad = torch.empty_like(x)
        rows = _chunk_rows(k, x.device)
        for vi in range(v):
            for start in range(0, n_local, rows):
                theta = x[vi, start : start + rows] * ctx.dt
                base = torch.polar(torch.ones_like(theta), theta)
                # Horner: Σ_{j=1}^{T-1} beta_j base^j = (((beta_{T-1} base + beta_{T-2}) base + ...) base
                acc = beta[vi, num_knots - 1].expand_as(base).clone()
                for j in range(num_knots - 2, 0, -1):
                    acc.mul_(base).add_(beta[vi, j])
                acc.mul_(base)
                grad[vi, start : start + rows] = acc.real
        return grad, None, None, None, None


# ----------------------------------------------------------------------------------------------
# the module
# ----------------------------------------------------------------------------------------------


def _as_views(z: Tensor, name: str = "SIGReg") -> Tensor:
    if not isinstance(z, Tensor):
        raise EmbeddingError(f"{name} expects a torch.Tensor of embeddings, got {type(z).__name__}.")
    if z.dim() not in (2, 3):
        raise EmbeddingError(
            f"{name} expects embeddings shaped (N, D) or (V, N, D), got shape {tuple(z.shape)}; "
            "flatten extra dimensions into the batch first."
        )
    if not z.is_floating_point():
        raise EmbeddingError(
            f"{name} expects floating-point embeddings, got dtype {z.dtype} with shape {tuple(z.shape)}."
        )
    zv = z if z.dim() == 3 else z.unsqueeze(0)
    if zv.shape[-1] < 1 or zv.shape[0] < 1:
        raise EmbeddingError(f"{name} got empty embeddings of shape {tuple(z.shape)}.")
    return zv


class SIGReg(nn.Module):
    """Sketched isotropic Gaussian regularisation (LeJEPA's SIGReg) as a loss module.

    Args:
        num_slices: number K of random unit directions per call.
        num_knots: number T of equally spaced quadrature knots on [0, t_max].
        t_max: upper end of the quadrature interval.
        impl: ``"fused"`` (default: memory-lean custom autograd) or ``"reference"`` (direct formula).
        distributed: reduce over ``torch.distributed`` ranks; ``None`` (default) means "when
            ``torch.distributed`` is initialised with more than one rank".
        check_finite: raise :class:`EmbeddingError` on NaN/Inf embeddings (one host sync per call).

    ``forward(z)`` takes embeddings (N, D) or (V, N, D) and returns a scalar: the statistic of
    each view, averaged over views. All views share the call's directions. The directions are
    re-drawn from the ``step`` buffer (int64, saved in ``state_dict``), which increments by one
    after each forward in training mode, so every rank draws the same directions each step and
    a resumed run continues the sequence.

    For N samples of an exact N(0, I) the statistic stays O(1) whatever N (its mean is
    ``Σ_j w_j (1 − phi_j²)`` ≈ 0.64 for the defaults); collapsed or non-Gaussian embeddings make
    it grow linearly with N.
    """

    step: Tensor

    def __init__(
        self,
        num_slices: int = 1024,
        num_knots: int = 17,
        t_max: float = 3.0,
        impl: Impl = "fused",
        *,
        distributed: bool | None = None,
        check_finite: bool = True,
    ) -> None:
        super().__init__()
        if impl not in IMPLS:
            raise ValueError(f"Unknown SIGReg impl {impl!r}; choose one of {', '.join(IMPLS)}.")
        if num_slices < 1:
            raise ValueError(f"num_slices must be at least 1, got {num_slices}; the default is 1024.")
        self.num_slices = int(num_slices)
        self.num_knots = int(num_knots)
        self.t_max = float(t_max)
        self.impl: Impl = impl
        self.distributed = distributed
        self.check_finite = check_finite
        # The grid is kept in float64 outside the buffers (so module.to(dtype) cannot round it)
        # and cast per device/dtype on first use; it is T numbers.
        self._grid64 = quadrature(self.num_knots, self.t_max)
        self._grid_cache: dict[tuple, tuple[Tensor, Tensor, Tensor]] = {}
        self.register_buffer("step", torch.zeros((), dtype=torch.int64))
        self._dir_cache: tuple[tuple, Tensor] | None = None

    def extra_repr(self) -> str:
        return f"num_slices={self.num_slices}, num_knots={self.num_knots}, t_max={self.t_max}, impl={self.impl!r}"

    def directions(
        self, dim: int, *, device: torch.device | str | None = None, dtype=torch.float32
    ) -> Tensor:
        """The unit directions (dim, num_slices) the next forward call will use."""
        device = torch.device(device) if device is not None else self.step.device
        key = (int(self.step), dim, device, dtype)
        if self._dir_cache is None or self._dir_cache[0] != key:
            a = random_directions(dim, self.num_slices, key[0], dtype=dtype).to(device)
            self._dir_cache = (key, a)
        return self._dir_cache[1]

    def grid(self, device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
        """Knots, target ECF and weights (see :func:`quadrature`) on ``device`` in ``dtype``."""
        key = (device, dtype)
        if key not in self._grid_cache:
            self._grid_cache[key] = tuple(a.to(device=device, dtype=dtype) for a in self._grid64)  # type: ignore[assignment]
        return self._grid_cache[key]

    def _reduce(self) -> bool:
        return self.distributed is not False and world_size() > 1

    def forward(self, z: Tensor) -> Tensor:
        zv = _as_views(z)
        reduce = self._reduce()
        if not reduce and zv.shape[1] < 2:
            _check_count(zv.shape[1], z.shape)
        dtype = torch.float64 if zv.dtype == torch.float64 else torch.float32
        with torch.autocast(device_type=zv.device.type, enabled=False):
            a = self.directions(zv.shape[-1], device=zv.device, dtype=dtype)
            x = zv.to(dtype) @ a  # (V, N, K) projections, fp32 even under autocast
            t, phi, w = self.grid(zv.device, dtype)
            if self.impl == "fused":
                per_view = _FusedSIGReg.apply(x, self.t_max / (self.num_knots - 1), phi, w, reduce)
            else:
                per_view = _reference(x, t, phi, w, reduce)
        # A NaN or Inf anywhere in z makes every affected slice NaN (cos(±inf) and inf − inf are
        # NaN), so checking the V output values is as strict as checking all N·D inputs.
        if self.check_finite and not bool(torch.isfinite(per_view.detach()).all()):
            raise EmbeddingError(
                f"SIGReg got non-finite values (NaN or Inf) in embeddings of shape {tuple(z.shape)}; "
                "check the learning rate and the inputs."
            )
        if self.training:
            with torch.no_grad():
                self.step += 1
        return per_view.mean()


def expected_gaussian_value(num_knots: int = 17, t_max: float = 3.0) -> float:
    """Expected SIGReg value for i.i.d. N(0, 1) projections: Σ_j w_j (1 − phi_j²), for any N.

    For one slice, E[N((c − phi)² + s²)] = Var(cos tX) + Var(sin tX) = 1 − phi(t)² when X ~ N(0, 1).
    """
    _, phi, w = quadrature(num_knots, t_max)
    return float((w * (1 - phi.square())).sum())


__all__ = [
    "IMPLS",
    "EmbeddingError",
    "SIGReg",
    "expected_gaussian_value",
    "quadrature",
    "random_directions",
    "scale_grad",
    "world_size",
]
