"""Sphinx configuration of the book: `make site` builds it into site/, with no network.

The pages are MyST Markdown. Code is included from the lesson scripts at build time
(`literalinclude` with `:pyobject:`), figures from figures/; the scripts, notebooks and results
are copied in as downloads (`{download}`). MathJax is the copy that the sphinx-mathjax-offline
package bundles, served from _static/mathjax/. The theme bundles its own fonts and scripts, so a
page asks no host but its own for anything. Every measured number on a page is read from
results/*.json as the book builds: {result}`VariationalAutoEncoder_tf2.train_seconds:.1f` (the
extension _ext/results.py, whose docstring gives the syntax). The VAE and CVAE chapters hold a
latent explorer, their decoder run in the page by ONNX Runtime Web (_ext/explorer.py).
"""

import os
import sys
from pathlib import Path

BOOK = Path(__file__).resolve().parent
sys.path.insert(0, str(BOOK / "_ext"))

project = "Autoencoders in Keras 3"
author = "the autoencoders suite"
copyright = "the autoencoders suite"

extensions = [
    "myst_parser",
    "sphinx-mathjax-offline",  # sets mathjax_path to its bundled MathJax 3 and copies it
    "results",  # _ext/results.py: the role {result}`File.key:format`, from results/*.json
    "explorer",  # _ext/explorer.py: the directive {latent-explorer}, a decoder run in the page
    "bench_table",  # _ext/bench_table.py: the directive {bench-table}, from results/bench.json
]
results_dir = str(BOOK.parent / "results")  # every *.json in it, loaded when the build starts
# What the latent explorers need: the data scripts/build_explorer.py writes (`make site` runs
# it), and ONNX Runtime Web, which `make site` installs from npm into book/node_modules.
explorer_data = os.environ.get("AUTOENCODERS_EXPLORER_DATA",
                               str(BOOK.parent / "build" / "explorer"))
explorer_ort = str(BOOK / "node_modules" / "onnxruntime-web" / "dist")

myst_enable_extensions = [
    "dollarmath",  # $...$ and $$...$$
    "amsmath",     # \begin{aligned} ... blocks
    "colon_fence",
]
myst_heading_anchors = 3
# The theme's own Markdown: only the book's pages, not the README or the notebooks.
source_suffix = {".md": "markdown"}
exclude_patterns = ["_build", "node_modules"]  # node_modules: ONNX Runtime Web's package

html_theme = "sphinx_book_theme"
html_title = project
html_static_path = ["_static"]
html_css_files = ["book.css"]
# The theme's colour mode when the reader has not picked one: without it the theme's script
# reads an empty mode on a first visit and logs "Got invalid theme mode" as a console error.
html_context = {"default_mode": "auto"}
html_favicon = "_static/favicon.png"  # a digit the VAE drew, from figures/vae_samples.png
html_theme_options = {
    "show_toc_level": 2,
    "home_page_in_toc": True,
    "use_download_button": False,
    "use_fullscreen_button": False,
    "use_repository_button": False,
}
html_last_updated_fmt = None
html_copy_source = False
html_show_sourcelink = False

# MathJax 3 in the page: no menu (it would offer to load more from a CDN), no assistive
# extensions loaded on demand.
mathjax3_config = {
    "options": {"enableMenu": False},
    "loader": {"load": []},
}


def _search_page_typesets_math(app, pagename, templatename, context, doctree):
    r"""MathJax on the search page too, with _static/search-math.js: a result's summary quotes
    its page's text, math included, which is then typeset as on the page, not shown as raw \( \).
    Runs before sphinx.ext.mathjax's handler, which loads MathJax only where a page has math."""
    if pagename == "search":
        context["has_maths_elements"] = True
        app.add_js_file("search-math.js", loading_method="defer")


def setup(app):
    app.connect("html-page-context", _search_page_typesets_math, priority=400)
