"""Mixed precision: the one place where a precision name becomes an autocast context.

Training takes ``optim.precision`` (``auto`` | ``fp32`` | ``bf16`` | ``fp16``); inference takes a
``--bf16`` flag, i.e. ``bf16`` or ``fp32``. Both go through :func:`autocast`.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from eo_jepa.errors import ConfigError

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` -> ``bf16`` on a GPU that supports it, else ``fp32``; ``fp16`` needs a GPU."""
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError("optim.precision='fp16' needs a GPU; use bf16 or fp32 on CPU.")
    return precision


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager[Any]:
    """Autocast to ``precision`` (``bf16`` | ``fp16``) on ``device``; a no-op for ``fp32``."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=_DTYPES[precision])
