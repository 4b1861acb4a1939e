"""Multi-crop views: geometry, fill + normalisation, photometric ops against independent references."""

from __future__ import annotations

import colorsys
import dataclasses

import numpy as np
import pytest
import torch
from scipy import ndimage

from eo_jepa.bands import band_info
from eo_jepa.errors import ConfigError
from eo_jepa.train.config import DataConfig, ViewsConfig
from eo_jepa.train.data import EpochBatchSampler, ViewBatchDataset, make_loader
from eo_jepa.train.views import MultiCropViews, ViewParams, grayscale_weights, stack_params

BANDS = ["red", "green", "blue", "nir", "swir16"]
STATS = {b: {"mean": 1000.0 + 100 * i, "std": 400.0 + 50 * i} for i, b in enumerate(BANDS)}
MEAN = np.array([STATS[b]["mean"] for b in BANDS])[:, None, None]
STD = np.array([STATS[b]["std"] for b in BANDS])[:, None, None]


def _plain_cfg(**kw) -> ViewsConfig:
    """Views with every photometric op off (geometry + normalisation only)."""
    base = dict(num_global=1, num_local=0, jitter_p=0.0, grayscale_p=0.0, blur_p=0.0, solarize_p=0.0)
    return ViewsConfig(**{**base, **kw})


def _params(v: int, c: int, box, **over) -> ViewParams:
    p = ViewParams(
        box=np.array([box] * v, dtype=np.float64),
        date=np.zeros(v, dtype=np.int64),
        flip_h=np.zeros(v, bool),
        flip_v=np.zeros(v, bool),
        rot=np.zeros(v, dtype=np.int64),
        jitter=np.zeros(v, bool),
        brightness=np.ones((v, c), np.float32),
        contrast=np.ones((v, c), np.float32),
        saturation=np.ones(v, np.float32),
        hue=np.zeros(v, np.float32),
        gray=np.zeros(v, bool),
        blur=np.zeros(v, bool),
        sigma=np.ones(v, np.float32),
        solarize=np.zeros(v, bool),
    )
    return dataclasses.replace(p, **{k: np.asarray(val) for k, val in over.items()})


def _chip(seed=0, size=16):
    rng = np.random.default_rng(seed)
    return (rng.uniform(0, 4000, (len(BANDS), size, size))).astype(np.float32)


def test_full_box_is_the_normalised_chip_and_invalid_pixels_become_zero():
    views = MultiCropViews(_plain_cfg(global_size=16), BANDS, STATS)
    chip = _chip()
    valid = np.ones((16, 16), bool)
    valid[2:5, 3:9] = False
    glob, loc = views.apply(
        torch.from_numpy(chip)[None],
        torch.from_numpy(valid)[None],
        stack_params([_params(1, 5, [0, 0, 16, 16])]),
    )
    assert loc is None and glob.shape == (1, 1, 5, 16, 16)
    expected = (chip.astype(np.float64) - MEAN) / STD
    expected[:, ~valid] = 0.0  # filled with the band mean, hence exactly 0 after normalisation
    np.testing.assert_allclose(glob[0, 0].numpy(), expected, rtol=1e-5, atol=1e-5)
    assert (glob[0, 0][:, ~torch.from_numpy(valid)] == 0).all()


def test_fill_puts_the_band_mean_exactly_where_each_date_is_masked():
    """Several chips and dates, each with its own mask (and one date of one chip with none): masked
    pixels hold the band mean in every band, all others the input converted to float32."""
    views = MultiCropViews(_plain_cfg(global_size=8), BANDS, STATS)
    rng = np.random.default_rng(9)
    px = rng.integers(0, 4000, (3, 2, 5, 8, 8)).astype(np.uint16)
    valid = rng.random((3, 2, 8, 8)) > 0.3
    valid[1, 0] = True
    got = views.fill_invalid(torch.from_numpy(px), torch.from_numpy(valid)).numpy()
    expected = np.where(valid[:, :, None], px.astype(np.float32), MEAN.astype(np.float32)[None, None])
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("dtype", [torch.uint16, torch.float32, torch.float64])
def test_any_input_dtype_gives_the_same_views_and_nan_is_invalid(dtype):
    views = MultiCropViews(_plain_cfg(global_size=16), BANDS, STATS)
    chip = np.round(_chip(3))  # integral values: exact in every dtype
    valid = np.ones((16, 16), bool)
    valid[5:7, 1:4] = False
    params = stack_params([_params(1, 5, [0, 0, 16, 16])])
    ref = views.apply(torch.from_numpy(chip)[None], torch.from_numpy(valid)[None], params)[0]
    px = torch.from_numpy(chip.astype(np.float64)).to(dtype)[None]
    vmask = torch.from_numpy(valid)[None]
    if dtype.is_floating_point:  # NaN marks invalid pixels too, even where valid says True
        px[0, :, 10, 10] = float("nan")
    got = views.apply(px, vmask, params)[0]
    assert got.dtype == torch.float32
    if dtype.is_floating_point:
        assert (got[0, 0, :, 10, 10] == 0).all()
        got[0, 0, :, 10, 10] = ref[0, 0, :, 10, 10]
    torch.testing.assert_close(got, ref, rtol=0, atol=0)


