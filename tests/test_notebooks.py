"""The notebooks: each committed one is exactly what `make notebooks` writes from its lesson; each
reads in order (a heading, its prose, its code, the steps of main() that belong there, the next
heading), which the generator enforces and these tests check on every lesson and on small fake
ones; and each runs top to bottom in a real Jupyter kernel, with every figure the lesson wrote
shown inline under the cell that drew it and the summary table under the last step."""

import ast
import base64
import collections
import importlib.util
import json
import os
import re
import sys
import textwrap

import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient

from conftest import LESSONS, ROOT, TINY_ARGS

KERNEL = "autoencoders-tests"
CELL_TIMEOUT_S = 300


def load_generator():
    spec = importlib.util.spec_from_file_location("make_notebooks",
                                                  ROOT / "scripts" / "make_notebooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


generator = load_generator()


def test_every_lesson_has_a_notebook():
    assert sorted(generator.LESSONS) == sorted(LESSONS)
    assert sorted(p.stem for p in (ROOT / "notebooks").glob("*.ipynb")) == sorted(LESSONS)


@pytest.mark.parametrize("lesson", LESSONS)
def test_committed_notebook_is_generated_from_the_lesson(lesson):
    path = generator.notebook_path(lesson)
    assert path.read_text() == generator.notebook_text(lesson), (
        f"{path.relative_to(ROOT)} differs from its lesson: run `make notebooks`")
    notebook = nbformat.reads(path.read_text(), as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert all(not cell.outputs and cell.execution_count is None for cell in code)
    parameters = [cell for cell in code if "parameters" in cell.metadata.get("tags", [])]
    assert len(parameters) == 1 and parameters[0].source.endswith("ARGS = []")
    assert not any("__main__" in cell.source for cell in code)


# -- Every lesson's notebook reads in order ------------------------------------------------------

def cells_of(lesson):
    """[(kind, source)] of the lesson's notebook; the generator refuses a lesson out of shape."""
    return generator.lesson_cells(generator.lesson_path(lesson))


def is_heading(cell):
    return cell[0] == "markdown" and cell[1].startswith("## ")


def lesson_functions(tree):
    return {node.name for node in tree.body if isinstance(
        node, (ast.FunctionDef, ast.ClassDef)) and node.name != "main"}


def main_of(tree):
    return next(node for node in tree.body
                if isinstance(node, ast.FunctionDef) and node.name == "main")


def calls_in_order(source, names):
    """The names among `names` that `source` calls, in source order, per statement."""
    return [[name for *_, name in sorted(
        (node.lineno, node.col_offset, node.func.id) for node in ast.walk(statement)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
        and node.func.id in names)] for statement in ast.parse(source).body]


@pytest.mark.parametrize("lesson", LESSONS)
def test_no_two_markdown_cells_in_a_row(lesson):
    kinds = [kind for kind, _ in cells_of(lesson)]
    assert not [i for i in range(len(kinds) - 1) if kinds[i] == kinds[i + 1] == "markdown"]
    assert kinds[0] == "markdown" and kinds[-1] != "markdown"


@pytest.mark.parametrize("lesson", LESSONS)
def test_every_heading_has_code_under_it(lesson):
    cells = cells_of(lesson)
    for cell, after in zip(cells, cells[1:] + [("end", "")]):
        if is_heading(cell):
            assert after[0] in ("code", "step"), f"nothing under {cell[1].splitlines()[0]!r}"


@pytest.mark.parametrize("lesson", LESSONS)
def test_title_cell(lesson):
    title = cells_of(lesson)[0][1]
    assert title.startswith("# ") and "\n```bash\npython " in title
    assert re.search(r"^\$\$ .+ \$\$$", title, re.MULTILINE), "no displayed equation"


@pytest.mark.parametrize("lesson", LESSONS)
def test_each_step_sits_under_the_section_that_defines_what_it_calls(lesson):
    """Each statement of main() that calls a lesson function sits at the end of the section that
    defines the first one it calls, below every lesson function it calls (so it also runs)."""
    cells = cells_of(lesson)
    names = lesson_functions(ast.parse(generator.lesson_path(lesson).read_text()))
    section, defined_in, headings = 0, {}, ["(before the first heading)"]
    for i, (kind, source) in enumerate(cells):
        if is_heading((kind, source)):
            section += 1
            headings.append(source.splitlines()[0])
        elif kind == "code":
            for node in ast.parse(source).body:
                if getattr(node, "name", None) in names:
                    defined_in[node.name] = (i, section)
        elif kind == "step":
            assert all(kind != "step" for kind, _ in cells[i + 1:i + 2])  # steps: one cell
            for called in calls_in_order(source, names):
                assert all(defined_in.get(name, (len(cells),))[0] < i for name in called), (
                    f"{called} not all defined above the step that calls them")
                if called:
                    assert defined_in[called[0]][1] == section, (
                        f"a step calling {called[0]} sits under {headings[section]!r}, not "
                        f"under {headings[defined_in[called[0]][1]]!r}: order main() as the "
                        f"sections")


@pytest.mark.parametrize("lesson", LESSONS)
def test_the_preamble(lesson):
    """Set-up, parameters, the imports and constants in one cell, parse_args, then its step."""
    kinds, sources = zip(*cells_of(lesson)[1:6])
    assert kinds == ("setup", "parameters", "code", "code", "step")
    assert all(isinstance(node, (ast.Import, ast.ImportFrom, ast.Assign, ast.AnnAssign))
               for node in ast.parse(sources[2]).body)
    assert "def parse_args(" in sources[3]
    assert sources[4].startswith("args = parse_args(ARGS)")


@pytest.mark.parametrize("lesson", LESSONS)
def test_setup_cell_is_short_and_fakes_nothing(lesson):
    setup = cells_of(lesson)[1][1]
    assert len([line for line in setup.splitlines() if line.strip()]) <= 12
    assigned = {target.id for node in ast.walk(ast.parse(setup)) if isinstance(node, ast.Assign)
                for target in node.targets if isinstance(target, ast.Name)}
    assert not assigned & {"__file__", "__doc__"}


@pytest.mark.parametrize("lesson", LESSONS)
def test_every_line_of_main_appears_once(lesson):
    """The steps, cell after cell, are main()'s body in its order (argv read as ARGS), and no line
    of it is in the notebook more often than in the lesson."""
    source = generator.lesson_path(lesson).read_text()
    lines, tree, cells = source.splitlines(), ast.parse(source), cells_of(lesson)
    main = main_of(tree)
    body = textwrap.dedent("\n".join(lines[main.body[0].lineno - 1:main.end_lineno]))
    body_lines = [re.sub(r"\bargv\b", "ARGS", line).strip()
                  for line in body.splitlines() if line.strip()]
    steps = [line.strip() for kind, text in cells if kind == "step"
             for line in text.splitlines() if line.strip()]
    assert steps == body_lines
    ends = {node.lineno - 1: node.end_lineno for node in tree.body if node is main or (
        isinstance(node, ast.If) and "__main__" in ast.unparse(node.test))}
    outside = collections.Counter(line.strip() for i, line in enumerate(lines)
                                  if not any(start <= i < end for start, end in ends.items()))
    shown = collections.Counter(line.strip() for kind, text in cells if kind != "markdown"
                                for line in text.splitlines())
    for line in set(body_lines):
        assert shown[line] == body_lines.count(line) + outside[line], line


def test_setup_cell_moves_to_the_repository_or_says_why_not(tmp_path, monkeypatch):
    setup = cells_of("VariationalAutoEncoder_tf2")[1][1]
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.chdir(ROOT / "notebooks")
    exec(setup, {})
    assert os.getcwd() == str(ROOT) and sys.path[0] == str(ROOT)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(Exception) as raised:
        exec(setup, {})
    shown = raised.value._render_traceback_()  # what IPython prints instead of a traceback
    assert shown == [str(raised.value)] and "VariationalAutoEncoder_tf2.py" in shown[0]


# -- The generator refuses a lesson out of shape -------------------------------------------------

FAKE = '''\
"""A fake lesson.

    $$ y = W x $$

    python Fake.py
"""

import common
from common import data, outputs

SCRIPT_NAME = "Fake"


def parse_args(argv=None):
    return argv


def main(argv=None):
    args = parse_args(argv)
    dataset = data.load_dataset(args)
    run = outputs.start(args, SCRIPT_NAME, dataset)
    model = build(args)
    print(model)
    report(model, run)


# -- Data: what it reads -------------------------------------------------------------------------
# Where the digits come from.


# -- Model: a linear map ---------------------------------------------------------------------------
# $$ y = W x $$
# Why a model.

def build(args):
    return args


# -- Report --------------------------------------------------------------------------------------

def report(model, run):
    run.finish(model)


if __name__ == "__main__":
    main()
'''


def fake_lesson(folder, source=FAKE):
    path = folder / "Fake.py"
    path.write_text(source)
    return path


def test_a_fake_lesson_reads_in_order(tmp_path):
    cells = generator.lesson_cells(fake_lesson(tmp_path))
    assert [(kind, source.splitlines()[0]) for kind, source in cells[3:]] == [
        ("code", "import common"), ("code", "def parse_args(argv=None):"),
        ("step", "args = parse_args(ARGS)"),
        ("markdown", "## Data: what it reads"),
        ("step", "dataset = data.load_dataset(args)"),
        ("markdown", "## Model: a linear map"), ("code", "def build(args):"),
        ("step", "model = build(args)"),
        ("markdown", "## Report"), ("code", "def report(model, run):"),
        ("step", "report(model, run)")]
    assert cells[0][1].startswith("# A fake lesson\n\n$$ y = W x $$\n\n```bash\npython Fake.py")
    assert cells[7][1] == ("dataset = data.load_dataset(args)\n"
                           "run = outputs.start(args, SCRIPT_NAME, dataset)")
    assert cells[8][1] == "## Model: a linear map\n\n$$ y = W x $$\n\nWhy a model."
    assert cells[10][1] == "model = build(args)\nprint(model)"  # a step calling none joins


def test_a_heading_with_nothing_under_it_is_refused(tmp_path):
    source = FAKE.replace("# -- Report", "# -- Notes: nothing here ---\n# Words.\n\n\n# -- Report")
    with pytest.raises(generator.LessonShapeError, match="Fake.py: .*Notes: nothing here"):
        generator.lesson_cells(fake_lesson(tmp_path, source))


def test_a_step_before_its_section_leaves_a_heading_empty_and_is_refused(tmp_path):
    source = FAKE.replace("    model = build(args)\n    print(model)\n", "").replace(
        "    dataset = data.load_dataset(args)\n",
        "    model = build(args)\n    dataset = data.load_dataset(args)\n")
    with pytest.raises(generator.LessonShapeError, match="Fake.py: .*Data: what it reads"):
        generator.lesson_cells(fake_lesson(tmp_path, source))


def test_main_is_never_reordered(tmp_path):
    """A step whose section comes before the step above it is placed with that step."""
    source = FAKE.replace("    model = build(args)\n    print(model)\n    report(model, run)",
                          "    report(args, run)\n    model = build(args)")
    steps = [source for kind, source in generator.lesson_cells(fake_lesson(tmp_path, source))
             if kind == "step"]
    assert steps[-1] == "report(args, run)\nmodel = build(args)"


def test_make_notebooks_refuses_in_one_line_and_writes_the_others(tmp_path, monkeypatch, capsys):
    fake_lesson(tmp_path)
    (tmp_path / "Empty.py").write_text(FAKE.replace("def build(args):\n    return args\n", "")
                                       .replace("model = build(args)", "model = args"))
    monkeypatch.setattr(generator, "ROOT", tmp_path)
    monkeypatch.setattr(generator, "NOTEBOOKS", tmp_path / "notebooks")
    monkeypatch.setattr(generator, "LESSONS", ("Fake", "Empty"))
    assert generator.main([]) == 1
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "Empty.py" in error and "Model: a linear map" in error
    assert [path.name for path in (tmp_path / "notebooks").iterdir()] == ["Fake.ipynb"]
    written = (tmp_path / "notebooks" / "Fake.ipynb").read_text()
    assert generator.main([]) == 1  # still refused; Fake's notebook regenerated byte for byte
    assert (tmp_path / "notebooks" / "Fake.ipynb").read_text() == written
    (tmp_path / "Empty.py").unlink()
    monkeypatch.setattr(generator, "LESSONS", ("Fake",))
    assert generator.main(["--check"]) == 0
    (tmp_path / "Fake.py").write_text(FAKE.replace("Why a model.", "Why this model."))
    assert generator.main(["--check"]) == 1
    assert "notebooks/Fake.ipynb" in capsys.readouterr().err


@pytest.fixture(scope="module")
def kernel_specs(tmp_path_factory):
    """A kernelspec that runs this interpreter (the .venv's python), offline."""
    folder = tmp_path_factory.mktemp("kernels")
    (folder / KERNEL).mkdir()
    (folder / KERNEL / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "autoencoders (tests)", "language": "python",
        "env": {"AUTOENCODERS_OFFLINE": "1"}}))
    return KernelSpecManager(kernel_dirs=[str(folder)])


