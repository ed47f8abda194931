"""Write notebooks/<Lesson>.ipynb for every lesson, from the lesson's own source.

The lesson's .py stays the one file anyone edits; its notebook is generated from it, as the
keras.io examples are, and committed without outputs:

    python scripts/make_notebooks.py           # or `make notebooks`: write them all
    python scripts/make_notebooks.py --check   # exit 1, naming them, if any is out of date

A notebook reads like a page, in the lesson's order:
- the docstring as its title cell (the `$$ ... $$` block as display math, the commands as bash);
- a set-up cell that runs from the repository root; a cell tagged `parameters`, `ARGS = []`;
- the imports and constants in one cell, `parse_args`, then the step `args = parse_args(ARGS)`;
- for each section rule `# -- Title ---`: its heading, equation and why as one markdown cell,
  the section's definitions, then the steps of `main()` that belong there. A step belongs at the
  end of the section that defines the first lesson function it calls; a step calling none joins
  the step before it (the first section, for those before the first such call); a step is never
  placed before the step above it in main(), so main() is never reordered.
The `if __name__ == "__main__"` block is left out. A lesson whose notebook would have a heading
with no code under it is refused, naming the heading: its author must fix the lesson.
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
           "StackedDenoisingAutoEncoder", "SparseAutoEncoder", "ContractiveAutoEncoder",
           "MaskedAutoEncoder", "VQVAE")
RULE = re.compile(r"^# -- (?P<title>.*?) -*$")
METADATA = {  # the same in every notebook, so that regenerating one is byte-identical
    "kernelspec": {"display_name": "Python 3 (ipykernel)", "language": "python",
                   "name": "python3"},
    "language_info": {"name": "python"},
}

SETUP = '''\
# Set-up: run from the repository root, as the script does (Jupyter starts in notebooks/).
import os
import pathlib
import sys

LESSON = "{lesson}"
REPOSITORY = next((folder for folder in (pathlib.Path.cwd(), *pathlib.Path.cwd().parents)
                   if (folder / "common").is_dir() and (folder / LESSON).is_file()), None)
if REPOSITORY is None:  # IPython prints this one line, with no traceback
    raise type("NotInTheRepository", (Exception,), {{"_render_traceback_": lambda e: [str(e)]}})(
        f"{{LESSON}} and common/ are not here: open this notebook in the repository")
os.chdir(REPOSITORY)
sys.path.insert(0, str(REPOSITORY))'''

PARAMETERS = '''\
# The lesson's command-line flags, as a list: `python {lesson} --help`
# lists them. E.g. ARGS = ["--epochs", "5"]; the first step reads them with parse_args(ARGS).
ARGS = []'''

GENERATED = ("*Generated from [`{lesson}`](../{lesson}) by `scripts/make_notebooks.py` "
             "(`make notebooks`): edit the script, not this notebook.*")


class LessonShapeError(Exception):
    """A lesson whose notebook would not read in order; the message names the lesson."""


# -- Markdown from the docstring and the rules ----------------------------------------------------

def split_math(lines):
    """([each `$$ ... $$` span among `lines`, as one line of markdown], [the other lines]); a
    span may run over several lines."""
    spans, others, current = [], [], None
    for line in lines:
        text = line.strip()
        if current is None and not text.startswith("$$"):
            others.append(line)
            continue
        current = (current or []) + [text]
        if text.endswith("$$") and (len(current) > 1 or len(text) > 2):
            spans.append(" ".join(current))  # one line: no markdown (a "- " list) inside
            current = None
    return spans, others


def fenced(lines, language):
    return "\n".join([f"```{language}", *textwrap.dedent("\n".join(lines)).splitlines(), "```"])


def prose(lines):
    """Comment text (the `# ` taken off) as markdown paragraphs; indented runs as code blocks."""
    parts, text, code = [], [], []
    for line in lines + [""]:
        if line.startswith(" ") and line.strip():
            code.append(line)
            continue
        if code:
            parts += (["\n".join(text)] if text else []) + [fenced(code, "text")]
            text, code = [], []
        if line.strip():
            text.append(line)
    return parts + (["\n".join(text)] if text else [])


def title_markdown(docstring, lesson):
    """The title cell: the first line as `# Title`, paragraphs as text, an indented `$$` block
    as display math, the indented commands as a bash block (indented Python, as a python one)."""
    title, _, rest = docstring.strip().partition("\n")
    parts = [f"# {title.strip().rstrip('.')}"]
    for paragraph in re.split(r"\n\s*\n", rest.strip("\n")):
        lines = paragraph.splitlines()
        if not all(line.startswith("    ") for line in lines):
            parts.append(paragraph.strip())
        elif any("$$" in line for line in lines):
            parts.extend(split_math(lines)[0])
        else:  # commands, or Python code that starts with an import
            python = lines[0].lstrip().startswith(("import ", "from "))
            parts.append(fenced(lines, "python" if python else "bash"))
    parts.append(GENERATED.format(lesson=lesson))
    return "\n\n".join(parts)


def section_markdown(block):
    """A rule and the comments under it: `## Title`, its `$$` lines as display math, the rest
    as prose."""
    comments = [line[2:] if line.startswith("# ") else line[1:] for line in block[1:]]
    math, why = split_math(comments)
    return "\n\n".join([f"## {RULE.match(block[0]).group('title')}", *math, *prose(why)])


# -- Reading the lesson ---------------------------------------------------------------------------

def is_definition(node):
    return isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))


def with_comments_above(lines, start):
    """`start` (0-based) moved up over the comment lines right above it, unless they are a
    section rule's."""
    top = start
    while top > 0 and lines[top - 1].strip().startswith("#"):
        top -= 1
    return start if RULE.match(lines[top]) else top


