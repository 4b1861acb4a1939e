"""train --time-budget: the step count and cosine schedule are sized to a wall-clock budget."""

from __future__ import annotations

import json
import math
import time
from types import SimpleNamespace

import pytest
from train_data import make_chip_store

from eo_jepa.errors import ConfigError
from eo_jepa.train.budget import MARGIN, MEASURE, SKIP, TimeBudget, parse_duration
from eo_jepa.train.config import load_train_config
from eo_jepa.train.optim import lr_factor

TINY = "configs/train/tiny_cpu.yaml"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30m", 1800), ("2h", 7200), ("1h30m", 5400), ("90s", 90), ("1.5h", 5400), (" 45 m ", 2700)],
)
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["30", "30x", "m", "0m", "30m garbage"])
def test_bad_duration_is_a_clear_error(text):
    with pytest.raises(ConfigError, match=r"time_budget .* (is not a duration|must be longer than zero)"):
        parse_duration(text)
    with pytest.raises(ConfigError, match="time_budget"):
        load_train_config(TINY, [f"time_budget={text}"])


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_sized_from_measured_step_time_then_cut_at_the_budget(tmp_path):
    clock = Clock()
    optim = SimpleNamespace(warmup_steps=None, warmup_fraction=0.05)
    budget = TimeBudget(1000.0, optim, tmp_path, clock=clock)
    total, warmup = 10**6, 50_000
    clock.t = 7.0  # setup before the first step
    for step in range(1, SKIP + MEASURE + 1):
        clock.t += 5.0 if step <= SKIP else 2.0  # slow first steps are left out of the measurement
        total, warmup = budget.after_step(step, total, warmup)
    # 2 s per step; at step 12 the clock reads 7 + 10 + 20 = 37 s: 963 s left
    expected = SKIP + MEASURE + math.floor(MARGIN * 963 / 2.0)
    assert total == expected and warmup == int(0.05 * expected)
    assert json.loads((tmp_path / "time_budget.json").read_text())["total"] == expected
    # a slower machine reaches the budget before the planned total: stop there
    step = SKIP + MEASURE
    while step < total:
        step += 1
        clock.t += 3.0
        total, warmup = budget.after_step(step, total, warmup)
    assert clock.t >= 1000 and total == step < expected
    # a resumed run keeps the sized schedule
    resumed = TimeBudget(1000.0, optim, tmp_path, start_step=100, clock=Clock())
    assert resumed.after_step(101, 10**6, 0)[0] == expected


def test_configured_total_is_an_upper_bound_and_fixed_warmup_is_kept(tmp_path):
    clock = Clock()
    budget = TimeBudget(3600.0, SimpleNamespace(warmup_steps=5, warmup_fraction=0.05), None, clock=clock)
    total, warmup = 40, 5
    for step in range(1, SKIP + MEASURE + 1):
        clock.t += 1.0
        total, warmup = budget.after_step(step, total, warmup)
    assert (total, warmup) == (40, 5)


def test_train_with_a_time_budget_finishes_its_cosine_in_time(tmp_path):
    from eo_jepa.cli import main

    store = make_chip_store(tmp_path / "store", n_locations=16)
    t0 = time.perf_counter()
    with pytest.raises(SystemExit) as exc:
        main([
            "train", "--config", TINY, "--data", str(store), "--time-budget", "25s",
            f"output_dir={tmp_path}", "name=budget", "max_steps=null", "epochs=100000",
            "log.rank_every=0", "log.tensorboard=false", "checkpoint.every=1000",
        ])  # fmt: skip
    assert exc.value.code == 0
    elapsed = time.perf_counter() - t0
    assert elapsed < 25 + 60  # setup and the final checkpoint on a loaded machine
    run = tmp_path / "budget"
    record = json.loads((run / "time_budget.json").read_text())
    sized, sized_at = record["total"], record["sized_at"]
    rows = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    last = rows[-1]["step"]
    assert SKIP < sized_at <= SKIP + MEASURE and sized_at <= last <= sized
    cfg = load_train_config(TINY)
    # from the second step after the sizing on (the scheduler computed the next lr just before it),
    # the schedule is the cosine over the sized total, followed to its end
    for r in rows[sized_at + 1 :]:
        assert math.isclose(r["lr"], cfg.optim.lr * lr_factor(r["step"] - 1, sized, 5, 1e-3), rel_tol=1e-9)
    if last == sized:
        assert rows[-1]["lr"] < 0.05 * cfg.optim.lr  # the tail of the cosine
