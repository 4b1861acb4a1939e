"""The probe protocol: kNN, linear and few-shot top-1 accuracy, mean ± std over seeds.

Features are extracted once (frozen encoder) for the train and evaluation splits; each seed
then re-draws the few-shot subset and re-initialises/re-orders the linear probe. Full-data kNN
is deterministic, so its spread is zero by construction.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np

from eo_jepa.errors import ConfigError, DataError
from eo_jepa.eval.datasets import LabelledData, fewshot_indices
from eo_jepa.eval.features import FEATURE_KINDS, default_probe_kind, extract_features
from eo_jepa.eval.knn import DEFAULT_K, DEFAULT_TEMPERATURE, knn_predict
from eo_jepa.eval.linear import LinearProbeConfig, linear_predict, train_linear_probe

log = logging.getLogger(__name__)

Method = Literal["knn", "linear"]


@dataclass
class ProbeResult:
    method: str
    shots: int | None  # None: all training samples
    accuracies: list[float]  # one per seed
    seeds: list[int]
    num_train: int
    num_test: int
    classes: list[str] = field(default_factory=list)
    features: str = "probe"  # which features the probe used (eo_jepa.eval.features.FEATURE_KINDS)
    per_class: dict[str, float] = field(default_factory=dict)  # accuracy per test class, mean over seeds

    @property
    def mean(self) -> float:
        return float(np.mean(self.accuracies))

    @property
    def std(self) -> float:
        return float(np.std(self.accuracies))

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "mean": self.mean, "std": self.std}

    def summary(self) -> str:
        shots = "all" if self.shots is None else f"{self.shots}-shot"
        return (
            f"{self.method:6s} {shots:>8s}  top-1 {100 * self.mean:6.2f} ± {100 * self.std:5.2f} %  "
            f"(train {self.num_train}, test {self.num_test}, {len(self.seeds)} seed(s), features {self.features})"
        )


def accuracy(pred: np.ndarray, truth: np.ndarray) -> float:
    """Top-1 accuracy: fraction of equal entries."""
    return float(np.mean(np.asarray(pred) == np.asarray(truth))) if len(truth) else float("nan")


def run_probe(
    train_x: np.ndarray,
    train_labels: Sequence[str],
    test_x: np.ndarray,
    test_labels: Sequence[str],
    *,
    method: Method,
    shots: int | None = None,
    seeds: Sequence[int] = (0, 1, 2),
    k: int = DEFAULT_K,
    temperature: float = DEFAULT_TEMPERATURE,
    linear: LinearProbeConfig | None = None,
) -> ProbeResult:
    """Top-1 of one probe on precomputed features; string labels, classes in sorted order."""
    classes = sorted(set(train_labels) | set(test_labels))
    code = {c: i for i, c in enumerate(classes)}
    ytr = np.asarray([code[c] for c in train_labels], dtype=np.int64)
    yte = np.asarray([code[c] for c in test_labels], dtype=np.int64)
    # Full-data kNN has no randomness: one run, whatever the seeds.
    run_seeds = list(seeds) if (shots is not None or method == "linear") else [int(seeds[0])]
    accs: list[float] = []
    hits: dict[str, list[float]] = {c: [] for c in classes if (yte == code[c]).any()}
    n_train = len(ytr)
    for seed in run_seeds:
        sel = np.arange(len(ytr)) if shots is None else fewshot_indices(list(train_labels), shots, seed)
        n_train = len(sel)
        if method == "knn":
            pred = knn_predict(
                train_x[sel], ytr[sel], test_x, k=k, temperature=temperature, num_classes=len(classes)
            )
        elif method == "linear":
            cfg = LinearProbeConfig(**{**asdict(linear or LinearProbeConfig()), "seed": int(seed)})
            head = train_linear_probe(train_x[sel], ytr[sel], len(classes), cfg)
            pred = linear_predict(head, test_x)
        else:
            raise ValueError(f"unknown probe method {method!r}")
        accs.append(accuracy(pred, yte))
        for c in hits:
            hits[c].append(accuracy(pred[yte == code[c]], yte[yte == code[c]]))
    per_class = {c: float(np.mean(v)) for c, v in hits.items()}
    return ProbeResult(
        method, shots, accs, [int(s) for s in run_seeds], n_train, len(yte), classes, per_class=per_class
    )


def evaluate(
    encoder: Any,
    data: LabelledData,
    *,
    methods: Sequence[Method] = ("knn", "linear"),
    shots: Sequence[int | None] = (None, 1, 10),
    seeds: Sequence[int] = (0, 1, 2),
    k: int = DEFAULT_K,
    temperature: float = DEFAULT_TEMPERATURE,
    linear: LinearProbeConfig | None = None,
    batch_size: int = 64,
    device: str | None = None,
    bf16: bool = False,
    resize: bool = False,
    workers: int = 0,
    features: str | None = None,
) -> list[ProbeResult]:
    """Extract probe features of the train and evaluation splits once, then run every probe.

    ``features``: a kind of :data:`eo_jepa.eval.features.FEATURE_KINDS`; ``None`` picks
    :func:`~eo_jepa.eval.features.default_probe_kind` (``lejepa`` for LeJEPA-trained encoders).
    """
    kind = features or default_probe_kind(encoder)
    if kind not in FEATURE_KINDS:
        raise ConfigError(f"Unknown features {kind!r}; choose one of: {', '.join(FEATURE_KINDS)}.")

    train_idx = data.splits["train"]
    test_idx = data.splits[data.eval_split]
    if len(train_idx) == 0 or len(test_idx) == 0:
        raise DataError(
            "The dataset split has an empty train or test part; add labelled samples or a split file."
        )
    common = dict(
        kind=kind,
        batch_size=batch_size,
        device=device,
        bf16=bf16,
        data_bands=data.bands,
        resize=resize,
        workers=workers,
    )
    train_x = extract_features(encoder, data.dataset, indices=train_idx, desc="train features", **common)
    test_x = extract_features(encoder, data.dataset, indices=test_idx, desc="test features", **common)
    train_labels = [data.labels[i] for i in train_idx]
    test_labels = [data.labels[i] for i in test_idx]
    results = []
    for method in methods:
        for n in shots:
            result = run_probe(
                train_x,
                train_labels,
                test_x,
                test_labels,
                method=method,
                shots=n,
                seeds=seeds,
                k=k,
                temperature=temperature,
                linear=linear,
            )
            result.features = kind
            log.info("%s", result.summary())
            results.append(result)
    return results
