"""SIGReg: fused and reference implementations against an independent float64 NumPy oracle."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from eo_jepa.errors import EOJepaError
from eo_jepa.ssl import SIGReg, expected_gaussian_value, quadrature, random_directions, scale_grad
from eo_jepa.ssl.sigreg import EmbeddingError

pytestmark = pytest.mark.usefixtures("one_thread")




def numpy_sigreg(z: np.ndarray, a: np.ndarray, num_knots: int = 17, t_max: float = 3.0):
    """SIGReg value and gradient for z (V, N, D) and directions a (D, K), straight from the formula.

    Independent of the module: knots, weights and the analytic gradient are written out here.
    """
    v, n, _ = z.shape
    k = a.shape[1]
    t = np.linspace(0.0, t_max, num_knots)
    dt = t_max / (num_knots - 1)
    w = np.full(num_knots, 2 * dt)
    w[0] = w[-1] = dt
    phi = np.exp(-(t**2) / 2)
    w = w * phi
    x = z @ a  # (V, N, K)
    xt = x[..., None] * t  # (V, N, K, T)
    c = np.cos(xt).mean(axis=1)  # (V, K, T)
    s = np.sin(xt).mean(axis=1)
    per_slice = n * (((c - phi) ** 2 + s**2) * w).sum(-1)  # (V, K)
    value = per_slice.mean()
    # d value / d x_vnk = (1/V)(2/K) Σ_j w_j t_j (s_vkj cos(t_j x) − (c_vkj − phi_j) sin(t_j x))
    gx = (2.0 / (k * v)) * (
        (w * t * s[:, None]) * np.cos(xt) - (w * t * (c - phi)[:, None]) * np.sin(xt)
    ).sum(-1)
    return value, gx @ a.T


def rel(a, b) -> float:
    a = torch.as_tensor(a, dtype=torch.float64)
    b = torch.as_tensor(b, dtype=torch.float64)
    return float((a - b).norm() / b.norm())


SHAPES = [
    # (V, N, D, K, input rank)
    (1, 64, 8, 32, 2),
    (1, 300, 48, 200, 2),
    (1, 513, 16, 1024, 2),  # N not a multiple of the fused chunk, K > D
    (3, 96, 24, 128, 3),
    (2, 700, 5, 17, 3),
]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "V{}-N{}-D{}-K{}-rank{}".format(*s))
@pytest.mark.parametrize("impl", ["fused", "reference"])
def test_matches_float64_numpy(shape, impl):
    v, n, d, k, rank = shape
    gen = torch.Generator().manual_seed(n * d + k)
    z = torch.randn(v, n, d, generator=gen) * 1.4 + 0.3  # not Gaussian-standard: a sizable statistic
    if rank == 2:
        z = z[0]
    module = SIGReg(num_slices=k, impl=impl)
    a = module.directions(d, dtype=torch.float64).numpy()
    z32 = z.clone().requires_grad_()
    value = module(z32)
    value.backward()
    want, want_grad = numpy_sigreg(z.double().numpy().reshape(v, n, d), a)
    assert value.dtype == torch.float32 and value.dim() == 0
    assert abs(value.item() - want) / want < 1e-5
    assert rel(z32.grad.reshape(v, n, d), want_grad) < 1e-4
    # float64 inputs stay float64 and agree to near machine precision
    module.step.zero_()
    z64 = z.double().requires_grad_()
    value64 = module(z64)
    value64.backward()
    assert value64.dtype == torch.float64
    assert abs(value64.item() - want) / want < 1e-11
    assert rel(z64.grad.reshape(v, n, d), want_grad) < 1e-10


@pytest.mark.parametrize("shape", [(1, 256, 32, 512), (4, 200, 64, 300)])
def test_fused_equals_reference_fp32(shape):
    v, n, d, k = shape
    z = torch.randn(v, n, d, generator=torch.Generator().manual_seed(7))
    grads, values = [], []
    for impl in ("fused", "reference"):
        zz = z.clone().requires_grad_()
        val = SIGReg(k, impl=impl)(zz)
        val.backward()
        values.append(val.item())
        grads.append(zz.grad)
    assert abs(values[0] - values[1]) / values[1] < 1e-5
    assert rel(grads[0], grads[1]) < 1e-4


def test_fused_gradcheck_against_finite_differences():
    z = torch.randn(2, 9, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(3)).requires_grad_()
    module = SIGReg(num_slices=6, num_knots=9, t_max=2.5).eval()  # eval: same directions every call
    assert torch.autograd.gradcheck(module, (z,), eps=1e-6, atol=1e-7, rtol=1e-5)


def test_other_grids_match_numpy():
    z = torch.randn(150, 12, generator=torch.Generator().manual_seed(11))
    for knots, t_max in [(5, 2.0), (33, 4.0), (2, 1.0)]:
        module = SIGReg(num_slices=64, num_knots=knots, t_max=t_max)
        a = module.directions(12, dtype=torch.float64).numpy()
        want, _ = numpy_sigreg(z.double().numpy()[None], a, knots, t_max)
        assert abs(module(z).item() - want) / want < 1e-5


def test_quadrature_weights_integrate_the_gaussian_window():
    t, phi, w = quadrature(17, 3.0)
    assert t[0] == 0 and t[-1] == 3.0 and len(t) == 17
    torch.testing.assert_close(phi, torch.exp(-(t**2) / 2))
    # doubled trapezoid × window ≈ ∫_{-3}^{3} exp(-t²/2) dt = sqrt(2π)·erf(3/√2)
    exact = math.sqrt(2 * math.pi) * math.erf(3 / math.sqrt(2))
    assert abs(float(w.sum()) - exact) / exact < 2e-3
    assert float(w[1] / w[0]) == pytest.approx(2 * math.exp(-(t[1].item() ** 2) / 2))


def test_bf16_autocast_accumulates_in_fp32():
    gen = torch.Generator().manual_seed(5)
    lin = torch.nn.Linear(32, 64)
    x = torch.randn(256, 32, generator=gen)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z = lin(x)
        assert z.dtype == torch.bfloat16
        value = SIGReg(256)(z)
    assert value.dtype == torch.float32
    want = SIGReg(256)(z.detach().float())  # same bf16-rounded embeddings, plain fp32
    assert abs(value.item() - want.item()) / want.item() < 1e-5
    value.backward()
    assert lin.weight.grad is not None and torch.isfinite(lin.weight.grad).all()


# ------------------------------------------------------------------------------------------
# statistical behaviour
# ------------------------------------------------------------------------------------------


def test_gaussian_samples_give_the_expected_small_value():
    expected = expected_gaussian_value()
    # closed form Σ w (1 − phi²) against the NumPy quadrature
    t = np.linspace(0, 3, 17)
    w = np.full(17, 2 * 3 / 16)
    w[0] = w[-1] = 3 / 16
    assert expected == pytest.approx(float((w * np.exp(-(t**2) / 2) * (1 - np.exp(-(t**2)))).sum()))
    module = SIGReg(256)
    values = [
        module(torch.randn(1024, 64, generator=torch.Generator().manual_seed(s))).item() for s in range(8)
    ]
    assert all(0.3 * expected < v < 3 * expected for v in values)
    assert abs(np.mean(values) - expected) / expected < 0.25


def test_collapsed_and_uniform_embeddings_give_large_values():
    module = SIGReg(256)
    expected = expected_gaussian_value()
    gen = torch.Generator().manual_seed(0)
    collapsed = torch.randn(1, 64, generator=gen).expand(1024, 64)
    assert module(collapsed).item() > 100 * expected
    # 2-D uniform (unit variance): projections are far from Gaussian, the statistic grows with N
    uniform_small = (torch.rand(1024, 2, generator=gen) * 2 - 1) * math.sqrt(3)
    uniform_large = (torch.rand(4096, 2, generator=gen) * 2 - 1) * math.sqrt(3)
    small, large = module(uniform_small).item(), module(uniform_large).item()
    assert small > 4 * expected
    assert 2.5 < large / small < 6.5
    gauss_large = module(torch.randn(4096, 2, generator=gen)).item()
    assert large > 10 * gauss_large


def test_optimiser_escapes_collapse():
    gen = torch.Generator().manual_seed(1)
    z = (torch.ones(256, 8) + 1e-3 * torch.randn(256, 8, generator=gen)).requires_grad_()
    module = SIGReg(128)
    opt = torch.optim.Adam([z], lr=0.05)
    history = []
    for _ in range(150):
        value = module(z)
        opt.zero_grad()
        value.backward()
        opt.step()
        history.append(value.item())
    assert history[0] > 100
    assert history[-1] < 2 * expected_gaussian_value()
    assert np.mean(history[-10:]) < np.mean(history[:10]) / 50


# ------------------------------------------------------------------------------------------
# directions and the step counter
# ------------------------------------------------------------------------------------------


def test_directions_are_unit_and_seeded_by_step():
    module = SIGReg(64)
    a0 = module.directions(10)
    assert a0.shape == (10, 64)
    torch.testing.assert_close(a0.norm(dim=0), torch.ones(64))
    torch.testing.assert_close(a0, random_directions(10, 64, 0))
    module(torch.randn(8, 10))  # training mode: step 0 -> 1
    assert int(module.step) == 1
    a1 = module.directions(10)
    assert not torch.allclose(a0, a1)
    torch.testing.assert_close(a1, random_directions(10, 64, 1))
    module.eval()
    module(torch.randn(8, 10))
    assert int(module.step) == 1  # eval does not advance


def test_step_round_trips_through_state_dict():
    module = SIGReg(32)
    for _ in range(5):
        module(torch.randn(16, 6))
    state = module.state_dict()
    assert state["step"].dtype == torch.int64 and int(state["step"]) == 5
    assert set(state) == {"step"}
    fresh = SIGReg(32)
    fresh.load_state_dict(state)
    assert int(fresh.step) == 5
    z = torch.randn(16, 6)
    assert fresh(z).item() == module(z).item()  # same directions, same value
    assert int(fresh.step) == int(module.step) == 6


# ------------------------------------------------------------------------------------------
# bad input
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("z", "match"),
    [
        (torch.randn(5), r"\(N, D\) or \(V, N, D\), got shape \(5,\)"),
        (torch.randn(2, 3, 4, 5), r"got shape \(2, 3, 4, 5\)"),
        (torch.randn(1, 8), r"at least 2 samples.*shape \(1, 8\)"),
        (torch.randn(3, 1, 8), r"at least 2 samples.*shape \(3, 1, 8\)"),
        (torch.ones(4, 3, dtype=torch.int64), r"floating-point.*shape \(4, 3\)"),
        (torch.zeros(0, 3), r"shape \(0, 3\)"),
    ],
)
@pytest.mark.parametrize("impl", ["fused", "reference"])
def test_bad_shapes_raise_clear_errors(z, match, impl):
    with pytest.raises(EmbeddingError, match=match) as info:
        SIGReg(16, impl=impl)(z)
    assert isinstance(info.value, ValueError) and isinstance(info.value, EOJepaError)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("impl", ["fused", "reference"])
def test_non_finite_embeddings_raise(bad, impl):
    z = torch.randn(2, 10, 4)
    z[1, 3, 2] = bad
    with pytest.raises(EmbeddingError, match=r"non-finite.*shape \(2, 10, 4\)"):
        SIGReg(16, impl=impl)(z)


def test_bad_parameters_raise():
    with pytest.raises(ValueError, match="impl 'fast'"):
        SIGReg(impl="fast")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="num_knots"):
        SIGReg(num_knots=1)
    with pytest.raises(ValueError, match="num_slices"):
        SIGReg(num_slices=0)


def test_scale_grad_keeps_value_and_scales_gradient():
    x = torch.tensor([1.5, -2.0], requires_grad=True)
    y = scale_grad(x * x, 3.0)
    torch.testing.assert_close(y, torch.tensor([2.25, 4.0]))
    y.sum().backward()
    torch.testing.assert_close(x.grad, 3.0 * 2 * x.detach())


@pytest.mark.parametrize("impl", ["fused", "reference"])
def test_saved_for_backward_size(impl):
    """fused keeps O(V·N·K) for backward; the reference formula keeps (V, N, K, T) tensors."""
    v, n, d, k, knots = 2, 64, 8, 32, 17
    saved: list[int] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved.append(t.numel())
        return t

    z = torch.randn(v, n, d).requires_grad_()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        value = SIGReg(k, num_knots=knots, impl=impl)(z)
    value.backward()
    if impl == "fused":
        assert max(saved) <= v * n * max(k, d)
    else:
        assert max(saved) >= v * n * k * knots
