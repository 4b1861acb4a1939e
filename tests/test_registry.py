"""Registry + eo_jepa.load: foreign checkpoints in a real Hugging Face cache layout, offline."""

from __future__ import annotations

import dataclasses
import json
import re
import socket
from pathlib import Path

import pytest
import torch
from models_fakes import fake_legacy, fake_meta_dinov3, put_in_hf_cache

import eo_jepa
from eo_jepa.errors import CheckpointError, ConfigError, ModelNotFoundError
from eo_jepa.models import registry
from eo_jepa.models.checkpoint import save_encoder
from eo_jepa.models.dinov3 import CORE_JEPA_PREFIX

README = Path(__file__).resolve().parents[1] / "README.md"
SAT = registry.NORMALIZATIONS["sat493m"]


@pytest.fixture
def hub_cache(tmp_path: Path) -> Path:
    """The hub cache huggingface_hub uses in this test (HF_HUB_CACHE is set per test by conftest)."""
    import os

    return Path(os.environ["HF_HUB_CACHE"])


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a non-loopback connection fails the test."""
    real_connect = socket.socket.connect

    def guarded(self, address):
        host = address[0] if isinstance(address, tuple) else address
        if isinstance(host, str) and host not in ("127.0.0.1", "::1", "localhost"):
            raise AssertionError(f"network call to {address}")
        return real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", guarded)


@pytest.fixture
def scratch_registry():
    """Restore the registry after a test that registers or overrides entries."""
    saved = dict(registry._REGISTRY)
    yield
    registry._REGISTRY.clear()
    registry._REGISTRY.update(saved)


def _rgb_batch(seed: int = 0, size: int = 64) -> torch.Tensor:
    return torch.randint(0, 256, (2, 3, size, size), generator=torch.Generator().manual_seed(seed)).to(
        torch.uint8
    )


def _reference_input(raw: torch.Tensor, mean, std) -> torch.Tensor:
    """Independent normalisation: [0, 1] then per-channel mean/std, in float64 then cast."""
    x = raw.double() / 255.0
    m = torch.tensor(mean, dtype=torch.float64).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float64).view(1, -1, 1, 1)
    return ((x - m) / s).float()


@pytest.mark.parametrize("prefixed", [False, True], ids=["meta", "core-jepa-prefix"])
def test_meta_dinov3_from_hf_cache_matches_unconverted(
    tmp_path, hub_cache, no_network, scratch_registry, prefixed
):
    ref, meta = fake_meta_dinov3()
    state = {CORE_JEPA_PREFIX + k: v for k, v in meta.items()} if prefixed else meta
    torch.save(state, tmp_path / "w.pth")
    put_in_hf_cache(
        hub_cache,
        "test-org/fake-dinov3",
        "weights/dinov3_vits16.pth",
        tmp_path / "w.pth",
        repo_type="dataset",
    )
    registry.register_model(
        name="test-dinov3-s",
        description="fake",
        arch=None,  # inferred from the weights
        bands=("red", "green", "blue"),
        converter="core-jepa" if prefixed else "meta-dinov3",
        norm="sat493m",
        sensor="rgb",
        repo_id="test-org/fake-dinov3",
        repo_type="dataset",
        filename="weights/dinov3_vits16.pth",
    )
    enc = eo_jepa.load("test-dinov3-s")
    assert enc.arch == "dinov3_vits16_qkvb" and enc.bands == ("red", "green", "blue")
    raw = _rgb_batch()
    x = enc.normalize(raw)
    torch.testing.assert_close(x, _reference_input(raw, SAT["mean"], SAT["std"]), rtol=1e-6, atol=1e-6)
    with torch.no_grad():
        torch.testing.assert_close(enc(x), ref(x), rtol=1e-5, atol=1e-5)
        tokens = ref.forward_features(x)[:, ref.num_prefix_tokens :]
        fmap = enc.forward_features(x)
        assert fmap.shape == (2, 384, 4, 4)
        torch.testing.assert_close(fmap.flatten(2).transpose(1, 2), tokens, rtol=1e-5, atol=1e-5)


def test_bias_mask_folding_matters():
    """Without folding Meta's bias_mask, timm's own filter gives a different model (so the test above can fail)."""
    import timm
    from timm.models.eva import checkpoint_filter_fn

    ref, meta = fake_meta_dinov3()
    naive = timm.create_model("vit_small_patch16_dinov3_qkvb", num_classes=0, global_pool="token").eval()
    naive.load_state_dict(checkpoint_filter_fn(meta, naive))
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert (naive(x) - ref(x)).abs().max() > 1e-3


def _cache_core_jepa_l(meta: dict[str, torch.Tensor], tmp_path: Path, hub_cache: Path) -> None:
    """A Meta-layout state dict as the core-jepa-l entry's file (its key prefix, its dataset repo) in the Hub cache."""
    torch.save({CORE_JEPA_PREFIX + k: v for k, v in meta.items()}, tmp_path / "lejepa-l.pt")
    put_in_hf_cache(
        hub_cache,
        "gajeshladharai/artifacts",
        "core-jepa/lejepa-l.pt",
        tmp_path / "lejepa-l.pt",
        repo_type="dataset",
    )


