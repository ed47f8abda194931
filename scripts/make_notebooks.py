"""Write notebooks/<Lesson>.ipynb for every lesson, from the lesson's own source.

The lesson's .py stays the one file anyone edits; its notebook is generated from it, as the
keras.io examples are, and committed without outputs:

    python scripts/make_notebooks.py           # or `make notebooks`: write all seven
    python scripts/make_notebooks.py --check   # exit 1, naming them, if any is out of date

A notebook holds, in order: the docstring as its title (the `$$ ... $$` lines as display math,
the plain-text equation they stand for left to the .py); a set-up cell that finds the
repository and runs from its root; a cell tagged `parameters` with `ARGS = []`, the flags that
`parse_args(ARGS)` reads; then the lesson itself: the imports and constants, each section's rule
comment as a markdown cell (its heading, its `$$` equation, its why) above the section's code,
and each statement of `main()` as a cell of its own, placed as soon as every lesson name it
needs (directly, or through the functions it calls) has been defined, so that each step's output
appears under that step. The `if __name__ == "__main__"` block is left out.
"""

import argparse
import ast
import hashlib
import pathlib
import re
import sys
import textwrap

import nbformat

ROOT = pathlib.Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
LESSONS = ("VariationalAutoEncoder_tf2", "ConditionalVAE", "AutoEncoder", "GreedyPretraining",
           "StackedDenoisingAutoEncoder", "SparseAutoEncoder", "ContractiveAutoEncoder")
RULE = re.compile(r"^# -- (?P<title>.*?) -*$")
METADATA = {  # the same in every notebook, so that regenerating one is byte-identical
    "kernelspec": {"display_name": "Python 3 (ipykernel)", "language": "python",
                   "name": "python3"},
    "language_info": {"name": "python"},
}

SETUP = '''\
# Set-up: run from the repository root (Jupyter starts in notebooks/), as the script
# `python {lesson}` does there: `common` then imports, and the outputs
# land where the script's would.
import ast
import os
import pathlib
import sys

LESSON = "{lesson}"
REPOSITORY = next((folder for folder in (pathlib.Path.cwd(), *pathlib.Path.cwd().parents)
                   if (folder / "common").is_dir() and (folder / LESSON).is_file()), None)
if REPOSITORY is None:
    class NotInTheRepository(Exception):
        def _render_traceback_(self):  # IPython prints this one line instead of a traceback
            return [str(self)]

    raise NotInTheRepository(
        f"{{LESSON}} and common/ are not here: clone the repository and open this notebook "
        f"from its notebooks/ folder, or run `python {{LESSON}}` in the repository.")
os.chdir(REPOSITORY)
if str(REPOSITORY) not in sys.path:
    sys.path.insert(0, str(REPOSITORY))
__file__ = str(REPOSITORY / LESSON)  # the lesson's code reads its own path and docstring
__doc__ = ast.get_docstring(ast.parse((REPOSITORY / LESSON).read_text()), clean=False)'''

PARAMETERS = '''\
# The lesson's command-line flags, as a list: `python {lesson} --help`
# lists them. E.g. ARGS = ["--epochs", "5"]; the first step reads them with parse_args(ARGS).
ARGS = []'''

GENERATED = ("*Generated from [`{lesson}`](../{lesson}) by `scripts/make_notebooks.py` "
             "(`make notebooks`): edit the script, not this notebook.*")


# -- Reading the lesson ------------------------------------------------------------------------

def node_start(node):
    """The first line of a top-level statement, its decorators included (1-based)."""
    return min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])


def rule_blocks(lines):
    """{first line: last line} (0-based, inclusive) of every rule and the comments under it."""
    blocks = {}
    for i, line in enumerate(lines):
        if RULE.match(line):
            end = i
            while end + 1 < len(lines) and lines[end + 1].startswith("#"):
                end += 1
            blocks[i] = end
    return blocks


def with_leading_comments(lines, start, floor):
    """Move `start` (0-based) up over the comment lines right above it, not below `floor`."""
    while start - 1 >= floor and lines[start - 1].lstrip().startswith("#"):
        start -= 1
    return start


