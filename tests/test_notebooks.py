"""Every notebook in notebooks/ executes end to end, on this interpreter, and is committed clean.

Each notebook is run with nbclient in a fresh kernel. The kernel spec is written to a temporary
JUPYTER_PATH with this test's own interpreter (``sys.executable``) as the kernel command, so the
notebooks run against the venv that runs the tests and never a ``python`` found on PATH; the test
checks the kernel reports that interpreter. ``DIMINT_NOTEBOOK_OUT`` makes each notebook run its
experiment's quick variant (one seed, ``DIMINT_NOTEBOOK_SEEDS``) into a temporary directory instead
of reading results/, so the test proves the whole path: experiment, CSV, plots. Any cell error
fails the test. Committed notebooks must carry no outputs, so diffs show only what a person wrote.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
KERNEL_NAME = "dimint-test-venv"


@pytest.fixture(scope="module")
def jupyter_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A JUPYTER_PATH whose only extra kernel runs this very interpreter."""
    root = tmp_path_factory.mktemp("jupyter")
    spec_dir = root / "kernels" / KERNEL_NAME
    spec_dir.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "DiMint tests (venv)",
        "language": "python",
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    return root


def test_there_is_a_notebook_per_experiment() -> None:
    from experiments import EXPERIMENTS

    names = {path.stem for path in NOTEBOOKS}
    assert {"rebalancing", "load_balance", "failover", "read_offload"} <= names
    assert names <= set(EXPERIMENTS)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_notebook_is_committed_without_outputs(path: Path) -> None:
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{path.name}: strip outputs"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_notebook_executes(
    path: Path, jupyter_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JUPYTER_PATH", str(jupyter_path))
    monkeypatch.setenv("DIMINT_NOTEBOOK_OUT", str(tmp_path))
    monkeypatch.setenv("DIMINT_NOTEBOOK_SEEDS", "1")
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(
        notebook,
        kernel_name=KERNEL_NAME,
        timeout=300,
        resources={"metadata": {"path": str(path.parent)}},
    )
    client.execute()  # raises CellExecutionError on the first failing cell

    text = "".join(
        output.get("text", "")
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.outputs
        if output.get("output_type") == "stream"
    )
    assert f"kernel python: {sys.executable}" in text
    assert f"results: {tmp_path / path.stem}" in text
    assert (tmp_path / path.stem / "summary.csv").exists()
    images = sum(
        "image/png" in output.get("data", {})
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.outputs
    )
    assert images >= 1, f"{path.name} drew no plot"
