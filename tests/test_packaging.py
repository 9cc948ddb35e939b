"""What ``pip install`` gets: the sdist and wheel built from this checkout, and the wheel installed.

The distributions are built with ``python -m build --no-isolation`` (the build backend comes from
the dev extra, so nothing is downloaded): the sdist first, then the wheel from the unpacked sdist,
so a file the sdist forgets breaks the wheel. The wheel is then installed into a fresh virtual
environment made from the base interpreter without pip (this venv's pip installs into it with
``--python``, ``--no-deps --no-index``). Only afterwards does the fresh venv get the dev venv's
site-packages as a ``.pth`` line, for jax, optax and the rest: a path listed in a ``.pth`` file is
appended to ``sys.path`` but its own ``.pth`` files are not read, so the dev venv's editable hook
for normtx (a ``.pth`` pointing at this checkout) stays inert, and the import below can only find
the installed wheel.
"""

from __future__ import annotations

import email.parser
import importlib.metadata
import json
import os
import pathlib
import subprocess
import sys
import sysconfig
import tarfile
import zipfile

import pytest

import normtx

pytestmark = pytest.mark.slow

ROOT = pathlib.Path(__file__).resolve().parents[1]
DIST_INFO = f"normtx-{normtx.__version__}.dist-info"
SDIST_ROOT = f"normtx-{normtx.__version__}"


def _run(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    return subprocess.run(
        args, check=True, capture_output=True, text=True, timeout=300, env=env, **kwargs
    )


@pytest.fixture(scope="module")
def dists(tmp_path_factory) -> dict[str, pathlib.Path]:
    out = tmp_path_factory.mktemp("dist")
    _run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(ROOT)])
    (wheel,) = out.glob("normtx-*.whl")
    (sdist,) = out.glob("normtx-*.tar.gz")
    return {"wheel": wheel, "sdist": sdist}


def _source_modules() -> set[str]:
    return {
        path.relative_to(ROOT).as_posix()
        for path in (ROOT / "normtx").rglob("*.py")
        if "__pycache__" not in path.parts
    }


def _wheel_read(dists, name: str) -> str:
    with zipfile.ZipFile(dists["wheel"]) as wheel:
        return wheel.read(name).decode()


def test_wheel_holds_the_package_its_license_and_py_typed_and_nothing_else(dists):
    with zipfile.ZipFile(dists["wheel"]) as wheel:
        names = set(wheel.namelist())
    assert f"{DIST_INFO}/licenses/LICENSE" in names
    assert "normtx/py.typed" in names
    assert _source_modules() <= names, sorted(_source_modules() - names)
    tops = {name.split("/")[0] for name in names}
    assert tops == {"normtx", DIST_INFO}, tops  # no tests/, benchmarks/, examples/, .ci/
    license_text = _wheel_read(dists, f"{DIST_INFO}/licenses/LICENSE")
    assert license_text == (ROOT / "LICENSE").read_text()


def test_wheel_metadata_license_classifiers_and_urls(dists):
    meta = email.parser.Parser().parsestr(_wheel_read(dists, f"{DIST_INFO}/METADATA"))
    assert meta["License-Expression"] == "Apache-2.0"
    assert meta.get_all("License-File") == ["LICENSE"]
    assert meta["License"] is None  # the legacy free-text field is gone
    classifiers = set(meta.get_all("Classifier"))
    minor_versions = {
        c for c in classifiers if c.startswith("Programming Language :: Python :: 3.")
    }
    assert minor_versions == {f"Programming Language :: Python :: 3.{m}" for m in (10, 11, 12, 13)}
    assert meta["Requires-Python"] == ">=3.10"
    assert "Operating System :: OS Independent" in classifiers
    assert any(c.startswith("Development Status ::") for c in classifiers)
    urls = dict(u.split(", ", 1) for u in meta.get_all("Project-URL"))
    assert set(urls) == {"Homepage", "Source", "Documentation", "Issues"}
    assert urls["Source"] == "https://github.com/normtx/normtx"
    assert urls["Issues"] == "https://github.com/normtx/normtx/issues"


def test_license_file_is_apache_2():
    text = (ROOT / "LICENSE").read_text()
    assert text.lstrip().startswith("Apache License\n                           Version 2.0")
    assert "Copyright 2026 normtx developers" in text


def test_sdist_has_sources_and_license_but_no_ci_files_or_plots(dists):
    with tarfile.open(dists["sdist"]) as tar:
        names = tar.getnames()
    assert all(name.startswith(f"{SDIST_ROOT}/") for name in names)
    rel = {name[len(SDIST_ROOT) + 1 :] for name in names}
    assert {"LICENSE", "README.md", "pyproject.toml", "PKG-INFO", "normtx/py.typed"} <= rel
    assert _source_modules() <= rel
    assert not [n for n in rel if n.startswith((".ci/", ".venv/", "docs/_build/", "dist/"))]
    assert not [n for n in rel if n.endswith(".png")]
    assert not [n for n in rel if "__pycache__" in n or ".ipynb_checkpoints" in n]


def test_sdist_notebooks_have_no_outputs(dists):
    with tarfile.open(dists["sdist"]) as tar:
        for member in tar.getmembers():
            if member.name.endswith(".ipynb"):
                notebook = json.load(tar.extractfile(member))
                code = [c for c in notebook["cells"] if c["cell_type"] == "code"]
                assert all(c["outputs"] == [] for c in code), member.name


def test_wheel_installs_into_a_fresh_venv_and_imports_from_there(dists, tmp_path):
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    python = venv / "bin" / "python"
    _run(
        [
            *(sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet"),
            *("--no-deps", "--no-index", "--disable-pip-version-check", str(dists["wheel"])),
        ]
    )
    purelib = pathlib.Path(
        _run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]
        ).stdout.strip()
    )
    assert (purelib / "normtx" / "py.typed").is_file()
    assert (purelib / DIST_INFO / "licenses" / "LICENSE").is_file()
    # The dependencies, after the install (pip saw only the fresh venv): this venv's
    # site-packages, whose own .pth files (the editable normtx hook among them) are not read.
    dev_paths = dict.fromkeys(sysconfig.get_paths()[key] for key in ("purelib", "platlib"))
    (purelib / "_dev_dependencies.pth").write_text("\n".join(dev_paths) + "\n")
    workdir = tmp_path / "elsewhere"  # not the checkout, so the source tree is not on sys.path
    workdir.mkdir()
    probe = (
        "import importlib.metadata as md, json, normtx; "
        "print(json.dumps([normtx.__file__, normtx.__version__, "
        "md.version('normtx'), md.metadata('normtx')['License-Expression'], "
        "callable(normtx.optimizers.muon)]))"
    )
    file, version, dist_version, license_expr, ok = json.loads(
        _run([str(python), "-c", probe], cwd=workdir).stdout
    )
    assert pathlib.Path(file) == purelib / "normtx" / "__init__.py"
    assert not pathlib.Path(file).is_relative_to(ROOT)
    assert version == dist_version == normtx.__version__ == importlib.metadata.version("normtx")
    assert license_expr == "Apache-2.0"
    assert ok
