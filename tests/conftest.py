"""Shared test set-up: no network, no progress bars, quiet, deterministic."""

from __future__ import annotations

import os

import pytest

# Nothing in the tests may reach the internet: huggingface_hub must stay offline.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("EO_JEPA_NO_PROGRESS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(autouse=True)
def _isolated_hf_home(tmp_path_factory, monkeypatch):
    """Each test sees an empty Hugging Face cache unless it builds one itself."""
    home = tmp_path_factory.mktemp("hf_home")
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.delenv("HF_TOKEN", raising=False)