def defined_names(node):
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return {node.name}
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        return {(a.asname or a.name).split(".")[0] for a in node.names}
    targets = getattr(node, "targets", None) or [getattr(node, "target", None)]
    return {n.id for t in targets if t is not None for n in ast.walk(t)
            if isinstance(n, ast.Name)}


def used_names(node):
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}


def needed(node, definitions):
    """The lesson's top-level names `node` needs, directly or through what those use."""
    seen, todo = set(), list(used_names(node) & definitions.keys())
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(used_names(definitions[name]) & definitions.keys())
    return seen


# -- Markdown from docstrings and comments ---------------------------------------------------

def display_math(lines):
    """The `$$ ... $$` spans among `lines` (a span may run over several lines), each as one
    line of markdown."""
    spans, current = [], None
    for line in lines:
        text = line.strip().lstrip("#").strip()
        if current is None and text.startswith("$$"):
            current = [text]
        elif current is not None:
            current.append(text)
        if current is not None and text.endswith("$$") and (len(current) > 1 or len(text) > 2):
            spans.append(" ".join(current))  # one line: no markdown (a "- " list) inside
            current = None
    return spans


def fenced(lines, language="text"):
    return "\n".join([f"```{language}", *textwrap.dedent("\n".join(lines)).splitlines(), "```"])


def prose(lines):
    """Comment text (the `# ` taken off) as markdown: indented runs become code blocks."""
    parts, text, code = [], [], []
    for line in lines + [""]:
        if line.startswith(" ") and line.strip():
            if text:
                parts.append("\n".join(text))
                text = []
            code.append(line)
            continue
        if code:
            parts.append(fenced(code))
            code = []
        if line.strip():
            text.append(line)
    if text:
        parts.append("\n".join(text))
    return parts


def docstring_markdown(docstring, lesson):
    """The title cell: the first line as the title, the paragraphs as text, an indented
    equation as its `$$` display math, the commands as a code block."""
    title, _, rest = docstring.strip().partition("\n")
    parts = [f"# {title.strip().rstrip('.')}"]
    for paragraph in re.split(r"\n\s*\n", rest.strip("\n")):
        lines = paragraph.splitlines()
        if not all(line.startswith("    ") for line in lines):
            parts.append(paragraph.strip())
        elif any("$$" in line for line in lines):
            parts.extend(display_math(lines))
        else:
            commands = all(line.strip().startswith("python ") for line in lines)
            parts.append(fenced(lines, "bash" if commands else "text"))
    parts.append(GENERATED.format(lesson=f"{lesson}.py"))
    return "\n\n".join(parts)


def section_markdown(block):
    """A rule and the comments under it: the heading, its `$$` equation, then the why."""
    heading = RULE.match(block[0]).group("title")
    comments = [line[2:] if line.startswith("# ") else line[1:] for line in block[1:]]
    math = display_math(comments)
    # The $$ lines sit right under the rule; the rest is the why.
    why, inside = [], False
    for line in comments:
        stripped = line.strip()
        if not inside and stripped.startswith("$$"):
            inside = not (stripped.endswith("$$") and len(stripped) > 2)
        elif inside:
            inside = not stripped.endswith("$$")
        else:
            why.append(line)
    return "\n\n".join([f"## {heading}", *math, *prose(why)])


# -- The notebook ----------------------------------------------------------------------------