def shown_pngs(notebook):
    return [base64.b64decode(output.data["image/png"])
            for cell in notebook.cells if cell.cell_type == "code"
            for output in cell.outputs if "image/png" in output.get("data", {})]


def text_of(cell):
    return "".join(output.get("text", "") + output.get("data", {}).get("text/plain", "")
                   for output in cell.outputs)


@pytest.mark.parametrize("lesson", LESSONS)
def test_notebook_runs_in_a_kernel(lesson, kernel_specs, small_mnist_npz, tmp_path):
    notebook = nbformat.read(generator.notebook_path(lesson), as_version=4)
    args = [*TINY_ARGS[lesson], "--data", str(small_mnist_npz), "--limit", "256",
            "--epochs", "1", "--out", str(tmp_path)]
    for cell in notebook.cells:
        if "parameters" in cell.metadata.get("tags", []):
            cell.source = f"ARGS = {args!r}"
    kernel = KernelManager(kernel_name=KERNEL, kernel_spec_manager=kernel_specs)
    # Jupyter starts a notebook's kernel in the notebook's folder; the set-up cell moves to
    # the repository root from there.
    NotebookClient(notebook, km=kernel, timeout=CELL_TIMEOUT_S,
                   resources={"metadata": {"path": str(ROOT / "notebooks")}}).execute()

    written = {path.name: path.read_bytes()
               for path in sorted((tmp_path / "figures").rglob("*.png"))}
    assert written, "the lesson wrote no figure"
    shown = shown_pngs(notebook)
    missing = [name for name, png in written.items() if png not in shown]
    assert not missing, f"figures written but not shown inline: {missing}"

    steps = {cell.source: cell for cell in notebook.cells if cell.cell_type == "code"}
    summary = [cell for source, cell in steps.items() if source.startswith("print_summary(")]
    assert len(summary) == 1 and f"{lesson} on " in text_of(summary[0]), "no summary table"
    for source, cell in steps.items():
        if source.endswith(".summary()"):
            assert "Total params" in text_of(cell), f"no model summary under {source}"


