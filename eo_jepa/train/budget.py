"""``train --time-budget 30m``: size the learning-rate schedule to a wall-clock budget.

CPU users cannot guess ``max_steps``. With a budget the trainer runs a few steps, measures the
time per optimiser step (over 10 steps after the first 2, or fewer when a single process has used
10% of its budget by then), and sets the total number of steps (hence the warm-up, when it is a
fraction, and the cosine decay to ``lr × final_lr_ratio``) to what fits in the time left, with a
small margin for checkpoints and health measurements; never more than the configured
``epochs``/``max_steps``. The sized total is kept in ``<run>/time_budget.json`` so a resumed run
keeps the same schedule. Should the run still reach the budget (a slower machine, a busier
disk), it stops there and saves its checkpoint. Under ``torch.distributed`` every rank takes the
smallest total any rank measured, so all ranks stop together.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from eo_jepa.errors import ConfigError
from eo_jepa.utils.io import atomic_write_json

log = logging.getLogger(__name__)

BUDGET_FILE = "time_budget.json"
SKIP = 2  # first steps left out of the measurement (loader workers starting, first-call overheads)
MEASURE = 10  # steps measured
MARGIN = 0.97  # share of the remaining time planned for optimiser steps
CHECK_EVERY = 10  # under torch.distributed, steps between collective out-of-time checks

_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0}


def parse_duration(text: str) -> float:
    """Seconds in ``"30m"``, ``"2h"``, ``"1h30m"``, ``"90s"`` or ``"1.5h"``."""
    raw = str(text).strip().lower()
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([hms])", raw)
    if not parts or re.sub(r"(\d+(?:\.\d+)?)\s*([hms])", "", raw).strip():
        raise ConfigError(f"time_budget {text!r} is not a duration; write it like 30m, 2h, 1h30m or 90s.")
    seconds = sum(float(v) * _UNITS[u] for v, u in parts)
    if seconds <= 0:
        raise ConfigError(f"time_budget {text!r} must be longer than zero.")
    return seconds


class TimeBudget:
    """Sizes ``total`` (and a fractional warm-up) to the time; see the module doc."""

    def __init__(
        self,
        seconds: float,
        optim: Any,
        run_dir: Path | None,
        *,
        start_step: int = 0,
        device: Any = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.seconds = seconds
        self.optim = optim
        self.path = None if run_dir is None else Path(run_dir) / BUDGET_FILE
        self.start_step = start_step
        self.device = device
        self.clock = clock
        self.t0 = clock()
        self.t_mark: float | None = None
        self.sized: int | None = None
        if self.path is not None and start_step > 0 and self.path.is_file():
            self.sized = int(json.loads(self.path.read_text())["total"])  # resumed: same schedule

    @classmethod
    def for_run(
        cls, cfg: Any, run_dir: Path, start_step: int, device: Any, is_main: bool
    ) -> TimeBudget | None:
        if cfg.time_budget is None:
            return None
        return cls(
            parse_duration(cfg.time_budget),
            cfg.optim,
            run_dir if is_main else None,
            start_step=start_step,
            device=device,
        )

    def warmup_for(self, total: int, warmup: int) -> int:
        return warmup if self.optim.warmup_steps is not None else int(self.optim.warmup_fraction * total)

    def after_step(self, step: int, total: int, warmup: int) -> tuple[int, int]:
        """``(total, warmup)`` after optimiser step ``step``: sized once measured, cut at the budget."""
        if self.sized is not None:
            total = min(total, self.sized)
        done = step - self.start_step
        now = self.clock()
        if done == SKIP:
            self.t_mark = now
        elif self.sized is None and done > SKIP and (done == SKIP + MEASURE or self._short(now)):
            per_step = (now - self.t_mark) / (done - SKIP)
            left = self.seconds - (now - self.t0)
            fit = step + max(0, math.floor(MARGIN * left / max(per_step, 1e-9)))
            self.sized = self._agree(min(total, fit))
            total = self.sized
            log.info(
                "Time budget %.0f s: %.3g s per step -> %d steps in total; the schedule is sized to it.",
                self.seconds,
                per_step,
                total,
            )
            if self.path is not None:
                atomic_write_json(
                    self.path,
                    {"seconds": self.seconds, "total": total, "per_step_s": per_step, "sized_at": step},
                )
        # Out of time: stop here (the final checkpoint is still written). Ranks decide together, at
        # the same steps (every step on one process, every CHECK_EVERY steps under torch.distributed).
        if step < total and (_world() == 1 or done % CHECK_EVERY == 0):
            out = self._agree(step if now - self.t0 >= self.seconds else total)
            if out < total:
                log.warning("Time budget of %.0f s reached at step %d; stopping.", self.seconds, step)
                total = self.sized = out
        return total, self.warmup_for(total, warmup)

    def _short(self, now: float) -> bool:
        """One process whose steps are slow for its budget: size before 10% of the time is gone.

        (Under torch.distributed sizing waits for the fixed step, the same on every rank.)"""
        return _world() == 1 and now - self.t0 > 0.1 * self.seconds

    def _agree(self, total: int) -> int:
        """The smallest ``total`` over all ranks (one process: unchanged)."""
        if _world() == 1:
            return total
        import torch
        import torch.distributed as dist

        t = torch.tensor([total], dtype=torch.int64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
        return int(t.item())


def _world() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
