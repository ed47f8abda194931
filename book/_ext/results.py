"""The book's measured numbers, read from results/*.json when the book builds.

{result}`VariationalAutoEncoder_tf2.train_seconds:.1f` in a page becomes the value at that path of
results/VariationalAutoEncoder_tf2.json, in the Python format after the colon (`.2f`, `,` for
thousands, `.1%`, `+.2f`; none: as it is). A path is the file's name, then keys and list indices:
`AutoEncoder.models.deep.parameters`, `StackedDenoisingAutoEncoder.psnr_vs_noise.0.noise_factor`.
A derived number is an expression of paths with `+ - * / **` and FUNCTIONS:
{result}`X.a / X.b - 1:.1%`, {result}`median(X.epoch_seconds):.2f`. One that does not resolve is
an error naming the page, the line and the key, which fails the build (`make site`, with -W).
"""

import json
import math
import re
import statistics
from pathlib import Path

from docutils import nodes

PATH = re.compile(r"(?<![\w.])[A-Za-z_]\w*(?:\.\w+)+")  # a file's name, then keys: no digit first
ROLE = re.compile(r"\{result\}`([^`]*)`")
FUNCTIONS = {
    "log": math.log, "min": min, "max": max, "round": round, "median": statistics.median,
    # the index of the first value at most `bound`: the epoch at which a loss curve reaches it
    "first_at_most": lambda values, bound: next(i for i, v in enumerate(values) if v <= bound),
}


class ResultError(Exception):
    """A reference that does not resolve to a value, or a value its format does not fit."""


def load_results(folder):
    """{file name without .json: its contents} for every results file in the folder."""
    return {path.stem: json.loads(path.read_text()) for path in sorted(Path(folder).glob("*.json"))}


def lookup(path, results):
    """The value at a dotted path: `AutoEncoder.models.deep.parameters`."""
    name, *keys = path.split(".")
    if name not in results:
        raise ResultError(f"there is no results/{name}.json")
    value = results[name]
    for depth, key in enumerate(keys, 1):
        try:
            value = value[int(key)] if isinstance(value, list) else value[key]
        except (KeyError, IndexError, ValueError, TypeError):
            raise ResultError(f"results/{name}.json has no {'.'.join(keys[:depth])}") from None
    return value


def render(reference, results):
    """The text of one reference, `expression:format`: `ConditionalVAE.train_seconds:.1f`."""
    expression, _, spec = reference.partition(":")
    values = {}

    def name(match):  # each path becomes a variable _0, _1, ... holding its value
        values[f"_{len(values)}"] = lookup(match.group(), results)
        return f"_{len(values) - 1}"

    code = PATH.sub(name, expression.strip())
    try:
        return format(eval(code, {"__builtins__": {}, **FUNCTIONS, **values}), spec)
    except Exception as error:  # an unknown name, a division by zero, a null, a bad format
        raise ResultError(f"cannot compute {expression.strip()!r} as {spec!r}: {error}") from None


def render_markdown(text, results):
    """A page's Markdown with every {result} reference replaced by its text (for the tests)."""
    return ROLE.sub(lambda match: render(match.group(1), results), text)


def result_role(name, rawtext, text, lineno, inliner, options=None, content=()):
    env = inliner.document.settings.env
    for path in Path(env.config.results_dir).glob("*.json"):
        env.note_dependency(str(path))  # a changed result rebuilds the pages that quote results
    try:
        return [nodes.Text(render(text, env.book_results))], []
    except ResultError as error:
        message = inliner.reporter.error(f"{{result}}`{text}`: {error}", line=lineno)
        return [inliner.problematic(rawtext, rawtext, message)], [message]


def setup(app):
    app.add_config_value("results_dir", "results", "env")  # conf.py gives the absolute path
    app.add_role("result", result_role)
    app.connect("builder-inited",
                lambda app: setattr(app.env, "book_results", load_results(app.config.results_dir)))
    return {"parallel_read_safe": True, "parallel_write_safe": True}