@pytest.mark.parametrize("k", [0, 1, 2, 3])
@pytest.mark.parametrize("flip", ["none", "h", "v"])
def test_rotations_and_flips_are_exact_pixel_permutations(k, flip):
    views = MultiCropViews(_plain_cfg(global_size=16), BANDS, STATS)
    chip = _chip(1)
    p = _params(1, 5, [0, 0, 16, 16], rot=[k], flip_h=[flip == "h"], flip_v=[flip == "v"])
    out = views.apply(torch.from_numpy(chip)[None], None, stack_params([p]))[0][0, 0].numpy()
    ref = (chip.astype(np.float64) - MEAN) / STD
    if flip == "h":
        ref = ref[:, :, ::-1]
    if flip == "v":
        ref = ref[:, ::-1, :]
    # rotation acts after the flip in output coordinates: compare against the 4 numpy rotations
    candidates = [np.rot90(ref, j, axes=(1, 2)) for j in range(4)]
    errors = [np.abs(out - c).max() for c in candidates]
    assert min(errors) < 1e-4
    if k in (0, 2):  # 0 and 180 degrees do not depend on the rotation direction
        assert errors[k] < 1e-4


def test_integer_box_at_native_size_is_a_slice():
    views = MultiCropViews(_plain_cfg(global_size=8), BANDS, STATS)
    chip = _chip(2)
    out = views.apply(torch.from_numpy(chip)[None], None, stack_params([_params(1, 5, [4, 6, 8, 8])]))[0]
    ref = (chip[:, 6:14, 4:12].astype(np.float64) - MEAN) / STD
    np.testing.assert_allclose(out[0, 0].numpy(), ref, rtol=1e-5, atol=1e-5)


def test_multispectral_brightness_contrast_per_band():
    views = MultiCropViews(_plain_cfg(global_size=16), BANDS, STATS)
    chip = _chip(3)
    b = np.array([[0.7, 1.2, 1.0, 0.9, 1.3]], np.float32)
    c = np.array([[1.3, 0.8, 1.1, 0.6, 1.0]], np.float32)
    p = _params(1, 5, [0, 0, 16, 16], jitter=[True], brightness=b, contrast=c)
    out = views.apply(torch.from_numpy(chip)[None], None, stack_params([p]))[0][0, 0].numpy()
    x = chip.astype(np.float64) * b[0][:, None, None]
    m = x.mean(axis=(1, 2), keepdims=True)
    ref = np.maximum((x - m) * c[0][:, None, None] + m, 0)
    np.testing.assert_allclose(out, (ref - MEAN) / STD, rtol=1e-4, atol=1e-4)


def test_band_weighted_grayscale():
    w = grayscale_weights(BANDS, "bandwidth")
    widths = np.array([band_info(b).bandwidth_nm for b in BANDS])
    np.testing.assert_allclose(w, widths / widths.sum(), rtol=1e-6)
    np.testing.assert_allclose(grayscale_weights(BANDS, "equal"), np.full(5, 0.2), rtol=1e-6)
    views = MultiCropViews(_plain_cfg(global_size=16), BANDS, STATS)
    chip = _chip(4)
    out = views.apply(
        torch.from_numpy(chip)[None], None, stack_params([_params(1, 5, [0, 0, 16, 16], gray=[True])])
    )[0][0, 0].numpy()
    raw = out * STD + MEAN  # every band now carries the same weighted-mean reflectance
    gray = np.tensordot(w.astype(np.float64), chip.astype(np.float64), axes=1)
    for k in range(5):
        np.testing.assert_allclose(raw[k], gray, rtol=1e-4, atol=1e-2)


