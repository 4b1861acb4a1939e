"""Shared test set-up: no network, no progress bars, quiet, deterministic."""

from __future__ import annotations

import os
import sys

import pytest

# Nothing in the tests may reach the internet: huggingface_hub must stay offline, whatever the
# developer's environment says (setdefault would let HF_HUB_OFFLINE=0 through).
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("EO_JEPA_NO_PROGRESS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op torch thread for a module of small-tensor tests: on a shared 2-core machine small
    models gain nothing from threads and OpenMP spin-waits badly. Use with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _isolated_hf_home(tmp_path_factory, monkeypatch):
    """Each test sees an empty Hugging Face cache unless it builds one itself."""
    home = tmp_path_factory.mktemp("hf_home")
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    # huggingface_hub reads these once, at import: after the first test imported it, callers that
    # pass no cache_dir (timm's pretrained loader) would all share the first test's cache.
    constants = sys.modules.get("huggingface_hub.constants")
    if constants is not None:
        monkeypatch.setattr(constants, "HF_HOME", str(home))
        monkeypatch.setattr(constants, "HF_HUB_CACHE", str(home / "hub"))


# ---- Demo scenes and real loopback servers (eo_jepa.demo), generated once per test session ----


@pytest.fixture(scope="session")
def demo_scenes_tiny(tmp_path_factory):
    """The 'tiny' demo scenes (1 tile, 4 dates, both sides of baseline 04.00, 20 AOIs): DemoScenes."""
    from eo_jepa.demo.scenes import make_demo_scenes

    return make_demo_scenes(tmp_path_factory.mktemp("demo_tiny"), seed=0, size="tiny")


@pytest.fixture(scope="session")
def reference_chips(demo_scenes_tiny, tmp_path_factory):
    """(store, BuildReport, cards folder) of the default demo chip build: ``demo_scenes_tiny`` built with
    configs/chips/s2_5band_64_demo.yaml, serially and uninterrupted, its data card also copied to the
    cards folder. The reference the chip tests compare their builds with, built once per session:
    read it, never change it (copy it first, as tests that resume or damage a store do)."""
    from pathlib import Path

    from eo_jepa.chips import build_chips

    config = Path(__file__).resolve().parents[1] / "configs" / "chips" / "s2_5band_64_demo.yaml"
    root = tmp_path_factory.mktemp("reference_chips") / "store"
    cards = tmp_path_factory.mktemp("reference_cards")
    scenes = demo_scenes_tiny
    report = build_chips(scenes.aois_path, config, root, stac=str(scenes.items_path), card_dir=cards)
    return root, report, cards


@pytest.fixture(scope="session")
def cog_http_url(demo_scenes_tiny):
    """Base URL of a Range-capable HTTP server on loopback serving ``demo_scenes_tiny.cog_dir``."""
    from eo_jepa.demo.servers import range_http_server

    with range_http_server(demo_scenes_tiny.cog_dir) as url:
        yield url


@pytest.fixture(scope="session")
def stac_api_url(demo_scenes_tiny, cog_http_url):
    """URL of a real STAC API (stac-fastapi-pgstac on PostgreSQL/PostGIS) holding the tiny scenes' items,
    whose asset hrefs point at ``cog_http_url``. Fails (never skips) when PostgreSQL/PostGIS are missing."""
    from eo_jepa.demo.servers import stac_api_server

    with stac_api_server(demo_scenes_tiny.collection(), demo_scenes_tiny.items(cog_http_url)) as url:
        yield url
