"""The book's measured numbers come from results/*.json, never from a hand copy.

Each page quotes a result as {result}`File.key:format` (book/_ext/results.py), which the build
replaces by the value in results/File.json. These tests, without building the book, check that
every reference on every page resolves; that no page holds a number that looks measured (a
number with a unit of time, nats, dB, GiB, %, degrees, or a number in a table of results) in its
prose, outside code and equations; that a changed results file changes the page; and, with a
one-page Sphinx build, that a reference to a missing key fails the build naming the page and the
key.
"""

import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BOOK = ROOT / "book"
PAGES = sorted(path for path in BOOK.rglob("*.md") if "_build" not in path.parts)
_spec = importlib.util.spec_from_file_location("book_results", BOOK / "_ext" / "results.py")
book_results = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(book_results)

NUMBER = r"(?<![\w.])\d[\d,]*(?:\.\d+)?"
MEASURED = [  # a number with a unit that only a measurement gives it
    re.compile(NUMBER + r"\s?%"),
    re.compile(NUMBER + r"\s(?:s|ms|min|minutes?|seconds?|hours?|nats|dB|GiB|MiB|MB|degrees"
                        r"|CPU-seconds)\b"),
    re.compile(NUMBER + r"-fold\b"),
    re.compile(r"(?<![\w.])\d+\.\d+\s+times\b"),
]
DECIMAL = re.compile(r"(?<![\w.])\d+\.\d+")
ONLY_A_NUMBER = re.compile(r"[\s*+\-−–(),.%\d]*\d[\s*+\-−–(),.%\d]*")
# Decimals in a table cell that are not measurements (none needed so far): (page name, text).
ALLOWED = set()


def page_name(path):
    return str(path.relative_to(ROOT))


def prose(text):
    """(line number, line) of a page's Markdown outside fenced code, display math and directive
    options, with roles, inline code, inline math and link targets taken out ({result}
    references become R)."""
    fenced = math = False
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if stripped.startswith(("```", "~~~")):
            fenced = not fenced
            continue
        if fenced:
            continue
        if stripped.startswith("$$"):
            if not (len(stripped) > 2 and stripped.endswith("$$")):
                math = not math
            continue
        if math or re.match(r":[\w-]+:", stripped) or stripped.startswith(":::"):
            continue
        line = re.sub(r"\{result\}(`+)(.+?)\1", "R", line)
        line = re.sub(r"\{[\w:-]+\}(`+)(.+?)\1", "", line)
        line = re.sub(r"(`+)(.+?)\1", "", line)
        line = re.sub(r"\$[^$]*\$", "", line)
        line = re.sub(r"\]\([^)]*\)", "]", line)
        yield number, line