def test_real_core_jepa_entry_through_its_cache_path(tmp_path, hub_cache, no_network, scratch_registry):
    """The built-in core-jepa-l entry (repo, file, converter, normalisation) with a ViT-S-shaped fake."""
    spec = registry.get_spec("core-jepa-l")
    registry.register_model(dataclasses.replace(spec, arch="dinov3_vits16_qkvb"), overwrite=True)
    ref, meta = fake_meta_dinov3(seed=3)
    _cache_core_jepa_l(meta, tmp_path, hub_cache)
    enc = eo_jepa.load("core-jepa-l")
    raw = _rgb_batch(1)
    with torch.no_grad():
        torch.testing.assert_close(
            enc(enc.normalize(raw)), ref(_reference_input(raw, SAT["mean"], SAT["std"])), rtol=1e-5, atol=1e-5
        )
    assert enc.model_name == "core-jepa-l"


def test_legacy_sentinel_change_explorer_entry(tmp_path, hub_cache, no_network):
    ref, ckpt = fake_legacy(img_size=128)  # the published file is 256 px; 128 keeps the test quick
    torch.save(ckpt, tmp_path / "legacy.pt")
    spec = registry.get_spec("lejepa-vits8-s2-5band")
    put_in_hf_cache(hub_cache, spec.repo_id, spec.filename, tmp_path / "legacy.pt")
    enc = eo_jepa.load("lejepa-vits8-s2-5band")
    assert enc.bands == ("red", "green", "blue", "nir", "swir16") and enc.img_size == 128
    assert enc.norm_stats["blue"]["std"] == 1.0  # the PoC clamps std at 1
    raw = torch.randint(0, 6000, (1, 5, 128, 128), generator=torch.Generator().manual_seed(0)).float()
    mean = torch.tensor(ckpt["norm_stats"]["mean"]).view(1, 5, 1, 1)
    std = torch.tensor(ckpt["norm_stats"]["std"]).view(1, 5, 1, 1).clamp(min=1.0)
    with torch.no_grad():
        # the PoC's own inference path: (x - mean) / std.clamp(1), tokens minus the 4 registers, NCHW
        tokens = ref.forward_features((raw - mean) / std)[:, 4:]
        expected = tokens.transpose(1, 2).reshape(1, 384, 16, 16)
        got = enc.forward_features(enc.normalize(raw))
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(enc(enc.normalize(raw)), expected.mean((2, 3)), rtol=1e-4, atol=1e-4)


def test_hf_uri_in_our_format_from_cache(tmp_path, hub_cache, no_network):
    from eo_jepa.models import build_encoder

    enc = build_encoder(
        "vit_tiny_patch8",
        ["red", "nir"],
        img_size=32,
        norm_stats={"red": {"mean": 1, "std": 2}, "nir": {"mean": 3, "std": 4}},
    )
    folder = save_encoder(enc, tmp_path / "ours")
    for name in ("config.json", "model.safetensors", "README.md"):
        put_in_hf_cache(hub_cache, "someone/my-encoder", name, folder / name)
    loaded = eo_jepa.load("hf://someone/my-encoder@main")
    x = torch.randn(1, 2, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), enc.eval()(x))
    assert loaded.norm_stats == {"nir": {"mean": 3.0, "std": 4.0}, "red": {"mean": 1.0, "std": 2.0}}


def test_cache_dir_argument(tmp_path, no_network):
    _, ckpt = fake_legacy(kind="vit_tiny_patch8", img_size=64)
    torch.save(ckpt, tmp_path / "legacy.pt")
    spec = registry.get_spec("lejepa-vits8-s2-5band")
    other_cache = tmp_path / "elsewhere"
    put_in_hf_cache(other_cache, spec.repo_id, spec.filename, tmp_path / "legacy.pt")
    with pytest.raises(ModelNotFoundError, match="not in the Hugging Face cache"):
        eo_jepa.load("lejepa-vits8-s2-5band")  # default cache is empty and we are offline
    enc = eo_jepa.load("lejepa-vits8-s2-5band", cache_dir=other_cache)
    assert enc.arch == "vit_tiny_patch8"  # the legacy config's encoder_kind wins over the registry default


