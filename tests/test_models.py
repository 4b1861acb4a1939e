"""Encoders: architectures, pooling, dense features, normalisation, band and patch-size adaptation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from models_fakes import randomize_

from eo_jepa.errors import BandMismatchError, ConfigError, DataError
from eo_jepa.models import Encoder, build_encoder, save_encoder
from eo_jepa.models.adapt import adapt_encoder, adapt_patch_kernels
from eo_jepa.models.vit import create_backbone

S2 = ("red", "green", "blue", "nir", "swir16")
S2_STATS = {b: {"mean": 1000.0 + 100 * i, "std": 500.0 + 50 * i} for i, b in enumerate(S2)}
RGB_STATS = {
    "red": {"mean": 0.43, "std": 0.213},
    "green": {"mean": 0.411, "std": 0.156},
    "blue": {"mean": 0.296, "std": 0.143},
}


@pytest.fixture(scope="module")
def rgb_dino(tmp_path_factory):
    """A randomised RGB DINOv3 ViT-S/16 saved in our format (the 'pretrained' source)."""
    torch.manual_seed(0)
    enc = build_encoder(
        "dinov3_vits16_qkvb", ("red", "green", "blue"), norm_stats=RGB_STATS, input_scale=1 / 255
    )
    randomize_(enc.backbone, seed=1)
    return enc.eval(), save_encoder(enc, tmp_path_factory.mktemp("rgb") / "dino")


def test_vit_small_patch8_5band_shape_and_params():
    backbone = create_backbone("vit_small_patch8", 5, 256, meta=True)  # shapes only, no memory
    n = sum(p.numel() for p in backbone.parameters())
    assert round(n / 1e5) == 218  # ~21.8M, as the seed model card says
    enc = Encoder(backbone, arch="vit_small_patch8", bands=S2, norm_stats=S2_STATS, img_size=256)
    assert (enc.embed_dim, enc.patch_size, enc.num_prefix_tokens, enc.pooling) == (384, 8, 4, "mean")
    for arch, dim in (("vit_tiny_patch8", 192), ("vit_base_patch8", 768)):
        assert create_backbone(arch, 5, 64, meta=True).embed_dim == dim


def test_vit_pooling_is_mean_of_dense_features_and_dynamic_size():
    enc = build_encoder("vit_tiny_patch8", S2, img_size=128, norm_stats=S2_STATS).eval()
    randomize_(enc.backbone)
    x = torch.randn(2, 5, 64, 96)  # not the training size, a multiple of 8
    with torch.no_grad():
        fmap = enc.forward_features(x)
        emb = enc(x)
        tokens = enc.backbone.forward_features(x)  # timm's normed tokens
    assert fmap.shape == (2, 192, 8, 12)
    torch.testing.assert_close(emb, fmap.mean((2, 3)))
    # patch token (row 2, col 5) sits at index 4 registers + 2*12 + 5 in timm's sequence
    torch.testing.assert_close(fmap[:, :, 2, 5], tokens[:, 4 + 2 * 12 + 5])
    with pytest.raises(DataError, match="not a multiple of the patch size 8"):
        enc(torch.randn(1, 5, 60, 64))


def test_dinov3_global_embedding_is_cls_and_probe_features(rgb_dino):
    enc, _ = rgb_dino
    x = torch.randn(2, 3, 48, 64)
    outs = {}
    hooks = [
        enc.backbone.blocks[i].register_forward_hook(lambda m, a, o, i=i: outs.__setitem__(i, o))
        for i in (-2, -1)
    ]
    with torch.no_grad():
        emb = enc(x)
        ref = enc.backbone(x)  # timm with global_pool='token'
        probe = enc.forward_probe_features(x)
    for h in hooks:
        h.remove()
    torch.testing.assert_close(emb, ref)
    expected = torch.cat([enc.backbone.norm(outs[-2])[:, 0], enc.backbone.norm(outs[-1])[:, 0]], -1)
    torch.testing.assert_close(probe, expected)
    assert enc.forward_features(x).shape == (2, 384, 3, 4)


def test_vit_probe_features_are_mean_patch_tokens_of_last_two_blocks():
    enc = build_encoder("vit_tiny_patch8", S2, img_size=32, norm_stats=S2_STATS).eval()
    randomize_(enc.backbone)
    outs = {}
    hooks = [
        enc.backbone.blocks[i].register_forward_hook(lambda m, a, o, i=i: outs.__setitem__(i, o))
        for i in (-2, -1)
    ]
    x = torch.randn(2, 5, 32, 32)
    with torch.no_grad():
        probe = enc.forward_probe_features(x)
    for h in hooks:
        h.remove()
    expected = torch.cat([enc.backbone.norm(outs[i])[:, 4:].mean(1) for i in (-2, -1)], -1)
    torch.testing.assert_close(probe, expected)


def test_normalize_against_float64_reference():
    enc = build_encoder("vit_tiny_patch8", S2, img_size=32, norm_stats=S2_STATS)
    raw = np.random.default_rng(0).integers(0, 10000, (2, 5, 16, 16)).astype(np.uint16)
    mean = np.array([S2_STATS[b]["mean"] for b in S2])[None, :, None, None]
    std = np.array([S2_STATS[b]["std"] for b in S2])[None, :, None, None]
    expected = (raw.astype(np.float64) - mean) / std
    got = enc.normalize(raw)
    assert got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-6, atol=1e-6)
    # channels named in another order are picked by name
    perm = [4, 2, 0, 1, 3]
    got2 = enc.normalize(raw[:, perm], bands=[S2[i] for i in perm])
    torch.testing.assert_close(got2, got)
    # a single (C, H, W) image works too
    torch.testing.assert_close(enc.normalize(raw[0]), got[0])


def test_normalize_wrong_band_count_names_expected_bands():
    enc = build_encoder("vit_tiny_patch8", S2, img_size=32, norm_stats=S2_STATS)
    with pytest.raises(BandMismatchError) as err:
        enc.normalize(torch.zeros(1, 4, 16, 16))
    assert str(err.value) == (
        "Input has 4 bands but this encoder expects 5: ['red', 'green', 'blue', 'nir', 'swir16'] (in this order)."
    )
    with pytest.raises(BandMismatchError, match=r"lack \['swir16'\]"):
        enc.normalize(torch.zeros(1, 4, 16, 16), bands=["red", "green", "blue", "nir"])
    with pytest.raises(BandMismatchError, match=r"\(B, 5, H, W\)"):
        enc(torch.zeros(1, 3, 16, 16))


def test_band_aliases_and_bad_inputs():
    enc = build_encoder(
        "vit_tiny_patch8", ["B04", "B03", "B02", "B08", "swir1"], img_size=32, norm_stats=S2_STATS
    )
    assert enc.bands == S2
    with pytest.raises(BandMismatchError, match="Unknown band 'ultraviolet'"):
        build_encoder("vit_tiny_patch8", ["red", "ultraviolet"], img_size=32)
    with pytest.raises(BandMismatchError, match="repeats red"):
        build_encoder("vit_tiny_patch8", ["red", "B04"], img_size=32)
    with pytest.raises(ConfigError, match=r"Unknown architecture 'vit_small_patch16'.*Did you mean"):
        build_encoder("vit_small_patch16", S2)
    with pytest.raises(ConfigError, match="norm_stats has no entry for bands \\['nir'\\]"):
        build_encoder(
            "vit_tiny_patch8", ["red", "nir"], img_size=32, norm_stats={"red": {"mean": 0, "std": 1}}
        )


def test_band_adaptation_keeps_rgb_response(rgb_dino):
    """5-band model fed [R, G, B, 0, 0]·5/3 == RGB model fed [R, G, B] (the documented 3/C convention)."""
    rgb, path = rgb_dino
    enc5 = build_encoder(None, S2, pretrained=str(path), norm_stats=S2_STATS).eval()
    assert enc5.arch == "dinov3_vits16_qkvb"
    x3 = torch.randn(2, 3, 32, 48)
    x5 = torch.cat([x3, torch.zeros(2, 2, 32, 48)], 1) * (5 / 3)
    with torch.no_grad():
        torch.testing.assert_close(enc5(x5), rgb(x3), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(enc5.forward_features(x5), rgb.forward_features(x3), rtol=1e-5, atol=1e-5)
    w3 = rgb.backbone.patch_embed.proj.weight
    w5 = enc5.backbone.patch_embed.proj.weight
    torch.testing.assert_close(w5[:, 3], w3.mean(1) * 3 / 5)
    torch.testing.assert_close(w5[:, 0], w3[:, 0] * 3 / 5)
    # all blocks are the pretrained ones
    torch.testing.assert_close(enc5.backbone.blocks[5].mlp.fc1.weight, rgb.backbone.blocks[5].mlp.fc1.weight)


def test_adapt_encoder_needs_no_name(rgb_dino):
    """adapt_encoder starts from an Encoder in memory; build_encoder(pretrained=path) loads one and
    gives the same network (models/adapt.py sits below the registry, so it cannot resolve names)."""
    rgb, path = rgb_dino
    direct = adapt_encoder(rgb, S2, norm_stats=S2_STATS)
    by_name = build_encoder(None, S2, pretrained=str(path), norm_stats=S2_STATS)
    assert (direct.arch, direct.bands, direct.sensor) == (by_name.arch, by_name.bands, by_name.sensor)
    for (k, a), (_, b) in zip(direct.state_dict().items(), by_name.state_dict().items(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=k)


def test_public_entry_points_are_the_api():
    """eo_jepa.load / build_encoder / list_models and their eo_jepa.models names are models/api.py's."""
    import eo_jepa
    from eo_jepa import models
    from eo_jepa.models import api

    assert eo_jepa.build_encoder is models.build_encoder is api.build_encoder
    assert eo_jepa.load is models.load is api.load
    assert eo_jepa.list_models is models.list_models is api.list_models
    assert "core-jepa-l" in [m["name"] for m in eo_jepa.list_models()]


