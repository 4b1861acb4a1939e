"""The fake Meta DINOv3 checkpoints the registry tests load have Meta's real key names and shapes.

The fakes are written with eo_jepa's own ``timm_to_meta``, so the loader tests alone could pass on a
mistake shared by that converter and its inverse. Here the fake is compared with a list written by
hand from Meta's published architecture (``tests/data/meta_dinov3_vits16_keys.txt``).
"""

from __future__ import annotations

from pathlib import Path

from models_fakes import fake_meta_dinov3

KEYS_FILE = Path(__file__).parent / "data" / "meta_dinov3_vits16_keys.txt"


def _published_layout(depth: int = 12) -> dict[str, tuple[int, ...]]:
    layout: dict[str, tuple[int, ...]] = {}
    for line in KEYS_FILE.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        name, shape = line.split()
        dims = tuple(int(d) for d in shape.split(","))
        for key in [name.format(i=i) for i in range(depth)] if "{i}" in name else [name]:
            layout[key] = dims
    return layout


def test_fake_sat_checkpoint_has_metas_key_names_and_shapes():
    _, meta = fake_meta_dinov3("vit_small_patch16_dinov3_qkvb", sat=True)
    published = _published_layout()
    assert sorted(meta) == sorted(published), (
        f"missing: {sorted(set(published) - set(meta))}, unexpected: {sorted(set(meta) - set(published))}"
    )
    wrong = {k: (tuple(meta[k].shape), v) for k, v in published.items() if tuple(meta[k].shape) != v}
    assert not wrong, f"(fake shape, published shape) differ: {wrong}"


def test_fake_web_checkpoint_lacks_only_the_local_cls_norm():
    _, meta = fake_meta_dinov3("vit_small_patch16_dinov3_qkvb", sat=False)
    published = {k: v for k, v in _published_layout().items() if not k.startswith("local_cls_norm.")}
    assert {k: tuple(v.shape) for k, v in meta.items()} == published
