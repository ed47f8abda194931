"""The notebooks: each committed one is exactly what `make notebooks` writes from its lesson, and
each runs top to bottom in a real Jupyter kernel, with every figure the lesson wrote shown inline
under the cell that drew it and the summary table under the last step."""

import base64
import importlib.util
import json
import sys

import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient

from conftest import LESSONS, ROOT, TINY_ARGS

KERNEL = "autoencoders-tests"
CELL_TIMEOUT_S = 300


def load_generator():
    spec = importlib.util.spec_from_file_location("make_notebooks",
                                                  ROOT / "scripts" / "make_notebooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


generator = load_generator()


def test_every_lesson_has_a_notebook():
    assert sorted(generator.LESSONS) == sorted(LESSONS)
    assert sorted(p.stem for p in (ROOT / "notebooks").glob("*.ipynb")) == sorted(LESSONS)


@pytest.mark.parametrize("lesson", LESSONS)
def test_committed_notebook_is_generated_from_the_lesson(lesson):
    path = generator.notebook_path(lesson)
    assert path.read_text() == generator.notebook_text(lesson), (
        f"{path.relative_to(ROOT)} differs from its lesson: run `make notebooks`")
    notebook = nbformat.reads(path.read_text(), as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert all(not cell.outputs and cell.execution_count is None for cell in code)
    parameters = [cell for cell in code if "parameters" in cell.metadata.get("tags", [])]
    assert len(parameters) == 1 and parameters[0].source.endswith("ARGS = []")
    assert not any("__main__" in cell.source for cell in code)


@pytest.fixture(scope="module")
def kernel_specs(tmp_path_factory):
    """A kernelspec that runs this interpreter (the .venv's python), offline."""
    folder = tmp_path_factory.mktemp("kernels")
    (folder / KERNEL).mkdir()
    (folder / KERNEL / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "autoencoders (tests)", "language": "python",
        "env": {"AUTOENCODERS_OFFLINE": "1"}}))
    return KernelSpecManager(kernel_dirs=[str(folder)])


def shown_pngs(notebook):
    return [base64.b64decode(output.data["image/png"])
            for cell in notebook.cells if cell.cell_type == "code"
            for output in cell.outputs if "image/png" in output.get("data", {})]


def text_of(cell):
    return "".join(output.get("text", "") + output.get("data", {}).get("text/plain", "")
                   for output in cell.outputs)


@pytest.mark.parametrize("lesson", LESSONS)
def test_notebook_runs_in_a_kernel(lesson, kernel_specs, small_mnist_npz, tmp_path):
    notebook = nbformat.read(generator.notebook_path(lesson), as_version=4)
    args = [*TINY_ARGS[lesson], "--data", str(small_mnist_npz), "--limit", "256",
            "--epochs", "1", "--out", str(tmp_path)]
    for cell in notebook.cells:
        if "parameters" in cell.metadata.get("tags", []):
            cell.source = f"ARGS = {args!r}"
    kernel = KernelManager(kernel_name=KERNEL, kernel_spec_manager=kernel_specs)
    # Jupyter starts a notebook's kernel in the notebook's folder; the set-up cell moves to
    # the repository root from there.
    NotebookClient(notebook, km=kernel, timeout=CELL_TIMEOUT_S,
                   resources={"metadata": {"path": str(ROOT / "notebooks")}}).execute()

    written = {path.name: path.read_bytes()
               for path in sorted((tmp_path / "figures").rglob("*.png"))}
    assert written, "the lesson wrote no figure"
    shown = shown_pngs(notebook)
    missing = [name for name, png in written.items() if png not in shown]
    assert not missing, f"figures written but not shown inline: {missing}"

    steps = {cell.source: cell for cell in notebook.cells if cell.cell_type == "code"}
    summary = [cell for source, cell in steps.items() if source.startswith("print_summary(")]
    assert len(summary) == 1 and f"{lesson} on " in text_of(summary[0]), "no summary table"
    for source, cell in steps.items():
        if source.endswith(".summary()"):
            assert "Total params" in text_of(cell), f"no model summary under {source}"