def hand_copied(path, text):
    """'page:line: number' for every number of the page that looks measured and is not a
    {result} reference."""
    found, table_row, results_table = [], 0, True
    for number, line in prose(text):
        where = f"{path}:{number}"
        found += [f"{where}: {match.group()!r}" for pattern in MEASURED
                  for match in pattern.finditer(line)]
        if not line.lstrip().startswith("|"):
            table_row = 0
            continue
        cells = [cell.strip() for cell in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
        table_row += 1
        if table_row == 1:  # the header; a table of flags and their defaults holds no results
            results_table = bool(cells) and cells[0] != "flag"
        elif table_row > 2 and results_table:
            found += [f"{where}: {cell!r}" for cell in cells[1:]
                      if (DECIMAL.search(cell) or ONLY_A_NUMBER.fullmatch(cell))
                      and (Path(path).name, cell) not in ALLOWED]
    return found


@pytest.fixture(autouse=True)
def one_device_float32():
    """conftest's reset of Keras after each test: these tests use no Keras, so none (and no
    import of TensorFlow, which would take longer than all of them)."""
    yield


@pytest.fixture(scope="module")
def results():
    return book_results.load_results(ROOT / "results")


def test_the_pages_are_found():
    names = {path.name for path in PAGES}
    assert {"index.md", "vae.md", "cvae.md", "ae.md", "dae.md", "backends.md"} <= names


def test_every_reference_resolves(results):
    failures, references = [], 0
    for path in PAGES:
        text = path.read_text()
        for match in book_results.ROLE.finditer(text):
            references += 1
            try:
                book_results.render(match.group(1), results)
            except book_results.ResultError as error:
                line = text.count("\n", 0, match.start()) + 1
                failures.append(f"{page_name(path)}:{line}: {match.group()}: {error}")
    assert not failures, "references that do not resolve:\n" + "\n".join(failures)
    assert references > 100  # the lessons' Measured sections and the bench quote their results


def test_no_page_holds_a_hand_copied_measured_number():
    found = [hit for path in PAGES for hit in hand_copied(page_name(path), path.read_text())]
    assert not found, ("numbers that look measured, copied by hand: quote them from results/ "
                       "with {result}`File.key:format`, or say it without the number:\n"
                       + "\n".join(found))


def test_the_scan_finds_what_it_looks_for():
    page = "\n".join([
        "Training took 8.4 s, 0.14 s per epoch, and {result}`X.train_seconds:.1f` s in all.",
        "It scores 99.1% and 168.73 nats; the gap shrinks 2.5-fold, 1.8 times less.",
        "```sh", "python VAE.py  # took 16 s", "```", "$$ 140.08 + \\log 10 $$",
        "A $1.5$ s, `2.5 s` and 50 epochs, a 3-second check, 100 times the loss.",
        "| metric | value |", "| --- | --- |", "| ELBO | 168.73 |", "| params | 25,872 |",
        "| ref | {result}`X.y:.2f` |", "",
        "| flag | default |", "| --- | --- |", "| `--beta` | 1.5 |",
    ])
    found = [hit.split(": ", 1)[1] for hit in hand_copied("page.md", page)]
    assert found == ["'8.4 s'", "'0.14 s'", "'99.1%'", "'168.73 nats'", "'2.5-fold'",
                     "'1.8 times'", "'168.73'", "'25,872'"]


def test_a_changed_result_changes_the_page(results, tmp_path):
    folder = tmp_path / "results"
    shutil.copytree(ROOT / "results", folder)
    path = folder / "VariationalAutoEncoder_tf2.json"
    changed = json.loads(path.read_text())
    changed["train_seconds"], changed["test_neg_elbo_nats"] = 1234.56, 201.234
    path.write_text(json.dumps(changed))
    page = (BOOK / "lessons" / "vae.md").read_text()
    before = book_results.render_markdown(page, results)
    after = book_results.render_markdown(page, book_results.load_results(folder))
    assert f"{results['VariationalAutoEncoder_tf2']['train_seconds']:.1f} s" in before
    assert "1234.6 s" in after and "1234.6" not in before
    assert "| negative ELBO | 201.23 |" in after and "201.23" not in before
    assert "{result}" not in after


def test_a_reference_formats_and_derives():
    """On results made up here (the committed ones change with every `make figures`)."""
    render = book_results.render
    results = {"Lesson": {"parameters": 1083696, "accuracy": 0.99123,
                          "by_noise": [{"psnr_db": 12.0}, {"psnr_db": 18.4249}],
                          "curve": {"pca": {"64": 0.00951}}, "elbo": 163.35, "iwae": 160.38,
                          "losses": [543.9, 206.3, 164.4, 138.3, 125.0]},
               "bench": {"machine": {"cpu": "AMD EPYC"}}}
    assert render("Lesson.parameters:,", results) == "1,083,696"
    assert render("Lesson.accuracy:.1%", results) == "99.1%"
    assert render("Lesson.by_noise.1.psnr_db:.2f", results) == "18.42"
    assert render("Lesson.curve.pca.64:.4f", results) == "0.0095"
    assert render("bench.machine.cpu", results) == "AMD EPYC"
    assert render("Lesson.elbo - Lesson.iwae:.1f", results) == "3.0"
    assert render("first_at_most(Lesson.losses, 137):d", results) == "4"


@pytest.mark.parametrize("reference, message", [
    ("VariationalAutoEncoder_tf2.trian_seconds:.1f",
     "results/VariationalAutoEncoder_tf2.json has no trian_seconds"),
    ("AutoEncoder.models.huge.parameters:,", "AutoEncoder.json has no models.huge"),
    ("StackedDenoisingAutoEncoder.psnr_vs_noise.9.noise_factor", "has no psnr_vs_noise.9"),
    ("Nonexistent.value:.2f", "there is no results/Nonexistent.json"),
    ("ConditionalVAE.data:.2f", "cannot compute"),  # null in the file
    ("ConditionalVAE.backend:.2f", "cannot compute"),  # a string with a number's format
])
def test_a_reference_that_does_not_resolve_says_which(results, reference, message):
    with pytest.raises(book_results.ResultError, match=re.escape(message)):
        book_results.render(reference, results)


def test_the_build_fails_naming_the_page_and_the_key(tmp_path):
    pytest.importorskip("myst_parser", reason="the book's packages: requirements-book.txt")
    (tmp_path / "conf.py").write_text(
        f"import sys\nsys.path.insert(0, {str(BOOK / '_ext')!r})\n"
        f"extensions = ['myst_parser', 'results']\nresults_dir = {str(ROOT / 'results')!r}\n")
    (tmp_path / "index.md").write_text(
        "# Good\n\nTook {result}`ConditionalVAE.train_seconds:.3f` s.\n\n```{toctree}\nbad\n```\n")
    (tmp_path / "bad.md").write_text("# Bad\n\nTook {result}`ConditionalVAE.no_such_key:.1f` s.\n")
    build = subprocess.run([sys.executable, "-m", "sphinx", "-b", "html", "-E", "-W",
                            "--keep-going", "-q", str(tmp_path), str(tmp_path / "_build")],
                           capture_output=True, text=True, timeout=120)
    assert build.returncode != 0
    assert re.search(r"bad\.md:3: ERROR: .*ConditionalVAE\.json has no no_such_key", build.stderr)
    seconds = json.loads((ROOT / "results" / "ConditionalVAE.json").read_text())["train_seconds"]
    assert f"Took {seconds:.3f} s." in (tmp_path / "_build" / "index.html").read_text()
