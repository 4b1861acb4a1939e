"""The README's test command runs the end-to-end tests: `e2e` marks them for `-m 'not e2e'` during
development, and neither the command nor pytest's addopts may leave them out."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

from _pytest.mark.expression import Expression

ROOT = Path(__file__).resolve().parents[1]


def _marker_expressions(args: list[str]) -> list[str]:
    return [args[i + 1] for i, a in enumerate(args[:-1]) if a == "-m"] + [
        a[2:] for a in args if a.startswith("-m") and len(a) > 2
    ]


def test_the_readme_test_command_selects_e2e_tests(pytestconfig):
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- command: test -->\s*```bash\n(.+?)\n```", readme, re.S)
    assert block, "README has no '<!-- command: test -->' block"
    pytest_part = next(p for p in block.group(1).split("&&") if re.search(r"\bpytest\b", p))
    assert any(m.startswith("e2e:") for m in pytestconfig.getini("markers"))
    args = list(pytestconfig.getini("addopts")) + shlex.split(pytest_part)[1:]
    expressions = _marker_expressions(args)
    assert expressions, "no -m expression found: the slow tests would run too"
    for expr in expressions:
        compiled = Expression.compile(expr)
        assert compiled.evaluate(lambda name: name == "e2e"), f"-m {expr!r} leaves the e2e tests out"
        assert not compiled.evaluate(lambda name: name == "slow")  # what it is there for


def test_the_end_to_end_tests_carry_the_marker():
    """The quickstart command, the notebooks and the torchrun runs are what `-m e2e` collects."""
    files = ["test_quickstart.py", "test_notebooks.py", "test_cluster_train.py", "test_train.py"]
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", "-m", "e2e",
         *(f"tests/{f}" for f in files)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    ids = [line for line in proc.stdout.splitlines() if "::" in line]
    assert "tests/test_quickstart.py::test_progress_and_summary_printed" in ids
    assert "tests/test_notebooks.py::test_notebook_runs[01_build_chips.ipynb]" in ids
    assert "tests/test_notebooks.py::test_notebooks_are_stored_without_outputs" not in ids  # a quick check
    assert any(i.startswith("tests/test_cluster_train.py::") for i in ids)
    assert any(i.startswith("tests/test_train.py::test_two_gloo_processes_match_one_process") for i in ids)
    assert not any(i.startswith("tests/test_train.py::") and "gloo" not in i for i in ids)