def lesson_cells(lesson):
    """[(kind, source)] of the lesson's notebook, in order."""
    path = ROOT / f"{lesson}.py"
    source = path.read_text()
    lines = source.splitlines()
    tree = ast.parse(source)
    docstring = ast.get_docstring(tree, clean=False)
    body = tree.body[1:]  # the docstring is the title cell
    main = next(n for n in body if isinstance(n, ast.FunctionDef) and n.name == "main")
    blocks = rule_blocks(lines)

    # Every top-level statement but main() and the `if __name__` block, with its span of
    # lines; imports join one cell, the constants before the first function another.
    items, floor = [], 0
    for node in body:
        start = node_start(node) - 1
        floor = max([floor] + [last + 1 for last in blocks.values() if last < start])
        start = with_leading_comments(lines, start, floor)
        floor = node.end_lineno
        if node is main or isinstance(node, ast.If):
            continue
        kind = ("imports" if isinstance(node, (ast.Import, ast.ImportFrom)) else
                "constants" if not items or items[-1]["kind"] in ("imports", "constants")
                and not isinstance(node, (ast.FunctionDef, ast.ClassDef)) else "code")
        if items and kind != "code" and items[-1]["kind"] == kind:
            items[-1]["nodes"].append(node)
            items[-1]["end"] = node.end_lineno
            continue
        items.append({"kind": kind, "nodes": [node], "start": start, "end": node.end_lineno})

    definitions = {}
    for item in items:
        for node in item["nodes"]:
            for name in defined_names(node):
                definitions[name] = node
    defined_by = {name: i for i, item in enumerate(items) for node in item["nodes"]
                  for name in defined_names(node)}

    # Each step of main() goes after the last item it needs, and after the step before it.
    steps_after, previous, floor = {}, 0, main.body[0].lineno - 1
    for stmt in main.body:
        start = with_leading_comments(lines, stmt.lineno - 1, floor)
        floor = stmt.end_lineno
        step = textwrap.dedent("\n".join(lines[start:stmt.end_lineno]))
        step = re.sub(r"\bargv\b", "ARGS", step)
        needs = needed(stmt, definitions)
        previous = max([previous] + [defined_by[name] for name in needs])
        steps_after.setdefault(previous, []).append(step)

    cells = [("markdown", docstring_markdown(docstring, lesson)),
             ("setup", SETUP.format(lesson=f"{lesson}.py")),
             ("parameters", PARAMETERS.format(lesson=f"{lesson}.py"))]
    rules = sorted(blocks)
    for i, item in enumerate(items):
        for first in [r for r in rules if r < item["start"]]:
            cells.append(("markdown", section_markdown(lines[first:blocks[first] + 1])))
            rules.remove(first)
        code = "\n".join(lines[item["start"]:item["end"]])
        cells.append(("code", re.sub(r"\n{3,}", "\n\n", code).strip("\n")))
        cells.extend(("code", step) for step in steps_after.get(i, []))
    cells.extend(("markdown", section_markdown(lines[first:blocks[first] + 1]))
                 for first in rules)  # a section after the last code, if a lesson ends so
    return cells


def cell_id(kind, source, taken):
    """A stable id from the cell's content, so regenerating changes only the cells that did."""
    base = hashlib.sha1(f"{kind}\n{source}".encode()).hexdigest()[:12]
    ident, n = base, 1
    while ident in taken:
        n += 1
        ident = f"{base}-{n}"
    taken.add(ident)
    return ident


def build_notebook(lesson):
    notebook = nbformat.v4.new_notebook(metadata=METADATA)
    taken = set()
    for kind, source in lesson_cells(lesson):
        if kind == "markdown":
            cell = nbformat.v4.new_markdown_cell(source)
        else:
            cell = nbformat.v4.new_code_cell(source)
            if kind == "parameters":
                cell.metadata["tags"] = ["parameters"]
        cell.id = cell_id(kind, source, taken)
        notebook.cells.append(cell)
    nbformat.validate(notebook)
    return notebook


def notebook_text(lesson):
    """The notebook of `lesson` exactly as `make notebooks` writes it."""
    return nbformat.writes(build_notebook(lesson)) + "\n"


def notebook_path(lesson):
    return NOTEBOOKS / f"{lesson}.ipynb"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 if a notebook differs from its lesson's")
    args = parser.parse_args(argv)
    stale = []
    for lesson in LESSONS:
        text, path = notebook_text(lesson), notebook_path(lesson)
        current = path.read_text() if path.is_file() else None
        if current == text:
            continue
        stale.append(path.relative_to(ROOT))
        if not args.check:
            path.parent.mkdir(exist_ok=True)
            path.write_text(text)
            print(f"wrote {path.relative_to(ROOT)}")
    if args.check and stale:
        print("out of date (run `make notebooks`): " + ", ".join(map(str, stale)),
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
