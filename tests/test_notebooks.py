"""The notebooks in ``notebooks/``: stored clean, Colab-ready, and runnable top to bottom.

Every notebook is executed with ``nbclient`` in quick mode (``NORMTX_NOTEBOOK_QUICK=1``), from the
repository root, by a ``python3`` kernel that runs this interpreter (a kernelspec written to a
temporary directory at test time, so a fresh ``make test`` venv needs no ``jupyter`` setup). A
notebook whose cell raises, including a failed ``assert`` on a numeric claim, fails the suite.
"""

from __future__ import annotations

import pathlib
import re

import nbformat
import pytest
from ipykernel.kernelspec import install as install_kernelspec
from nbclient import NotebookClient

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
NAMES = [path.name for path in NOTEBOOKS]
COLAB_URL = "https://colab.research.google.com/github/normtx/normtx/blob/main/notebooks/{}"
BADGE_IMAGE = "https://colab.research.google.com/assets/colab-badge.svg"
EXPECTED = [
    "01_quickstart.ipynb",
    "02_geometry.ipynb",
    "03_modular_norm.ipynb",
    "04_escape_velocity.ipynb",
    "05_adaptive_family.ipynb",
]


def _read(name: str) -> nbformat.NotebookNode:
    notebook = nbformat.read(ROOT / "notebooks" / name, as_version=4)
    nbformat.validate(notebook)
    return notebook


def _code(notebook: nbformat.NotebookNode) -> str:
    return "\n".join(cell.source for cell in notebook.cells if cell.cell_type == "code")


def test_the_five_notebooks_exist():
    assert NAMES == EXPECTED


@pytest.mark.parametrize("name", NAMES)
def test_stored_without_outputs(name):
    for cell in _read(name).cells:
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{name}: a code cell is stored with outputs"
            assert cell.execution_count is None, f"{name}: a code cell has an execution count"


@pytest.mark.parametrize("name", NAMES)
def test_colab_badge_points_to_the_notebook(name):
    first = _read(name).cells[0]
    assert first.cell_type == "markdown"
    assert f"[![Open In Colab]({BADGE_IMAGE})]({COLAB_URL.format(name)})" in first.source


@pytest.mark.parametrize("name", NAMES)
def test_first_code_cell_installs_normtx_only_when_missing(name):
    first = next(cell for cell in _read(name).cells if cell.cell_type == "code").source
    assert re.search(r'^REPO_URL = "https://github\.com/normtx/normtx"$', first, re.M)
    assert "try:\n    import normtx\nexcept ImportError:" in first
    assert 'f"normtx[notebooks] @ git+{REPO_URL}"' in first


@pytest.mark.parametrize("name", NAMES)
def test_quick_mode_parameter_and_public_api_only(name):
    code = _code(_read(name))
    assert 'QUICK = os.environ.get("NORMTX_NOTEBOOK_QUICK", "0") == "1"' in code
    assert not re.search(r"normtx\._|from normtx import _|normtx\.\w+\._", code)
    assert "benchmarks" not in code  # Colab installs only normtx


def test_readme_links_every_notebook():
    readme = (ROOT / "README.md").read_text()
    for name in NAMES:
        assert f"notebooks/{name}" in readme
        assert COLAB_URL.format(name) in readme


@pytest.fixture(scope="module")
def kernel_env(tmp_path_factory):
    """A ``python3`` kernelspec for this interpreter, and the kernel's environment variables."""
    prefix = tmp_path_factory.mktemp("jupyter")
    install_kernelspec(prefix=str(prefix), kernel_name="python3")
    return {
        "JUPYTER_PATH": str(prefix / "share" / "jupyter"),  # searched before any other kernelspec
        "NORMTX_NOTEBOOK_QUICK": "1",
        "JAX_PLATFORMS": "cpu",
        # The notebooks compile many small programs and run each for a few steps: in quick mode
        # XLA's LLVM optimisation costs more time than it saves (it halves the compile times).
        "XLA_FLAGS": "--xla_backend_optimization_level=0",
    }


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs(name, kernel_env, monkeypatch):
    for key, value in kernel_env.items():
        monkeypatch.setenv(key, value)
    notebook = _read(name)
    client = NotebookClient(
        notebook,
        kernel_name="python3",
        timeout=600,  # per cell
        startup_timeout=180,  # a loaded CI machine starts kernels slowly
        resources={"metadata": {"path": str(ROOT)}},
    )
    client.execute()  # raises CellExecutionError if a cell fails
    images = [
        output
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.outputs
        if "image/png" in output.get("data", {})
    ]
    assert images, f"{name} drew no figure"