def test_unknown_name_lists_known_and_closest():
    with pytest.raises(ModelNotFoundError) as err:
        eo_jepa.load("core-jepa-xl")
    msg = str(err.value)
    assert "Did you mean 'core-jepa-l'?" in msg
    for name in ("dinov3-vitl16-sat493m", "lejepa-vits8-s2-5band"):
        assert name in msg


def test_local_file_without_normalisation_is_refused_with_the_fixing_call(tmp_path, capsys):
    """A Meta DINOv3 .pth loads by path once `norm=` says how to normalise; the refusal shows that call."""
    ref, meta = fake_meta_dinov3()
    path = tmp_path / "dino.pth"
    torch.save(meta, path)
    with pytest.raises(CheckpointError) as err:
        eo_jepa.load(path)
    msg = str(err.value)
    call = re.search(r"eo_jepa\.load\([^)]*\)", msg).group(0)
    assert call == f"eo_jepa.load({str(path)!r}, norm='sat493m')" and "\n" not in msg
    enc = eval(call, {"eo_jepa": eo_jepa})  # the very call the message shows works
    raw = _rgb_batch(1, 32)
    x = _reference_input(raw, SAT["mean"], SAT["std"])
    torch.testing.assert_close(enc.normalize(raw), x, rtol=1e-6, atol=1e-6)
    with torch.no_grad():
        torch.testing.assert_close(enc(x), ref(x), rtol=1e-5, atol=1e-5)
    # an explicit per-band dict (here ImageNet-style statistics in 0-255 units), arch given
    stats = {b: {"mean": 120.0, "std": 60.0} for b in ("red", "green", "blue")}
    enc2 = eo_jepa.load(str(path), norm=stats, bands=["R", "G", "B"], arch="dinov3_vits16_qkvb")
    assert enc2.bands == ("red", "green", "blue") and enc2.norm_stats["red"] == {"mean": 120.0, "std": 60.0}
    with pytest.raises(ConfigError, match=r"Unknown normalisation 'sat'.*Did you mean 'sat493m'"):
        eo_jepa.load(path, norm="sat")
    with pytest.raises(ConfigError, match="describe a foreign checkpoint file"):
        eo_jepa.load("core-jepa-l", norm="sat493m")
    # models info on a file: the format and the call that loads it, through the real CLI
    from eo_jepa.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["models", "info", str(path)])
    assert exc.value.code == 0
    info = json.loads(capsys.readouterr().out)
    assert info["format"] == "meta-dinov3" and info["arch"] == "dinov3_vits16_qkvb"
    assert info["load"] == call and info["carries_normalization"] is False and info["patch_size"] == 16


def test_cached_named_model_makes_no_network_call_even_online(tmp_path, hub_cache, monkeypatch):
    """With the file in the cache, eo_jepa.load(name) answers from it without trying the network at all
    (HF_HUB_OFFLINE unset; huggingface_hub alone would try the Hub first and fall back to the cache)."""
    import huggingface_hub.constants as hf_constants

    attempts = []

    def refuse(self, address):
        attempts.append(address)
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: refuse(None, a[0] if a else None))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    _, ckpt = fake_legacy(kind="vit_tiny_patch8", img_size=64)
    torch.save(ckpt, tmp_path / "legacy.pt")
    spec = registry.get_spec("lejepa-vits8-s2-5band")
    put_in_hf_cache(hub_cache, spec.repo_id, spec.filename, tmp_path / "legacy.pt")
    assert eo_jepa.load("lejepa-vits8-s2-5band").arch == "vit_tiny_patch8"
    assert attempts == []


def test_uncached_model_with_unreachable_hub_fails_in_seconds(monkeypatch):
    """No cache and no network: one sentence within seconds (huggingface_hub alone retries for ~20 s)."""
    import time

    import huggingface_hub.constants as hf_constants

    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hf_constants, "ENDPOINT", f"http://127.0.0.1:{port}")
    t0 = time.perf_counter()
    with pytest.raises(
        ModelNotFoundError, match=r"is not in the Hugging Face cache and 127\.0\.0\.1 cannot be reached"
    ):
        eo_jepa.load("dinov3-vitl16-sat493m")
    assert time.perf_counter() - t0 < 8


