"""The latent explorers of the VAE and CVAE chapters. The directive

    ```{latent-explorer} vae
    ```

places one on a page: the test digits' codes as a plane to click or drag on, and beside it the
digit that the lesson's trained decoder makes of the point, decoded in the reader's browser by
ONNX Runtime Web (the page's script is _static/explorer.js). Its data, decoder.onnx and
explorer.json, come from scripts/build_explorer.py (`make site` runs it) in
`explorer_data`/<name>/; ONNX Runtime Web comes from `explorer_ort`, the npm package's dist/
folder (`make site` installs it with npm ci). When the build is done, both are copied into the
site's _static/explorer/, so that the page asks no other host for anything. Where either is
missing, the directive writes a note that says how to get the explorer, and the build goes on.
"""

import pathlib
import shutil

from docutils import nodes
from sphinx.util.docutils import SphinxDirective

# ONNX Runtime Web's ES module for its WebAssembly backend, and the two files it loads: the
# WebAssembly runtime (one build serves one thread or several) and its JavaScript glue.
ORT_FILES = ("ort.wasm.min.mjs", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm")
DATA_FILES = ("decoder.onnx", "explorer.json")
LESSONS = {"vae": "vae", "cvae": "cvae"}  # the explorer's name -> its lesson's make target


def _data(config, name):
    return pathlib.Path(config.explorer_data) / name


def _missing(config, name):
    """What keeps the explorer `name` out of this build, as (text, command, text), or None."""
    if not all((_data(config, name) / file).is_file() for file in DATA_FILES):
        return ("The latent explorer goes here, but this build of the book has no data for it: ",
                "make site", " makes them from the lesson's trained models in models/ (make "
                f"{LESSONS[name]} writes them), and trains the lesson first where there are "
                "none; a model with a 1-D latent space has no explorer.")
    if not all((pathlib.Path(config.explorer_ort) / file).is_file() for file in ORT_FILES):
        return ("The latent explorer goes here, but ONNX Runtime Web, which runs its decoder in "
                "the page, is not installed: ", "make site", " installs it with npm ci in book/ "
                "(it needs Node.js and npm).")
    return None


class LatentExplorer(SphinxDirective):
    """```{latent-explorer} NAME```: the explorer of scripts/build_explorer.py's NAME/."""

    required_arguments = 1

    def run(self):
        name = self.arguments[0]
        if name not in LESSONS:
            raise self.error(f"latent-explorer: no explorer {name!r}; there are "
                             f"{', '.join(LESSONS)}")
        missing = _missing(self.config, name)
        if missing:
            before, command, after = missing
            note = nodes.note()
            note += nodes.paragraph("", "", nodes.Text(before),
                                    nodes.literal(command, command), nodes.Text(after))
            return [note]
        static = "../" * self.env.docname.count("/") + "_static"
        html = (f'<div class="latent-explorer" data-explorer="{static}/explorer/{name}/">'
                "<p>The explorer needs JavaScript, and starts in a moment.</p></div>\n"
                f'<script type="module" src="{static}/explorer.js"></script>\n')
        return [nodes.raw("", html, format="html")]


def _copy_into_the_site(app, exception):
    """ONNX Runtime Web and every explorer's data, into the built site's _static/explorer/."""
    if exception is not None or app.builder.format != "html":
        return
    target = pathlib.Path(app.outdir) / "_static" / "explorer"
    shutil.rmtree(target, ignore_errors=True)
    explorers = [name for name in LESSONS if not _missing(app.config, name)]
    if not explorers:
        return
    (target / "ort").mkdir(parents=True)
    for file in ORT_FILES:
        shutil.copy2(pathlib.Path(app.config.explorer_ort) / file, target / "ort" / file)
    for name in explorers:
        (target / name).mkdir()
        for file in DATA_FILES:
            shutil.copy2(_data(app.config, name) / file, target / name / file)


def setup(app):
    app.add_config_value("explorer_data", "", "env")
    app.add_config_value("explorer_ort", "", "env")
    app.add_directive("latent-explorer", LatentExplorer)
    app.connect("build-finished", _copy_into_the_site)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
