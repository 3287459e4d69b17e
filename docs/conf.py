"""Sphinx configuration of the sb3-trust documentation (``make docs`` builds it with warnings as errors)."""

import os
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS / "_ext"))
sys.path.insert(0, str(DOCS.parent))

# Autodoc imports the package: keep the optional accelerator out of the build (it imports lazily anyway)
os.environ.setdefault("SB3_TRUST_ACCEL", "0")

import sb3_trust  # noqa: E402

project = "sb3-trust"
author = "sb3-trust maintainers"
copyright = "sb3-trust maintainers"
release = sb3_trust.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
    "myst_parser",
    "sb3_trust_docs",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]
templates_path: list[str] = []

myst_enable_extensions = ["colon_fence", "dollarmath"]
myst_heading_anchors = 3

# The committed Markdown files included as pages (repository path -> docname): links between them follow them here
sb3_trust_included_pages = {
    "benchmarks/README.md": "protocol",
    "benchmarks/RESULTS.md": "results",
    "benchmarks/THROUGHPUT.md": "speed",
    "benchmarks/SOAK.md": "guarantees",
}

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"show-inheritance": True}
# The docstrings are reST with :param: fields (as SB3's); napoleon only for the odd Google-style section
napoleon_google_docstring = False
napoleon_numpy_docstring = False

nitpicky = False

html_theme = "sphinx_rtd_theme"
html_title = f"sb3-trust {release}"
html_static_path: list[str] = []
html_theme_options = {"navigation_depth": 3}