def test_local_legacy_file_and_timm_folder(tmp_path):
    from safetensors.torch import save_file

    _, ckpt = fake_legacy(kind="vit_tiny_patch8", img_size=64)
    torch.save(ckpt, tmp_path / "legacy.pt")
    assert eo_jepa.load(str(tmp_path / "legacy.pt")).arch == "vit_tiny_patch8"
    # a timm Hub folder: config.json with architecture + pretrained_cfg, and timm-keyed safetensors
    ref, _ = fake_meta_dinov3(timm_name="vit_small_patch16_dinov3", sat=False)
    folder = tmp_path / "timm"
    folder.mkdir()
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, folder / "model.safetensors")
    cfg = {
        "architecture": "vit_small_patch16_dinov3",
        "pretrained_cfg": {"mean": SAT["mean"], "std": SAT["std"]},
    }
    (folder / "config.json").write_text(json.dumps(cfg))
    enc = eo_jepa.load(folder)
    raw = _rgb_batch(2, 32)
    with torch.no_grad():
        torch.testing.assert_close(
            enc(enc.normalize(raw)), ref(_reference_input(raw, SAT["mean"], SAT["std"]))
        )


def test_list_models_and_register(scratch_registry):
    names = [m["name"] for m in eo_jepa.list_models()]
    assert names[:4] == [
        "core-jepa-l",
        "dinov3-vitl16-sat493m",
        "dinov3-vitl16-lvd1689m",
        "lejepa-vits8-s2-5band",
    ]
    core = registry.get_spec("core-jepa-l")
    assert (core.repo_type, core.repo_id, core.filename, core.license) == (
        "dataset", "gajeshladharai/artifacts", "core-jepa/lejepa-l.pt", "CC BY-NC 3.0",
    )  # fmt: skip
    assert registry.get_spec("dinov3-vitl16-lvd1689m").norm_stats()["red"] == {"mean": 0.485, "std": 0.229}
    sat = registry.get_spec("dinov3-vitl16-sat493m").norm_stats()
    assert [sat[b]["mean"] for b in ("red", "green", "blue")] == [0.430, 0.411, 0.296]
    with pytest.raises(Exception, match="already registered"):
        registry.register_model(core)
    with pytest.raises(Exception, match="Unknown normalisation 'sat'"):
        registry.register_model(dataclasses.replace(core, name="x", norm="sat"))
    registry.register_model(dataclasses.replace(core, name="mine"))
    assert "mine" in [m["name"] for m in eo_jepa.list_models()]


def test_readme_model_zoo_matches_registry():
    text = README.read_text()
    assert registry.markdown_table() in text, (
        "README model-zoo table is stale: paste registry.markdown_table()"
    )


def test_cli_models_list_and_info():
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "eo_jepa", "models", "list", "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert [m["name"] for m in json.loads(out.stdout)][:1] == ["core-jepa-l"]
    out = subprocess.run(
        [sys.executable, "-m", "eo_jepa", "models", "info", "core-jepa-l"], capture_output=True, text=True
    )
    assert out.returncode == 0 and json.loads(out.stdout)["repo_id"] == "gajeshladharai/artifacts"
    out = subprocess.run(
        [sys.executable, "-m", "eo_jepa", "models", "info", "nope"], capture_output=True, text=True
    )
    assert out.returncode == 2 and re.search(
        r"Unknown model 'nope'; known models are: core-jepa-l", out.stderr
    )


@pytest.mark.slow
def test_full_vitl16_core_jepa_shape(tmp_path, hub_cache, no_network):
    """The real core-jepa-l entry with a full ViT-L/16 (q/v bias) Meta-layout fake."""
    ref, meta = fake_meta_dinov3("vit_large_patch16_dinov3_qkvb", seed=5)
    _cache_core_jepa_l(meta, tmp_path, hub_cache)
    del meta
    enc = eo_jepa.load("core-jepa-l")
    assert (enc.arch, enc.embed_dim, enc.patch_size, len(enc.backbone.blocks)) == (
        "dinov3_vitl16_qkvb",
        1024,
        16,
        24,
    )
    assert sum(p.numel() for p in enc.parameters()) == sum(p.numel() for p in ref.parameters())
    raw = _rgb_batch(4, 32)
    with torch.no_grad():
        torch.testing.assert_close(
            enc(enc.normalize(raw)), ref(_reference_input(raw, SAT["mean"], SAT["std"])), rtol=1e-4, atol=1e-4
        )
