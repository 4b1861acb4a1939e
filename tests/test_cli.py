"""The CLI contract: help lists the groups, --version, unbuilt groups fail loudly."""

from __future__ import annotations

import subprocess
import sys

import pytest

from eo_jepa import __version__
from eo_jepa.cli import main

GROUPS = ["chips", "train", "publish", "eval", "viz", "quickstart"]


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "eo_jepa", *args], capture_output=True, text=True, timeout=120
    )


def test_help_lists_groups():
    result = run_cli("--help")
    assert result.returncode == 0, result.stderr
    for group in GROUPS:
        assert group in result.stdout


def test_version():
    result = run_cli("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"eo-jepa {__version__}"


def test_unknown_command_is_usage_error():
    result = run_cli("no-such-command")
    assert result.returncode == 2
    assert "No such command" in result.stderr


def test_user_error_is_one_line_exit_2(capsys, tmp_path):
    """An EOJepaError raised by any command ends as one line on stderr with exit status 2."""
    import typer

    from eo_jepa.cli import app
    from eo_jepa.errors import ConfigError

    @app.command("_raise-for-test", hidden=True)
    def _raise() -> None:
        raise ConfigError("Unknown config key 'lr'; valid keys are: optim.")

    try:
        with pytest.raises(SystemExit) as exc:
            main(["_raise-for-test"])
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert err.strip() == "eo-jepa: error: Unknown config key 'lr'; valid keys are: optim."
        assert "Traceback" not in err
    finally:
        app.registered_commands[:] = [c for c in app.registered_commands if c.name != "_raise-for-test"]
    del typer
