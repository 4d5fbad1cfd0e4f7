"""Sphinx configuration of burstio's documentation (docs/, built by scripts/test.sh into
build/docs with warnings as errors): hand-written Markdown pages (MyST) and the API from the
docstrings (autodoc) of the burstio installed in the Python that runs Sphinx (the built
extension is needed to import it: a source tree alone has none). Offline: no intersphinx, no
network."""

project = "burstio"
author = "the burstio authors"
copyright = "the burstio authors"  # noqa: A001 - the name Sphinx reads
extensions = ["myst_parser", "sphinx.ext.autodoc"]
source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build"]
myst_heading_anchors = 3
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_default_options = {"members": True, "undoc-members": False}
html_theme = "alabaster"
html_title = "burstio"
html_static_path: list[str] = []
suppress_warnings = ["myst.header"]
