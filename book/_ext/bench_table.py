"""The tables of `make bench`, one row per kind of machine, read from results/bench.json when the
book builds.

    ```{bench-table} targets
    ```

gives one row per kind of machine that `make bench` ran on (results["machines"]): its CPU and
vector extensions, the VAE lesson's seconds per epoch on TensorFlow, and every target, measured
value against its bound. `{bench-table} vae` gives, for each kind of machine, one row per backend:
the VAE lesson against plain Keras on that backend and plain PyTorch, with peak memory. A kind of
machine whose runs lack a column shows a dash there; a missing or empty results/bench.json is an
error, which fails the build.
"""

import json
from pathlib import Path

from docutils import nodes
from sphinx.util.docutils import SphinxDirective

BACKENDS = {"tensorflow": "TensorFlow", "jax": "JAX", "torch": "PyTorch"}
# The targets' columns: (key in results["targets"], heading), in the order the README gives them.
TARGET_COLUMNS = [
    ("vae_tensorflow_vs_plain_pytorch", "TF / plain PyTorch"),
    ("vae_jax_vs_tensorflow", "JAX / TF"),
    ("vae_torch_vs_tensorflow", "PyTorch / TF"),
    ("vae_default_run_tensorflow", "default run, wall / training, TF"),
    ("vae_default_run_jax", "default run, wall / training, JAX"),
    ("help_tensorflow", "--help (s), TF"),
]


def machines(path):
    found = json.loads(Path(path).read_text()).get("machines") if Path(path).exists() else None
    if not found:
        raise ValueError(f"{path} holds no machine's runs: run `make bench`")
    return found


def target_rows(found):
    head = ["machine", "VAE lesson on TF, s/epoch", *(title for _, title in TARGET_COLUMNS),
            "rounds' spread (largest)"]
    rows = []
    for results in found.values():
        vae = results["lessons"].get("vae", {})
        tensorflow = vae.get("tensorflow", {}).get("lesson")
        targets = results["targets"]
        spreads = [t for key, t in targets.items() if key.endswith("_spread")]
        rows.append([
            _machine(results),
            f"{tensorflow['seconds_per_epoch']:.2f}" if tensorflow else "-",
            *(_target(targets.get(key)) for key, _ in TARGET_COLUMNS),
            _target(max(spreads, key=lambda t: t["value"])) if spreads else "-"])
    return head, rows


def _machine(results):
    """The kind of machine, its cores, and the commit its row measured, where recorded."""
    code = f", code at {results['code']}" if results.get("code") else ""
    return f"{results['machine']['kind']} ({results['machine']['cores']} cores{code})"


def _target(target):
    if target is None:
        return "-"
    return (f"{target['value']:.2f} (at most {target['at_most']:g}, "
            f"{'met' if target['met'] else 'missed'})")


def vae_rows(found):
    head = ["machine", "backend", "VAE lesson s/epoch (rounds)", "plain s/epoch (rounds)",
            "lesson / plain", "epoch 1 after (s)", "peak GiB (plain)"]
    rows = []
    for results in found.values():
        vae = results["lessons"].get("vae", {})
        for backend, row in vae.items():
            kind = results["machine"]["kind"]
            if backend == "plain_pytorch":
                rows.append([kind, "plain PyTorch", "-", _seconds(row), "-", "-",
                             f"{row['peak_memory_gib']:.2f}"])
                continue
            lesson, plain = row["lesson"], row["plain_keras"]
            first = lesson.get("seconds_to_first_epoch")
            rows.append([kind, BACKENDS[backend], _seconds(lesson), _seconds(plain),
                         f"{row['ratio']:.2f}", "-" if first is None else f"{first:.1f}",
                         f"{lesson['peak_memory_gib']:.2f} ({plain['peak_memory_gib']:.2f})"])
    return head, rows


def _seconds(kind):
    low, high = kind["seconds_per_epoch_range"]
    return f"{kind['seconds_per_epoch']:.2f} ({low:.2f}-{high:.2f})"


TABLES = {"targets": target_rows, "vae": vae_rows}


def table(head, rows):
    """A docutils table: a header row, then the rows, every cell text."""
    group = nodes.tgroup(cols=len(head))
    group += [nodes.colspec(colwidth=1) for _ in head]

    def row(cells):
        line = nodes.row()
        for cell in cells:
            entry = nodes.entry()
            entry += nodes.paragraph(text=cell)
            line += entry
        return line

    group += nodes.thead("", row(head))
    group += nodes.tbody("", *(row(cells) for cells in rows))
    return nodes.table("", group)


class BenchTable(SphinxDirective):
    required_arguments = 1  # which table: targets or vae

    def run(self):
        path = Path(self.config.results_dir) / "bench.json"
        self.env.note_dependency(str(path))
        which = self.arguments[0]
        if which not in TABLES:
            raise self.error(f"bench-table: no table {which!r}; one of {', '.join(TABLES)}")
        try:
            return [table(*TABLES[which](machines(path)))]
        except (ValueError, KeyError) as error:
            raise self.error(f"bench-table {which}: {error}") from None


def setup(app):
    app.add_directive("bench-table", BenchTable)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
