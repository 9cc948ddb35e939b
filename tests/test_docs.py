"""The API reference in ``docs/``: complete, built without warnings, and its examples run.

The pages document every object by its public name (``.. autofunction:: normtx.norms.l1``), so
these tests read the ``__all__`` of ``normtx`` and of each public subpackage it exports and
compare them with the autodoc directives of ``docs/api/*.rst``. Docstring examples written as
``>>>`` sessions are run with :mod:`doctest` under the globals of ``docs/conf.py``'s
``doctest_global_setup`` (what ``sphinx.ext.doctest`` gives them).
"""

from __future__ import annotations

import doctest
import importlib
import inspect
import pathlib
import re
import runpy
import subprocess
import sys
import types

import pytest

import normtx

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
DIRECTIVE = re.compile(r"^\.\. auto(function|class|data|exception|module)::\s+(\S+)\s*$", re.M)
OPTIONFLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


def _public_modules() -> dict[str, types.ModuleType]:
    """``normtx`` and the subpackages in its ``__all__``, by their public names."""
    modules = {"normtx": normtx}
    for name in normtx.__all__:
        value = getattr(normtx, name)
        if isinstance(value, types.ModuleType):
            modules[f"normtx.{name}"] = value
    return modules


def _public_names() -> dict[str, object]:
    """Every public object (and module) by its public dotted name."""
    names: dict[str, object] = {}
    for module_name, module in _public_modules().items():
        names[module_name] = module
        for name in module.__all__:
            names[f"{module_name}.{name}"] = getattr(module, name)
    return names


def _directives() -> list[tuple[str, str, str]]:
    """``(page, kind, target)`` for every autodoc directive of the API pages."""
    found = []
    for page in sorted(DOCS.rglob("*.rst")):
        if "_build" in page.parts:
            continue
        for kind, target in DIRECTIVE.findall(page.read_text()):
            found.append((page.relative_to(DOCS).as_posix(), kind, target))
    return found


def _documented() -> dict[str, object]:
    """The objects the pages document, by their directive targets."""
    documented = {}
    for _, _, target in _directives():
        # By attributes from ``normtx``, as a user reaches it (``normtx.diagnostics`` is the
        # function, ``normtx.linalg.newton_schulz`` the function, not the modules of those names).
        obj = importlib.import_module("normtx")
        for part in target.split(".")[1:]:
            obj = getattr(obj, part)
        documented[target] = obj
    return documented


def _globs() -> dict[str, object]:
    setup = runpy.run_path(str(DOCS / "conf.py"))["doctest_global_setup"]
    globs: dict[str, object] = {}
    exec(setup, globs)
    return globs


def _doctests() -> list[doctest.DocTest]:
    """The ``>>>`` examples of every documented object (class methods included)."""
    tests = []
    for name, obj in _documented().items():
        finder = doctest.DocTestFinder(recurse=inspect.isclass(obj), exclude_empty=True)
        for test in finder.find(obj, name, module=False):
            if test.examples:
                tests.append(test)
    return tests


DOCTESTS = _doctests()


def test_every_public_name_has_a_directive():
    targets = {target for _, _, target in _directives()}
    missing = sorted(set(_public_names()) - targets)
    assert not missing, (
        "public names without an autodoc directive in docs/api/*.rst (add e.g. "
        f"'.. autofunction:: {missing[0]}' to the page of its module): {missing}"
    )


def test_every_directive_is_a_public_name_documented_once():
    targets = [target for _, _, target in _directives()]
    assert len(targets) == len(set(targets)), "an object is documented twice"
    stale = sorted(set(targets) - set(_public_names()))
    assert not stale, f"docs/api documents names that are not public (not in __all__): {stale}"


def test_every_subpackage_has_a_page_listed_in_the_index():
    index = (DOCS / "index.rst").read_text()
    for module_name in _public_modules():
        page = DOCS / "api" / f"{module_name.split('.')[-1]}.rst"
        assert page.is_file(), f"no page {page.relative_to(ROOT)} for {module_name}"
        assert f".. automodule:: {module_name}\n" in page.read_text()
        assert f"\n   api/{page.stem}\n" in index


def test_docstring_examples_are_doctests():
    """An ``Example::`` literal block is not run; every example is a ``>>>`` session instead."""
    docs = {name: inspect.getdoc(obj) or "" for name, obj in _documented().items()}
    literal = sorted(name for name, doc in docs.items() if re.search(r"Examples?::\s*$", doc, re.M))
    assert not literal, f"examples to write as >>> sessions (Example: then >>> lines): {literal}"
    with_doctests = {test.name.split(".__")[0] for test in DOCTESTS}
    sections = {name for name, doc in docs.items() if re.search(r"^Examples?:\s*$", doc, re.M)}
    without = sorted(sections - with_doctests)
    assert not without, f"Example: sections without a >>> session: {without}"
    assert len(with_doctests) >= 10


@pytest.mark.parametrize("test", DOCTESTS, ids=[test.name for test in DOCTESTS])
def test_docstring_example_runs(test):
    test.globs = _globs()
    runner = doctest.DocTestRunner(optionflags=OPTIONFLAGS)
    output: list[str] = []
    runner.run(test, out=output.append)
    assert runner.failures == 0, "".join(output)


@pytest.mark.slow
def test_sphinx_builds_without_warnings(tmp_path):
    result = subprocess.run(
        [
            *(sys.executable, "-m", "sphinx", "-b", "html", "-W", "--keep-going", "-q"),
            *("-d", str(tmp_path / "doctrees"), str(DOCS), str(tmp_path / "html")),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-5000:]
    assert result.stderr.strip() == "", result.stderr[-5000:]
    html = (tmp_path / "html" / "api" / "norms.html").read_text()
    assert 'id="normtx.norms.rms_to_rms"' in html  # autodoc resolved the public names