def test_blur_matches_scipy():
    views = MultiCropViews(_plain_cfg(global_size=16), BANDS, STATS)
    chip = _chip(5)
    p = _params(2, 5, [0, 0, 16, 16], blur=[True, True], sigma=[1.0, 0.6])
    out = views.apply(torch.from_numpy(chip)[None], None, stack_params([p]))
    # one global (sigma 1.0) only: num_global=1, so compare the first; the 2nd param row is unused
    raw = out[0][0, 0].numpy() * STD + MEAN
    ref = ndimage.gaussian_filter(chip.astype(np.float64), sigma=(0, 1.0, 1.0), mode="mirror", truncate=3.0)
    np.testing.assert_allclose(raw, ref, rtol=1e-4, atol=0.05)


def test_blur_of_many_views_matches_scipy_per_view():
    """Views of several radii packed together (and a radius clipped to a small view) are each blurred
    with their own sigma, as scipy blurs each alone; views not flagged are untouched."""
    rng = np.random.default_rng(8)
    x = torch.from_numpy(rng.uniform(-3, 3, (3, 4, 2, 12, 12)).astype(np.float32))  # (nv, nb, C, S, S)
    flags = rng.random(12) < 0.6
    flags[:2] = True
    sigma = rng.uniform(0.1, 2.0, 12).astype(np.float32)
    sigma[1] = 5.0  # radius 15, clipped to 11 (reflect padding needs a radius below the size)
    before = x.clone()
    MultiCropViews._blur(x, {"blur": flags, "sigma": sigma})
    for k in range(12):
        v, b = divmod(k, 4)
        if not flags[k]:
            assert torch.equal(x[v, b], before[v, b])
            continue
        radius = min(int(np.ceil(3 * sigma[k])), 11)
        ref = ndimage.gaussian_filter(
            before[v, b].double().numpy(),
            sigma=(0, sigma[k], sigma[k]),
            mode="mirror",
            truncate=radius / sigma[k],
        )
        np.testing.assert_allclose(x[v, b].numpy(), ref, atol=1e-5)


def test_rgb_hue_shift_matches_colorsys():
    stats = {b: {"mean": 0.0, "std": 1.0} for b in ("red", "green", "blue")}
    cfg = _plain_cfg(global_size=8, value_scale=1.0)
    views = MultiCropViews(cfg, ["red", "green", "blue"], stats)
    assert views.mode == "rgb"
    rng = np.random.default_rng(6)
    chip = rng.uniform(0, 1, (3, 8, 8)).astype(np.float32)
    shift = 0.08
    p = _params(1, 3, [0, 0, 8, 8], jitter=[True], hue=[shift])
    out = views.apply(torch.from_numpy(chip)[None], None, stack_params([p]))[0][0, 0].numpy()
    ref = np.zeros_like(chip)
    for i in range(8):
        for j in range(8):
            h, s, v = colorsys.rgb_to_hsv(*chip[:, i, j])
            ref[:, i, j] = colorsys.hsv_to_rgb((h + shift) % 1.0, s, v)
    np.testing.assert_allclose(out, ref, atol=1e-5)


def test_rgb_mode_needs_rgb_bands():
    with pytest.raises(ConfigError, match="exactly"):
        MultiCropViews(ViewsConfig(mode="rgb"), BANDS, STATS)


def test_default_views_shapes_and_stats():
    views = MultiCropViews(ViewsConfig(), BANDS, STATS)
    rng = np.random.default_rng(0)
    chips = torch.from_numpy(rng.uniform(0, 4000, (3, 5, 256, 256)).astype(np.float32))
    params = [views.sample_params(np.random.default_rng(i), 256, 256) for i in range(3)]
    glob, loc = views.apply(chips, torch.ones(3, 256, 256, dtype=torch.bool), stack_params(params))
    assert glob.shape == (2, 3, 5, 224, 224) and loc.shape == (6, 3, 5, 96, 96)
    assert torch.isfinite(glob).all() and torch.isfinite(loc).all()
    boxes = np.stack([p.box for p in params])  # (B, V, 4): areas within the configured scales
    area = boxes[..., 2] * boxes[..., 3] / 256**2
    assert ((area[:, :2] >= 0.3 - 1e-9) & (area[:, :2] <= 1.0 + 1e-9)).all()
    assert ((area[:, 2:] >= 0.05 - 1e-9) & (area[:, 2:] <= 0.3 + 1e-9)).all()


