"""The model registry: one table of named encoders behind :func:`eo_jepa.load`.

Each :class:`ModelSpec` records where the weights live (a Hugging Face repo + file + revision, or
a local path), which converter reads them, which bands and normalisation they expect, and the
licence. This module is the table only (no torch, so ``eo-jepa models list`` is quick);
:mod:`eo_jepa.models.resolve` turns a name into a downloaded checkpoint and an encoder.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from eo_jepa.errors import ConfigError, ModelNotFoundError, did_you_mean
from eo_jepa.models.vit import get_arch

RGB8_SCALE = 1 / 255

# What reads a registered file: our checkpoint folder, a format of eo_jepa.models.convert, or "auto"
# (sniffed from the keys).
CONVERTERS = ("eo-jepa", "meta-dinov3", "core-jepa", "legacy", "timm", "auto")

# Named normalisations: statistics are in the units after ``scale`` (RGB in [0, 1]).
NORMALIZATIONS: dict[str, dict[str, Any]] = {
    # DINOv3 SAT-493M (Maxar satellite) weights, from Meta's DINOv3 release.
    "sat493m": {"mean": (0.430, 0.411, 0.296), "std": (0.213, 0.156, 0.143), "scale": RGB8_SCALE},
    # DINOv3 LVD-1689M (web images): the ImageNet statistics.
    "imagenet": {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225), "scale": RGB8_SCALE},
    # Statistics stored in the checkpoint itself (eo-jepa folders, sentinel-change-explorer .pt).
    "checkpoint": {},
}


@dataclass(frozen=True)
class ModelSpec:
    """One registered encoder."""

    name: str
    description: str
    arch: str | None  # None: taken from the checkpoint
    bands: tuple[str, ...]
    converter: str  # one of CONVERTERS
    norm: str | Mapping[str, Mapping[str, float]] = (
        "checkpoint"  # a NORMALIZATIONS key or {band: {mean, std}}
    )
    input_scale: float | None = None  # None: the named normalisation's scale (or 1)
    sensor: str | None = None
    license: str = "unknown"
    repo_id: str | None = None
    repo_type: str = "model"
    filename: str | None = None
    revision: str | None = None
    path: str | None = None  # a local file or folder instead of a Hub repo
    img_size: int | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def source(self) -> str:
        if self.path:
            return self.path
        kind = "" if self.repo_type == "model" else f"{self.repo_type}s/"
        rev = f"@{self.revision}" if self.revision else ""
        return f"hf://{kind}{self.repo_id}{rev}" + (f" ({self.filename})" if self.filename else "")

    def norm_stats(self) -> dict[str, dict[str, float]] | None:
        """Statistics by band, or None when they come from the checkpoint."""
        if isinstance(self.norm, Mapping):
            return {b: dict(v) for b, v in self.norm.items()}
        named = NORMALIZATIONS[self.norm]
        if not named:
            return None
        return {
            b: {"mean": m, "std": s} for b, m, s in zip(self.bands, named["mean"], named["std"], strict=True)
        }

    def scale(self) -> float | None:
        if self.input_scale is not None:
            return self.input_scale
        if isinstance(self.norm, str) and self.norm != "checkpoint":
            return float(NORMALIZATIONS[self.norm]["scale"])
        return None

    def summary(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "arch": self.arch or "(from checkpoint)",
            "bands": list(self.bands),
            "normalisation": self.norm if isinstance(self.norm, str) else "custom",
            "source": self.source,
            "converter": self.converter,
            "license": self.license,
        }


_S2_5BAND = ("red", "green", "blue", "nir", "swir16")
_RGB = ("red", "green", "blue")

BUILTIN: tuple[ModelSpec, ...] = (
    ModelSpec(
        name="core-jepa-l",
        description="Core-JEPA: DINOv3 ViT-L/16 (SAT-493M) continued with LeJEPA on Core-Five high-res RGB.",
        arch="dinov3_vitl16_qkvb",
        bands=_RGB,
        converter="core-jepa",
        norm="sat493m",
        sensor="rgb",
        license="CC BY-NC 3.0",
        repo_id="gajeshladharai/artifacts",
        repo_type="dataset",
        filename="core-jepa/lejepa-l.pt",
        img_size=224,
    ),
    ModelSpec(
        name="dinov3-vitl16-sat493m",
        description="Meta DINOv3 ViT-L/16 distilled, pretrained on SAT-493M satellite imagery (timm weights).",
        arch="dinov3_vitl16",
        bands=_RGB,
        converter="timm",
        norm="sat493m",
        sensor="rgb",
        license="DINOv3 License",
        repo_id="timm/vit_large_patch16_dinov3.sat493m",
        filename="model.safetensors",
        img_size=224,
    ),
    ModelSpec(
        name="dinov3-vitl16-lvd1689m",
        description="Meta DINOv3 ViT-L/16 distilled, pretrained on LVD-1689M web images (timm weights).",
        arch="dinov3_vitl16",
        bands=_RGB,
        converter="timm",
        norm="imagenet",
        sensor="rgb",
        license="DINOv3 License",
        repo_id="timm/vit_large_patch16_dinov3.lvd1689m",
        filename="model.safetensors",
        img_size=224,
    ),
    ModelSpec(
        name="lejepa-vits8-s2-5band",
        description="sentinel-change-explorer PoC: 5-band Sentinel-2 L2A ViT-S/8 (4 registers), 256 px.",
        arch="vit_small_patch8",
        bands=_S2_5BAND,
        converter="legacy",
        norm="checkpoint",
        sensor="sentinel-2-l2a",
        license="see the Hub model card",
        repo_id="falafel-hockey/lejepa-vit-small-patch8-256-sentinel2-5band",
        filename="lejepa_vit_small_patch8_256_5band.pt",
    ),
)

_REGISTRY: dict[str, ModelSpec] = {spec.name: spec for spec in BUILTIN}


def register_model(spec: ModelSpec | None = None, *, overwrite: bool = False, **kwargs: Any) -> ModelSpec:
    """Add a named model: ``register_model(ModelSpec(...))`` or ``register_model(name=..., repo_id=..., ...)``."""
    if spec is None:
        kwargs["bands"] = tuple(kwargs.get("bands") or ())
        spec = ModelSpec(**kwargs)
    if spec.name in _REGISTRY and not overwrite:
        raise ConfigError(
            f"A model named {spec.name!r} is already registered; pass overwrite=True to replace it."
        )
    if spec.converter not in CONVERTERS:
        raise ConfigError(f"Unknown converter {spec.converter!r}; choose from {', '.join(CONVERTERS)}.")
    if isinstance(spec.norm, str) and spec.norm not in NORMALIZATIONS:
        raise ConfigError(
            f"Unknown normalisation {spec.norm!r}; choose from {', '.join(NORMALIZATIONS)} or a dict."
        )
    if spec.arch is not None:
        get_arch(spec.arch)
    if not spec.path and not spec.repo_id:
        raise ConfigError(f"Model {spec.name!r} needs a repo_id (Hugging Face) or a local path.")
    _REGISTRY[spec.name] = spec
    return spec


def unregister_model(name: str) -> None:
    _REGISTRY.pop(name, None)


def is_registered(name: str) -> bool:
    """Whether ``name`` is a registered model name (built-in or added with :func:`register_model`)."""
    return name in _REGISTRY


def registered_names() -> list[str]:
    """The registered model names, built-in first, in registration order."""
    return list(_REGISTRY)


def get_spec(name: str) -> ModelSpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ModelNotFoundError(
            f"Unknown model {name!r}; known models are: {', '.join(_REGISTRY)}.{did_you_mean(name, _REGISTRY)}"
        ) from None


def list_models() -> list[dict[str, Any]]:
    """Registered models with description, bands, architecture, source and licence."""
    return [spec.summary() for spec in _REGISTRY.values()]


def markdown_table(names: Sequence[str] | None = None) -> str:
    """The model-zoo table for the README (built-in models by default)."""
    specs = [_REGISTRY[n] for n in names] if names else list(BUILTIN)
    lines = [
        "| name | architecture | bands | normalisation | source | licence | description |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in specs:
        row = s.summary()
        lines.append(
            f"| `{s.name}` | {row['arch']} | {', '.join(s.bands)} | {row['normalisation']} "
            f"| `{s.source}` | {s.license} | {s.description} |"
        )
    return "\n".join(lines)


def spec_dict(name: str) -> dict[str, Any]:
    """Every field of a registered spec (for ``eo-jepa models info``)."""
    spec = get_spec(name)
    out = asdict(spec)
    out["source"] = spec.source
    out["norm_stats"] = spec.norm_stats()
    out["input_scale"] = spec.scale()
    return out


def named_norm(
    norm: str | Mapping[str, Mapping[str, float]] | None, bands: Sequence[str] | None
) -> tuple[dict[str, dict[str, float]] | None, float | None]:
    """``(norm_stats, input_scale)`` of a ``norm=`` argument: a :data:`NORMALIZATIONS` name (RGB) or a dict."""
    if norm is None:
        return None, None
    if isinstance(norm, Mapping):
        return {str(b): {"mean": float(v["mean"]), "std": float(v["std"])} for b, v in norm.items()}, None
    named = NORMALIZATIONS.get(str(norm))
    if not named:
        choices = [n for n in NORMALIZATIONS if NORMALIZATIONS[n]]
        raise ConfigError(
            f"Unknown normalisation {norm!r}; choose from {', '.join(choices)} or pass {{band: {{'mean', 'std'}}}}."
            f"{did_you_mean(str(norm), choices)}"
        )
    names = tuple(bands or _RGB)
    if len(names) != len(named["mean"]):
        raise ConfigError(
            f"Normalisation {norm!r} is for 3 RGB bands, not {list(names)}; pass a dict per band."
        )
    return {
        b: {"mean": m, "std": sd} for b, m, sd in zip(names, named["mean"], named["std"], strict=True)
    }, float(named["scale"])
