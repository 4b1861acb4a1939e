"""Our checkpoint folder: round trip, sha256 verification, metadata, atomic writes, unsafe pickles, legacy export."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pickle
import time
from pathlib import Path

import pytest
import torch
from models_fakes import randomize_

import eo_jepa
from eo_jepa.errors import CheckpointError
from eo_jepa.models import build_encoder, load_encoder, save_encoder, save_legacy_pt
from eo_jepa.models.checkpoint import FORMAT_VERSION

S2 = ("red", "green", "blue", "nir", "swir16")
STATS = {b: {"mean": 900.0 + i, "std": 400.0 + i, "p1": 3.0} for i, b in enumerate(S2)}


@dataclasses.dataclass
class TinyTrainConfig:
    lr: float = 1e-3
    epochs: int = 2
    bands: tuple[str, ...] = S2


@pytest.fixture
def encoder():
    enc = build_encoder("vit_tiny_patch8", S2, img_size=64, norm_stats=STATS, sensor="sentinel-2-l2a")
    randomize_(enc.backbone, seed=7)
    return enc.eval()


def test_round_trip_is_bit_identical(tmp_path, encoder):
    folder = save_encoder(
        encoder, tmp_path / "m", training_config=TinyTrainConfig(), provenance={"data_card_id": "s2-demo-v1"},
        card_extra={"title": "Tiny test", "metrics": {"knn_top1": 0.5}},
    )  # fmt: skip
    assert sorted(os.listdir(folder)) == ["README.md", "config.json", "model.safetensors"]
    loaded = eo_jepa.load(str(folder))
    raw = torch.randint(0, 5000, (2, 5, 64, 64), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(loaded(loaded.normalize(raw)), encoder(encoder.normalize(raw)))
        assert torch.equal(
            loaded.forward_features(loaded.normalize(raw)), encoder.forward_features(encoder.normalize(raw))
        )
    for (k, a), (k2, b) in zip(encoder.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(a, b)
    assert (loaded.bands, loaded.img_size, loaded.arch, loaded.sensor) == (
        S2,
        64,
        "vit_tiny_patch8",
        "sentinel-2-l2a",
    )
    # the weights are memory-mapped copy-on-write: fine-tuning them in place leaves the file intact
    with torch.no_grad():
        for p in loaded.parameters():
            p.add_(1.0)
    again = load_encoder(folder)
    for a, b in zip(encoder.parameters(), again.parameters(), strict=True):
        assert torch.equal(a, b)


def test_config_json_contents(tmp_path, encoder):
    folder = save_encoder(
        encoder, tmp_path / "m", training_config=TinyTrainConfig(), provenance={"data_card_id": "card-1"}
    )
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["format_version"] == FORMAT_VERSION and cfg["arch"] == "vit_tiny_patch8"
    assert (cfg["img_size"], cfg["patch_size"], cfg["embed_dim"], cfg["pooling"]) == (64, 8, 192, "mean")
    assert [b["name"] for b in cfg["bands"]] == list(S2)
    assert [b["wavelength_nm"] for b in cfg["bands"]] == [664.6, 559.8, 492.4, 832.8, 1613.7]  # eo_jepa.bands
    assert cfg["norm_stats"]["nir"] == {"mean": 903.0, "std": 403.0}  # extra stats keys are not carried
    assert cfg["input"] == {"scale": 1.0, "offset": 0.0, "formula": "((raw + offset) * scale - mean) / std"}
    assert cfg["training_config"] == {"lr": 1e-3, "epochs": 2, "bands": list(S2)}
    prov = cfg["provenance"]
    assert prov["data_card_id"] == "card-1" and prov["eo_jepa_version"] == eo_jepa.__version__
    assert prov["weights_sha256"] == hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()
    assert prov["date"].startswith("20") and "git_commit" in prov
    card = (folder / "README.md").read_text()
    assert "| 3 | nir | 832.8 | 10 | 903 | 403 |" in card and "card-1" in card


@pytest.fixture(autouse=True)
def _own_verify_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EO_JEPA_CACHE", str(tmp_path / "eo-jepa-cache"))


def test_tampered_weights_fail_sha256(tmp_path, encoder, monkeypatch):
    from eo_jepa.models import checkpoint

    folder = save_encoder(encoder, tmp_path / "m")
    weights = folder / "model.safetensors"
    calls = []
    monkeypatch.setattr(
        checkpoint,
        "sha256_file",
        lambda p: calls.append(p) or hashlib.sha256(Path(p).read_bytes()).hexdigest(),
    )
    load_encoder(folder)
    load_encoder(folder)
    assert len(calls) == 0  # save_encoder hashed what it wrote; the unchanged file is known by its stamp
    os.utime(weights)  # touched, not changed: hashed again, still valid, stamp renewed
    load_encoder(folder)
    load_encoder(folder)
    assert len(calls) == 1
    time.sleep(0.01)
    data = bytearray(weights.read_bytes())
    data[-100] ^= 0x01  # one bit of one weight
    weights.write_bytes(bytes(data))
    with pytest.raises(
        CheckpointError, match=r"sha256 .* but config.json records .*re-download or re-export"
    ):
        load_encoder(folder)
    assert len(calls) == 2  # the modified file was hashed again despite the earlier stamp


def test_bad_folders(tmp_path, encoder):
    with pytest.raises(CheckpointError, match=r"has no config\.json"):
        load_encoder(tmp_path)
    folder = save_encoder(encoder, tmp_path / "m")
    cfg = json.loads((folder / "config.json").read_text())
    cfg["format_version"] = FORMAT_VERSION + 1
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="upgrade eo-jepa"):
        load_encoder(folder)
    (folder / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="is not valid JSON"):
        eo_jepa.load(folder / "config.json")


def test_interrupted_save_leaves_no_partial_files(tmp_path, encoder, monkeypatch):
    import safetensors.torch

    def crash(state, filename, metadata=None):
        Path(filename).write_bytes(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(safetensors.torch, "save_file", crash)
    with pytest.raises(KeyboardInterrupt):
        save_encoder(encoder, tmp_path / "m")
    assert os.listdir(tmp_path / "m") == []


class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_malicious_pickle_is_refused(tmp_path):
    evil = _Evil()
    evil.marker = str(tmp_path / "pwned")
    path = tmp_path / "evil.pt"
    with open(path, "wb") as fh:
        pickle.dump({"encoder_state": evil}, fh)
    with pytest.raises(CheckpointError, match="refuses to unpickle"):
        eo_jepa.load(str(path))
    assert not (tmp_path / "pwned").exists()
    torch.save(
        {"config": TinyTrainConfig(), "encoder_state": {}}, tmp_path / "custom.pt"
    )  # zip format, custom class
    with pytest.raises(CheckpointError, match="refuses to unpickle"):
        eo_jepa.load(str(tmp_path / "custom.pt"))


def test_legacy_pt_round_trip(tmp_path, encoder):
    path = save_legacy_pt(encoder, tmp_path / "legacy.pt")
    raw = torch.load(path, weights_only=True)
    assert raw["config"]["encoder_kind"] == "vit_tiny_patch8"
    assert all(k.startswith("vit.") for k in raw["encoder_state"])
    assert raw["norm_stats"]["mean"] == [STATS[b]["mean"] for b in S2]
    loaded = eo_jepa.load(path)
    x = torch.randn(1, 5, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(x), encoder(x))
    dino = build_encoder("dinov3_vits16", ("red", "green", "blue"))
    with pytest.raises(CheckpointError, match="only holds ViT/8 encoders"):
        save_legacy_pt(dino, tmp_path / "dino.pt")
