"""Foreign checkpoint files (Meta DINOv3 layout, no normalisation inside) in the eval commands.

`eo_jepa.load(path, norm=...)` already loads them from Python; on the command line `--norm` says the
same, for one model (`eval knn`) and for the file models of a benchmark (`eval bench`), while
registered names that carry their own normalisation refuse it.
"""

from __future__ import annotations

import json

import pytest
import torch
from eval_synthetic import write_image_folder
from models_fakes import fake_meta_dinov3

from eo_jepa.cli import main
from eo_jepa.eval.layouts import write_synthetic_layouts

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def meta_pth(tmp_path_factory):
    _, meta = fake_meta_dinov3("vit_small_patch16_dinov3_qkvb", seed=5)
    path = tmp_path_factory.mktemp("foreign") / "dinov3_sat.pth"
    torch.save(meta, path)
    return path


def _run(capsys, *args) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in args])
    out = capsys.readouterr()
    return exc.value.code or 0, out.out, out.err


def test_eval_knn_on_a_foreign_file_needs_norm_and_works_with_it(meta_pth, tmp_path, capsys):
    data = write_image_folder(tmp_path / "png", per_class=4, size=32, fmt="png")
    code, _, err = _run(capsys, "eval", "knn", "--model", meta_pth, "--data", data, "--shots", "all")
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "norm='sat493m'" in err  # the refusal shows the fix
    out_json = tmp_path / "knn.json"
    code, out, err = _run(
        capsys, "eval", "knn", "--model", meta_pth, "--norm", "sat493m", "--data", data, "--shots", "all",
        "--seeds", "0", "--out", out_json,
    )  # fmt: skip
    assert code == 0, err
    results = json.loads(out_json.read_text())["results"]
    assert results and all(0.0 <= r["mean"] <= 1.0 and r["num_test"] > 0 for r in results), results
    assert str(meta_pth) in out


def test_the_cli_loader_applies_the_named_normalisation(meta_pth):
    from eo_jepa.eval.cli import _load
    from eo_jepa.models.registry import NORMALIZATIONS

    sat = NORMALIZATIONS["sat493m"]
    enc = _load(str(meta_pth), "cpu", "sat493m")
    assert list(enc.bands) == ["red", "green", "blue"]
    assert [enc.norm_stats[b]["mean"] for b in enc.bands] == pytest.approx(sat["mean"])
    assert [enc.norm_stats[b]["std"] for b in enc.bands] == pytest.approx(sat["std"])
    assert enc.input_scale == pytest.approx(sat["scale"])


def test_norm_is_refused_for_a_registered_name(capsys, tmp_path):
    data = write_image_folder(tmp_path / "png", per_class=2, size=32, fmt="png")
    code, _, err = _run(
        capsys, "eval", "knn", "--model", "dinov3-vitl16-sat493m", "--norm", "imagenet", "--data", data
    )
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "registered name" in err


def test_eval_bench_applies_norm_to_file_models_only(meta_pth, tmp_path, capsys):
    root = write_synthetic_layouts(tmp_path / "data", ["ucmerced"], classes=2, per_class=4, size=32)
    out = tmp_path / "bench"
    code, _, err = _run(
        capsys, "eval", "bench", "--root", root, "--suite", "ucmerced", "--model", meta_pth,
        "--model", "random:vit_tiny_patch8", "--norm", "sat493m", "--probes", "knn", "--seeds", "0",
        "--out", out,
    )  # fmt: skip
    assert code == 0, err
    rows = json.loads((out / "results.json").read_text())
    rows = rows["rows"] if isinstance(rows, dict) else rows
    models = {r["model"] for r in rows}
    assert str(meta_pth) in models and "random:vit_tiny_patch8" in models, models


def _timm_weights_in_hub_cache(tmp_path) -> dict[str, torch.Tensor]:
    """A vit_tiny_patch16_224 checkpoint where timm's pretrained loader looks for it offline: the
    Hugging Face cache layout of its default tag's repo (timm/<name>.<tag>, model.safetensors)."""
    import os
    from pathlib import Path

    import timm
    from models_fakes import put_in_hf_cache, randomize_
    from safetensors.torch import save_file

    model = randomize_(timm.create_model("vit_tiny_patch16_224", pretrained=False), seed=7)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    src = tmp_path / "model.safetensors"
    save_file(state, str(src))
    repo = model.pretrained_cfg["hf_hub_id"]
    put_in_hf_cache(Path(os.environ["HF_HUB_CACHE"]), repo, "model.safetensors", src)
    return state


def test_timm_baseline_loads_its_pretrained_weights_from_the_hub_cache(tmp_path, capsys):
    from eo_jepa.eval.bench import resolve_model

    state = _timm_weights_in_hub_cache(tmp_path)
    enc = resolve_model("timm:vit_tiny_patch16_224")
    got = enc.backbone.state_dict() if hasattr(enc, "backbone") else enc.model.state_dict()
    assert torch.equal(got["blocks.0.attn.qkv.weight"], state["blocks.0.attn.qkv.weight"])
    assert [enc.norm_stats[b]["mean"] for b in enc.bands] == pytest.approx([0.5, 0.5, 0.5])
    root = write_synthetic_layouts(tmp_path / "data", ["rsscn7"], classes=2, per_class=3, size=32)
    code, _, err = _run(
        capsys, "eval", "bench", "--root", root, "--suite", "rsscn7", "--model", "timm:vit_tiny_patch16_224",
        "--probes", "knn", "--seeds", "0", "--size", "32", "--out", tmp_path / "bench",
    )  # fmt: skip
    assert code == 0, err


def test_timm_baseline_without_cached_weights_is_one_sentence(capsys, tmp_path):
    root = write_synthetic_layouts(tmp_path / "data", ["rsscn7"], classes=2, per_class=3, size=32)
    code, _, err = _run(
        capsys, "eval", "bench", "--root", root, "--suite", "rsscn7", "--model", "timm:vit_tiny_patch16_224",
        "--probes", "knn", "--seeds", "0", "--out", tmp_path / "bench",
    )  # fmt: skip
    last = err.strip().splitlines()[-1]  # after the dataset's "not comparable to published figures" note
    assert code == 2 and "Traceback" not in err and last.startswith("eo-jepa: error: "), err
    assert "vit_tiny_patch16_224" in last and "Hugging Face cache" in last