def code_of(lines, nodes):
    """The source of consecutive top-level `nodes`, as written, with the decorators and the
    comment lines right above the first."""
    first = min([nodes[0].lineno] + [d.lineno for d in getattr(nodes[0], "decorator_list", [])])
    return "\n".join(lines[with_comments_above(lines, first - 1):nodes[-1].end_lineno])


def first_lesson_call(statement, functions):
    """The name of the lesson function that `statement` calls first in source order, or None."""
    calls = sorted((node.lineno, node.col_offset, node.func.id) for node in ast.walk(statement)
                   if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                   and node.func.id in functions)
    return calls[0][2] if calls else None


def lesson_cells(path):
    """[(kind, source)] of the notebook of the lesson at `path`, in order. kind: "markdown",
    "setup", "parameters", "code" (the lesson's own code) or "step" (steps of main())."""
    path = pathlib.Path(path)
    source = path.read_text()
    lines, tree = source.splitlines(), ast.parse(source)
    rules = [i for i, line in enumerate(lines) if RULE.match(line)]

    def section(node):  # 0 before the first rule, k under the k-th rule
        return sum(rule < node.lineno - 1 for rule in rules)

    # The lesson's code, section by section: each run of consecutive top-level statements one
    # cell (in the preamble, the imports and constants one, the definitions another), main()
    # and the `if __name__ == "__main__"` block left out.
    main = next(node for node in tree.body if is_definition(node) and node.name == "main")
    runs = []
    for before, node in zip(tree.body, tree.body[1:]):  # the docstring is the title cell
        if node is main or isinstance(node, ast.If) and "__main__" in ast.unparse(node.test):
            continue
        if runs and runs[-1][-1] is before and section(before) == section(node) and (
                section(node) or is_definition(before) == is_definition(node)):
            runs[-1].append(node)
        else:
            runs.append([node])
    code = {k: [] for k in range(len(rules) + 1)}
    for run in runs:
        code[section(run[0])].append(code_of(lines, run))

    # main()'s steps: each at the end of the section defining the first lesson function it
    # calls; one calling none joins the step before it (or the first section); none placed
    # before the step above it, so that main()'s order is kept.
    functions = {node.name: section(node) for run in runs for node in run
                 if is_definition(node)}
    steps, place = {k: [] for k in code}, 0
    for statement in main.body:
        called = first_lesson_call(statement, functions)
        place = max(place, functions[called] if called else min(1, len(rules)))
        start = with_comments_above(lines, statement.lineno - 1)
        step = textwrap.dedent("\n".join(lines[start:statement.end_lineno]))
        steps[place].append(re.sub(r"\bargv\b", "ARGS", step))

    cells = [("markdown", title_markdown(ast.get_docstring(tree, clean=False), path.name)),
             ("setup", SETUP.format(lesson=path.name)),
             ("parameters", PARAMETERS.format(lesson=path.name))]
    for k in code:
        if k:
            end = rules[k - 1] + 1
            while end < len(lines) and lines[end].startswith("#"):
                end += 1
            cells.append(("markdown", section_markdown(lines[rules[k - 1]:end])))
        cells += [("code", source) for source in code[k]]
        cells += [("step", "\n".join(steps[k]))] if steps[k] else []
    for (kind, source), (after, _) in zip(cells, cells[1:] + [(None, None)]):
        if kind == "markdown" and after in ("markdown", None):
            raise LessonShapeError(
                f"{path.name}: no code under the heading {source.splitlines()[0]!r}: give its "
                f"section a function of its own, or order main()'s steps as the sections")
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


def build_notebook(path):
    notebook = nbformat.v4.new_notebook(metadata=METADATA)
    taken = set()
    for kind, source in lesson_cells(path):
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


def lesson_path(lesson):
    return ROOT / f"{lesson}.py"


def notebook_path(lesson):
    return NOTEBOOKS / f"{lesson}.ipynb"


def notebook_text(lesson):
    """The notebook of `lesson` exactly as `make notebooks` writes it."""
    return nbformat.writes(build_notebook(lesson_path(lesson))) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 if a notebook differs from its lesson's")
    args = parser.parse_args(argv)
    stale, refused = [], []
    for lesson in LESSONS:
        try:
            text = notebook_text(lesson)
        except LessonShapeError as error:
            refused.append(str(error))
            continue
        path = notebook_path(lesson)
        if path.is_file() and path.read_text() == text:
            continue
        stale.append(str(path.relative_to(ROOT)))
        if not args.check:
            path.parent.mkdir(exist_ok=True)
            path.write_text(text)
            print(f"wrote {path.relative_to(ROOT)}")
    for message in refused:
        print(f"refused: {message}", file=sys.stderr)
    if args.check and stale:
        print("out of date (run `make notebooks`): " + ", ".join(stale), file=sys.stderr)
    return 1 if refused or (args.check and stale) else 0


if __name__ == "__main__":
    sys.exit(main())
