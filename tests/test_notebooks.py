"""The tutorial notebooks run top to bottom, offline, at a reduced size, and show pictures.

They share one work folder (as a user's would), so they run in order: 01 builds the demo scenes
and chips that 02 trains on, 03 publishes 02's run, 04 continues a DINOv3-layout checkpoint with
LeJEPA. The folder is this module's own: nothing else writes to it or reads from it.
"""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
ORDER = [
    "01_build_chips.ipynb",
    "02_pretrain_lejepa.ipynb",
    "03_load_embed_visualize.ipynb",
    "04_continue_dinov3.ipynb",
]


def test_notebooks_are_stored_without_outputs():
    assert sorted(p.name for p in NOTEBOOKS.glob("*.ipynb")) == ORDER
    for name in ORDER:
        nb = nbformat.read(NOTEBOOKS / name, as_version=4)
        nbformat.validate(nb)
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert cell.outputs == [] and cell.execution_count is None, f"{name} is stored with outputs"


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("notebooks")


def _images(nb) -> int:
    return sum(
        1
        for cell in nb.cells
        if cell.cell_type == "code"
        for out in cell.get("outputs", [])
        if "image/png" in out.get("data", {})
    )


@pytest.mark.e2e
@pytest.mark.parametrize("name", ORDER)
def test_notebook_runs(name, work, monkeypatch):
    from nbclient import NotebookClient

    monkeypatch.setenv("EO_JEPA_NOTEBOOK_SIZE", "tiny")
    monkeypatch.setenv("EO_JEPA_NOTEBOOK_DIR", str(work))
    monkeypatch.setenv("EO_JEPA_NOTEBOOK_STEPS", "8")
    monkeypatch.setenv("EO_JEPA_NOTEBOOK_DINO_STEPS", "2")
    monkeypatch.setenv("EO_JEPA_NO_PROGRESS", "1")
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = NotebookClient(
        nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}}
    )
    client.execute()  # raises CellExecutionError (with the traceback) if any cell fails
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    assert _images(nb) >= 2, f"{name} shows fewer than 2 pictures"
    if name.startswith("01"):
        assert (work / "scenes" / "items.json").is_file() and (work / "chips" / "dataset.json").is_file()
    if name.startswith("02"):
        rows = (work / "runs" / "notebook" / "metrics.jsonl").read_text().splitlines()
        assert json.loads(rows[-1])["step"] == 8
    if name.startswith("03"):
        assert (work / "models" / "notebook" / "config.json").is_file()
    if name.startswith("04"):
        config = json.loads((work / "models" / "core_jepa_small" / "config.json").read_text())
        assert config["arch"] == "dinov3_vits16_qkvb"
