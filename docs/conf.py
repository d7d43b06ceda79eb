"""Sphinx configuration of the pylcogt documentation (astropy-affiliated style).

Build it with warnings as errors, as CI does (``tests/docs/test_docs.py``)::

    .venv/bin/python -m sphinx -W --keep-going -j auto -b html docs docs/_build/html
    .venv/bin/python -m sphinx -W --keep-going -j auto -b doctest docs docs/_build/doctest

(sphinx.ext.viewcode is left out on purpose: its highlighted source pages added about 40% to the
html build time, which the test suite pays on every run.)

Nothing here fetches from the network: no intersphinx, no MathJax, no web fonts; the theme's
assets are bundled with it, so the built site works offline.
"""

from __future__ import annotations

import datetime as dt
import os
import sys
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "_ext"))

# -- project ------------------------------------------------------------------------------------
project = "pylcogt"
author = "the pylcogt developers"
copyright = f"{dt.date.today().year}, {author}"
try:
    release = package_version("pylcogt")
except PackageNotFoundError:  # a source tree that was never installed
    from pylcogt import __version__ as release
version = ".".join(release.split(".")[:2])

# -- general ------------------------------------------------------------------------------------
extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.doctest",
    "sphinx_automodapi.automodapi",
    "pylcogt_cli",  # docs/_ext/pylcogt_cli.py: the CLI reference from build_parser()
]
exclude_patterns = ["_build", "**.ipynb_checkpoints"]
templates_path: list[str] = []
root_doc = "index"
default_role = "obj"  # `name` in prose is a cross-reference, as in astropy's documentation
highlight_language = "python3"
pygments_style = "default"

# -- API reference (sphinx-automodapi) ----------------------------------------------------------
automodapi_toctreedirnm = "api"  # generated stub pages: docs/api/ (not under version control)
automodapi_inheritance_diagram = False  # needs graphviz's `dot`; not installed on CI machines
automodsumm_inherited_members = False
autodoc_typehints = "signature"
autodoc_member_order = "bysource"
autoclass_content = "class"

# -- doctest ------------------------------------------------------------------------------------
# the examples in the pages run (``-b doctest``); floats are printed rounded where they could
# differ in the last digit between platforms
doctest_global_setup = """
import numpy as np
np.set_printoptions(legacy=False)
"""
trim_doctest_flags = True

# -- HTML ---------------------------------------------------------------------------------------
html_theme = "pydata_sphinx_theme"
html_title = f"pylcogt {release}"
html_static_path: list[str] = []
html_last_updated_fmt = None
html_show_sourcelink = False
html_copy_source = False
html_theme_options = {
    # everything the theme shows comes from its own bundled files: no icon links to external
    # services, no analytics, no version switcher JSON fetched at run time
    "icon_links": [],
    "navigation_with_keys": False,
    "show_toc_level": 2,
    "navbar_align": "left",
    "secondary_sidebar_items": ["page-toc"],
    "footer_start": ["copyright"],
    "footer_end": ["sphinx-version"],
}
html_sidebars = {"**": ["sidebar-nav-bs"]}
html_context = {"default_mode": "light"}