class _Source:
    bands = tuple(BANDS)
    norm_stats = STATS
    sensor = "sentinel-2-l2a"

    def __init__(self, n=12, size=32):
        rng = np.random.default_rng(0)
        self.px = rng.uniform(0, 4000, (n, 5, size, size)).astype(np.float32)

    def __len__(self):
        return len(self.px)

    def __getitem__(self, i):
        return {"pixels": self.px[i], "valid": np.ones(self.px.shape[-2:], bool), "location_id": f"l{i // 2}"}

    def locations(self):
        out: dict[str, list[int]] = {}
        for i in range(len(self)):
            out.setdefault(f"l{i // 2}", []).append(i)
        return out


def test_views_of_a_chip_do_not_depend_on_its_batch():
    cfg = ViewsConfig(global_size=16, local_size=8)
    src = _Source()
    ds = ViewBatchDataset(src, MultiCropViews(cfg, BANDS, STATS), seed=7)
    a = ds[(3, (4, 9, 2))]
    b = ds[(3, (9,))]
    torch.testing.assert_close(a["globals"][:, 1], b["globals"][:, 0], rtol=0, atol=0)
    torch.testing.assert_close(a["locals"][:, 1], b["locals"][:, 0], rtol=0, atol=0)
    c = ds[(4, (9,))]  # another epoch, other views
    assert not torch.equal(b["globals"], c["globals"])


@pytest.mark.parametrize("workers", [0, 2])
def test_reused_view_buffers_never_overwrite_a_batch_in_use(workers):
    """Loader with the buffer pool (worker processes or the main process): every batch equals the
    pool-less views of its chips; a batch that is held (not released) is never written again while
    released buffers are reused."""
    cfg = ViewsConfig(global_size=16, local_size=8)
    src = _Source(n=48)
    views = MultiCropViews(cfg, BANDS, STATS)
    plain = ViewBatchDataset(src, views, seed=5)  # no pool: fresh tensors, the reference
    loader, sampler = make_loader(src, views, DataConfig(batch_size=2, num_workers=workers), seed=5)
    sampler.set_epoch(1)
    held, keys = [], []
    for n, batch in enumerate(loader):
        ref = plain[(1, tuple(batch["indices"].tolist()))]
        assert torch.equal(batch["globals"], ref["globals"]) and torch.equal(batch["locals"], ref["locals"])
        keys.append(tuple(batch["buffer"])[2:] if "buffer" in batch else None)  # (worker row, slot)
        if n % 6 == 0:  # keep a copy to compare with later, and the batch itself unreleased
            held.append((batch, batch["globals"].clone(), batch["locals"].clone()))
        else:
            loader.dataset.release(batch)
    pooled = [k for k in keys if k is not None]
    assert len(keys) == 24 and len(pooled) >= 12
    assert len(set(pooled)) < len(pooled)  # slots were reused ...
    for batch, glob, loc in held:  # ... but never one still in use
        assert torch.equal(batch["globals"], glob) and torch.equal(batch["locals"], loc)


def test_multi_date_globals_come_from_two_dates():
    cfg = _plain_cfg(
        num_global=2, global_size=32, global_scale=(1.0, 1.0), ratio=(1.0, 1.0), rot90=False, flip_p=0
    )
    src = _Source()
    ds = ViewBatchDataset(src, MultiCropViews(cfg, BANDS, STATS), seed=0, multi_date=True)
    out = ds[(0, (4,))]["globals"][:, 0].numpy()
    got = sorted(
        int(np.argmin([np.abs(out[g] - (src.px[j] - MEAN) / STD).max() for j in (4, 5)])) for g in (0, 1)
    )
    assert got == [0, 1]  # one global view from each date of location l2


def test_sampler_shards_are_a_partition_and_resume_skips_batches():
    full = EpochBatchSampler(40, 8, seed=3)
    r0 = EpochBatchSampler(40, 4, rank=0, world_size=2, seed=3)
    r1 = EpochBatchSampler(40, 4, rank=1, world_size=2, seed=3)
    for s in (full, r0, r1):
        s.set_epoch(2)
    first = next(iter(full))[1]
    assert sorted(next(iter(r0))[1] + next(iter(r1))[1]) == sorted(first)
    all_batches = list(full)
    full.set_epoch(2, start=3)
    assert list(full) == all_batches[3:]
    full.set_epoch(3)
    assert list(full) != all_batches