def test_band_adaptation_is_by_name_not_position():
    w = torch.randn(8, 3, 2, 2)  # red, green, blue
    out = adapt_patch_kernels(w, ["red", "green", "blue"], ["blue", "nir", "red"])
    torch.testing.assert_close(out[:, 0], w[:, 2])
    torch.testing.assert_close(out[:, 1], w.mean(1))
    torch.testing.assert_close(out[:, 2], w[:, 0])  # 3/3 scaling: same count of bands


def test_new_bands_need_stats(rgb_dino):
    _, path = rgb_dino
    with pytest.raises(ConfigError, match=r"norm_stats has no entry for bands \['nir', 'swir16'\]"):
        build_encoder(None, S2, pretrained=str(path))
    with pytest.raises(ConfigError, match="cannot initialise a vit_small_patch8"):
        build_encoder("vit_small_patch8", S2, pretrained=str(path), norm_stats=S2_STATS)
    same = build_encoder(None, ["blue", "green", "red"], pretrained=str(path))  # stats and scale inherited
    assert same.norm_stats["blue"] == RGB_STATS["blue"] and same.input_scale == pytest.approx(1 / 255)


def test_patch_size_resampling_preserves_patch_embedding():
    """ViT/8 → patch 16: a patch upsampled ×2 (bicubic) embeds as the original patch (FlexiViT pseudo-inverse)."""
    src = build_encoder("vit_tiny_patch8", S2, img_size=64, norm_stats=S2_STATS)
    randomize_(src.backbone)
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        save_encoder(src, tmp)
        dst = build_encoder("vit_tiny_patch8", S2, img_size=128, patch_size=16, pretrained=tmp).eval()
    assert dst.patch_size == 16 and dst.backbone.pos_embed.shape == src.backbone.pos_embed.shape
    x = torch.randn(3, 5, 8, 8)
    x16 = F.interpolate(x, size=(16, 16), mode="bicubic", antialias=True)
    pe_src, pe_dst = src.backbone.patch_embed, dst.backbone.patch_embed
    with torch.no_grad():
        torch.testing.assert_close(pe_dst.proj(x16), pe_src.proj(x), rtol=1e-4, atol=1e-4)
    # a different image size resamples the absolute position embedding (grid 8 -> 4 at img 64/16)
    with tempfile.TemporaryDirectory() as tmp:
        save_encoder(src, tmp)
        small = build_encoder("vit_tiny_patch8", S2, img_size=32, pretrained=tmp)
    assert small.backbone.pos_embed.shape == (1, 4 + 16, 192)
