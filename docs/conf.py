"""Sphinx configuration of the normtx API reference (``make docs``)."""

from __future__ import annotations

import importlib.metadata

project = "normtx"
author = "normtx developers"
copyright = "2026, normtx developers"
release = importlib.metadata.version("normtx")
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.doctest",
    "sphinx.ext.mathjax",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
]

# Google-style docstrings (Args / Returns / Raises / Example / References).
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False

# Objects are documented by their public names (``normtx.norms.rms_to_rms``), so moving a
# definition between private modules changes nothing here.
autodoc_default_options = {"member-order": "bysource"}
autodoc_typehints = "signature"
autodoc_typehints_format = "short"
autodoc_preserve_defaults = True
add_module_names = True
# Signatures longer than this get one parameter per line (jax's ArrayLike expands to a long union).
python_maximum_signature_line_length = 90

# ``make doctest`` / the test suite run the docstrings' examples; these imports are in scope.
doctest_global_setup = """
import jax
import jax.numpy as jnp
import numpy as np
import optax
import normtx
from normtx import norms
"""

exclude_patterns = ["_build"]
html_theme = "furo"
html_title = f"normtx {release}"


_DATA_DOCS: dict[str, list[str]] = {}


def _keep_data_docstring(app, what, name, obj, options, lines):
    """Before napoleon: a constant's own docstring, or none (autodoc would show its type's)."""
    if what == "data":
        type_doc = (type(obj).__doc__ or "").strip()
        if lines and type_doc and lines[0] == type_doc.splitlines()[0]:
            lines.clear()
        _DATA_DOCS[name] = list(lines)


def _restore_data_docstring(app, what, name, obj, options, lines):
    """After napoleon, which reads a first line ``X: text`` of a constant's docstring as a type."""
    if what == "data":
        lines[:] = _DATA_DOCS.pop(name)


def setup(app):
    app.connect("autodoc-process-docstring", _keep_data_docstring, priority=400)
    app.connect("autodoc-process-docstring", _restore_data_docstring, priority=600)