def test_in_a_kernel_refusals_are_one_line_and_a_failed_cell_ends_the_run(
        kernel_specs, small_mnist_npz, tmp_path):
    """What a notebook shows under a refused step, and who holds the lesson's folder after a
    cell fails: the line alone (no traceback, no SystemExit), and nobody."""
    from common import outputs
    from common.errors import UsageError

    lock, out = tmp_path / "checkpoints" / "VariationalAutoEncoder_tf2.lock", tmp_path
    (tmp_path / "checkpoints").mkdir()
    start = (f"args = lesson.parse_args(['--data', {str(small_mnist_npz)!r}, '--out', "
             f"{str(out)!r}, '--limit', '64'])\n"
             "run = outputs.start(args, lesson.SCRIPT_NAME, data.load_dataset(None, args.data))")
    sources = [f"import os, sys\nos.chdir({str(ROOT)!r})\nsys.path.insert(0, {str(ROOT)!r})\n"
               "import VariationalAutoEncoder_tf2 as lesson\nfrom common import data, outputs",
               "lesson.parse_args(['--epochs', '0'])", start, start, "raise KeyboardInterrupt"]
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(s) for s in sources])
    client = NotebookClient(notebook, km=KernelManager(kernel_name=KERNEL,
                                                       kernel_spec_manager=kernel_specs),
                            timeout=CELL_TIMEOUT_S, allow_errors=True)

    def error_of(index):
        client.execute_cell(notebook.cells[index], index)
        errors = [o for o in notebook.cells[index].outputs if o.output_type == "error"]
        return errors[0] if errors else None

    with client.setup_kernel():
        assert error_of(0) is None
        refused = error_of(1)
        assert refused.ename == "UsageError" and refused.traceback == [
            "error: argument --epochs: must be a positive integer, got '0' (see --help)"]
        assert not any(o.get("name") == "stderr" for o in notebook.cells[1].outputs)
        outputs.take_lock(lock, out)  # this process holds the folder: the kernel is refused
        try:
            refused = error_of(2)
        finally:
            outputs.release()
        assert len(refused.traceback) == 1
        assert refused.traceback[0].startswith("error: another run of this lesson (process ")
        assert error_of(3) is None  # the kernel's run now holds the folder...
        with pytest.raises(UsageError):
            outputs.take_lock(lock, out)
        assert error_of(4).ename == "KeyboardInterrupt"
        outputs.take_lock(lock, out)  # ...until a cell fails: then it is free
        outputs.release()


def section_texts(source):
    """Each section's comment block in a lesson (its rule, equation and prose), as words, read
    from the source here, independently of the generator."""
    blocks, block = [], None
    for line in source.splitlines():
        if line.startswith("# -- "):
            block = [line[5:].rstrip("- ")]
            blocks.append(block)
        elif block is not None and line.startswith("#"):
            block.append(line[1:].strip())
        else:
            block = None
    return [" ".join(" ".join(block).split()) for block in blocks]


@pytest.mark.parametrize("lesson", LESSONS)
def test_the_committed_notebook_holds_every_section_of_the_lesson_in_words(lesson):
    source = (ROOT / f"{lesson}.py").read_text()
    notebook = nbformat.read(generator.notebook_path(lesson), as_version=4)
    words = " ".join(" ".join(cell.source.replace("## ", "").split())
                     for cell in notebook.cells if cell.cell_type == "markdown")
    sections = section_texts(source)
    assert len(sections) >= 5
    missing = [text[:60] for text in sections if text not in words]
    assert not missing, f"sections whose text is not in the notebook: {missing}"
