"""Sphinx configuration of the scfound documentation."""

from __future__ import annotations

import sys
from datetime import date
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

project = "scfound"
author = "scfound developers"
copyright = f"{date.today().year}, {author}"
try:
    release = version("scfound")
except PackageNotFoundError:  # building from a source tree without installing
    release = "0.0.0"
version = release

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx_autodoc_typehints",
    "sphinx.ext.viewcode",
]
# No intersphinx: the documentation is built without network access.

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
master_doc = "index"
templates_path = ["_templates"]
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]

# -- autodoc / autosummary ---------------------------------------------------
autosummary_generate = True
autodoc_member_order = "bysource"
autodoc_default_options = {"show-inheritance": True}
typehints_defaults = "comma"

# -- napoleon (numpydoc-style docstrings) ------------------------------------
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = True
napoleon_use_param = True

# -- MyST --------------------------------------------------------------------
myst_enable_extensions = ["colon_fence", "deflist", "dollarmath"]
myst_heading_anchors = 3

# -- HTML --------------------------------------------------------------------
html_theme = "furo"
html_title = f"scfound {release}"
