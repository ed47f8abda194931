"""How fast is each lesson, and how much memory does it take, against plain Keras, on each
Keras backend?

For every lesson and every backend (TensorFlow, JAX and PyTorch, or those --backends names), on
full-size data (MNIST when it is in the Keras cache, otherwise the 60,000 Fashion-MNIST training
images of Debian's dataset-fashion-mnist package), in rounds:

- the lesson itself, run as a user runs it, with KERAS_BACKEND set (its `PyDataset` batches,
  checkpoints, 32 steps per execution, one on PyTorch, deterministic ops), for a few epochs,
  with its evaluation made short;
- the same models, built by the lesson's own functions with its default settings, trained the
  plain-Keras way on the same backend: `fit` on NumPy arrays with Keras's defaults (the
  binarization or the noise drawn once, no checkpoints, no deterministic ops, one step per
  execution);
- for the VAE, also the same network written in plain PyTorch, as a learner would write it
  (benchmarks/plain_pytorch.py: an nn.Module, a DataLoader, Adam; the same binarized images as
  the plain-Keras VAE, the test split scored after every epoch as `fit` does), with PyTorch's
  default threading,

each in a process of its own, one after the other, every backend in every round, so that all
see the same machine. Each round also times, per lesson and backend, `python <lesson>.py --help`,
and the lesson run's seconds from the command to its first epoch and its whole wall time; and,
for the VAE on TensorFlow and JAX, its default command as a new user first runs it (the offline
sample, its 50 epochs, both of its models), whose wall time is set against the seconds its
epochs took.

It prints seconds per epoch, images per second and peak memory (the process's largest resident
set), with the ratio lesson / plain Keras on the same backend, one row per lesson and backend
(and a row "plain PyTorch"), and the start-up times. It names the kind of machine (CPU model and
widest vector extension, "AMD EPYC, AVX-512": kernels and ratios differ between kinds) and
writes results/bench.json, which keeps one entry per kind, results["machines"][kind]: a run
replaces its own kind's entry and leaves the others'. An entry names the commit it measured
(["code"]: an older row predates the changes after it). In it, ["lessons"][lesson][backend]
holds the lesson, plain_keras and their ratio, and ["lessons"]["vae"]["plain_pytorch"] the
PyTorch runs. Seconds per epoch are the median of
every epoch of every round but the first of each run, which traces the training step (for a
lesson that trains several models, the sum of one epoch of each): on a shared machine, whose
speed drifts from minute to minute, a median over many epochs run in turn is what stays put.
But other work on the machine slows some runs and not others (PyTorch's threads most of all,
whose epochs can take ten times as long), which no median undoes: the load average at the start
and at the end is printed and recorded, and the numbers mean most on an otherwise idle machine.

Then the targets. Speed, each a ratio of two of those medians, measured side by side: the VAE
lesson on JAX at most 1.3 times the VAE lesson on TensorFlow, on PyTorch at most 2.5 times, and
the VAE lesson on TensorFlow (the default backend) at most 1.0 times plain PyTorch. Start-up: the
VAE's default run at most 1.5 times its training on TensorFlow and JAX, the slowest lesson's
`--help` within a second. Steadiness: the VAE lesson's rounds within 20% of their median on each
backend. Those whose runs were made are printed after the table, "met" or "missed", and written
in ["targets"]. A missed target is reported, not an error: the bench still exits with 0.

    python benchmarks/bench.py                      # every lesson and backend, 3 rounds of 3
    python benchmarks/bench.py --lessons vae dae --rounds 5
    python benchmarks/bench.py --lessons vae --backends tensorflow torch
    make bench
"""

import argparse
import importlib.metadata
import importlib.util
import json
import os
import pathlib
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
LESSONS = {  # name -> (script, flags that keep its evaluation short)
    "vae": ("VariationalAutoEncoder_tf2", ["--iwae-samples", "1", "--no-mean-comparison"]),
    "cvae": ("ConditionalVAE", ["--iwae-samples", "1", "--classifier-epochs", "1",
                                "--samples-per-class", "10"]),
    "ae": ("AutoEncoder", []),
    "pretrain": ("GreedyPretraining", ["--pretrain-epochs", "1"]),
    "dae": ("StackedDenoisingAutoEncoder", []),
    "sparse": ("SparseAutoEncoder", []),
    "contractive": ("ContractiveAutoEncoder", []),
    "mae": ("MaskedAutoEncoder", []),
    # The VQ-VAE the flags choose and its prior, not the comparison of codebooks.
    "vqvae": ("VQVAE", ["--no-comparison", "--prior-epochs", "3"]),
}
BACKENDS = ("tensorflow", "jax", "torch")  # Keras's, set by KERAS_BACKEND in each child process
BACKEND_NAMES = {"tensorflow": "TensorFlow", "jax": "JAX", "torch": "PyTorch"}
PLAIN_PYTORCH = {"vae": ROOT / "benchmarks" / "plain_pytorch.py"}  # lesson -> its PyTorch twin
# The speed targets: (key, what is timed, against what, the largest ratio that meets it). Each
# side is a path into results["lessons"]: (lesson, backend, kind) or (lesson, "plain_pytorch").
TARGETS = [
    ("vae_jax_vs_tensorflow", ("vae", "jax", "lesson"), ("vae", "tensorflow", "lesson"), 1.3),
    ("vae_torch_vs_tensorflow", ("vae", "torch", "lesson"), ("vae", "tensorflow", "lesson"), 2.5),
    ("vae_tensorflow_vs_plain_pytorch", ("vae", "tensorflow", "lesson"), ("vae", "plain_pytorch"),
     1.0),
]
# Start-up and steadiness: the default VAE run's wall time at most 1.5 times its training time on
# these backends (timed on them alone: PyTorch's eager steps make its training the larger part), `--help` within
# a second, and the rounds of the VAE lesson within 20% of each other on an idle machine.
DEFAULT_RUN_BACKENDS = ("tensorflow", "jax")
WALL_OVER_TRAINING = 1.5
HELP_SECONDS = 1.0
SPREAD = 0.2
FASHION_MNIST = pathlib.Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lessons", nargs="+", choices=LESSONS, default=list(LESSONS))
    parser.add_argument("--backends", nargs="+", choices=BACKENDS, default=list(BACKENDS),
                        help="the Keras backends to run each lesson on (default: all three)")
    parser.add_argument("--epochs", type=int, default=3,
                        help="epochs per run; the first is left out")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each, interleaved")
    parser.add_argument("--data", help="a Keras-format .npz instead of the full-size data")
    parser.add_argument("--limit", type=int, help="the first N training images only")
    parser.add_argument("--out", default=str(ROOT), help="writes OUT/results/bench.json")
    parser.add_argument("--plain", choices=LESSONS, help=argparse.SUPPRESS)  # one plain run
    parser.add_argument("--dataset", help=argparse.SUPPRESS)
    # The tests' way to run the default-run timing cheaply: flags added to the VAE's command.
    parser.add_argument("--default-run-flags", type=str.split, default=[], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.lessons = list(dict.fromkeys(args.lessons))  # each once, in the order given
    args.backends = list(dict.fromkeys(args.backends))
    if args.epochs < 2 or args.rounds < 1:
        parser.error("--epochs must be at least 2 (the first is left out), --rounds at least 1")
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.plain:  # a child process: one plain-Keras run
        print(json.dumps(plain_keras_run(args)))
        return
    dataset = args.dataset or pick_dataset(args)
    # The load average, before and after: other work on the machine slows some runs and not
    # others (PyTorch's threads most of all), which no median undoes.
    load = {"start": os.getloadavg()}
    results = {"machine": machine(), "code": code_version(), "dataset": dataset,
               "data": args.data, "limit": args.limit,
               "epochs": args.epochs, "rounds": args.rounds, "backends": args.backends,
               "lessons": {name: bench_lesson(name, dataset, args) for name in args.lessons}}
    results["load_average"] = {**load, "end": os.getloadavg()}
    results["targets"] = targets(results["lessons"])
    write(pathlib.Path(args.out) / "results" / "bench.json", results)
    print_table(results)
    print_targets(results)


def write(path, results):
    """results/bench.json keeps one entry per kind of machine, results["machines"][kind]: this
    run replaces its own kind's and leaves the others', so that the figures of an AVX2 and an
    AVX-512 machine (or an AMD and an Intel one) stand side by side."""
    machines = {}
    if path.exists():
        machines = json.loads(path.read_text()).get("machines", {})
    machines[kind_key(results["machine"])] = results
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"machines": dict(sorted(machines.items()))}, indent=2) + "\n")
    tmp.replace(path)


def bench_lesson(name, dataset, args):
    """Every round of one lesson: on each backend in turn, the lesson then plain Keras; then, for
    a lesson with a PyTorch twin, plain PyTorch. One row per backend, and "plain_pytorch"."""
    runs = {backend: {"lesson": [], "plain_keras": []} for backend in args.backends}
    helps = {backend: [] for backend in args.backends}
    defaults = {backend: [] for backend in args.backends}
    pytorch = []
    for round_ in range(args.rounds):
        for backend in args.backends:
            helps[backend].append(help_seconds(name, backend))
            lesson = lesson_run(name, dataset, args, backend)
            plain = plain_run(name, dataset, args, backend)
            runs[backend]["lesson"].append(lesson)
            runs[backend]["plain_keras"].append(plain)
            print(f"bench: {name} on {BACKEND_NAMES[backend]}, round {round_ + 1} of "
                  f"{args.rounds}: lesson {lesson['seconds_per_epoch']:.2f} s per epoch "
                  f"({lesson['seconds_to_first_epoch']:.1f} s to its first epoch, "
                  f"--help {helps[backend][-1]:.2f} s), plain Keras "
                  f"{plain['seconds_per_epoch']:.2f} s", file=sys.stderr, flush=True)
            if name == "vae" and backend in DEFAULT_RUN_BACKENDS:
                defaults[backend].append(default_run(backend, args.default_run_flags))
                run = defaults[backend][-1]
                print(f"bench: the VAE's default run on {BACKEND_NAMES[backend]}: "
                      f"{run['wall_seconds']:.1f} s in all for {run['training_seconds']:.1f} s "
                      f"of training", file=sys.stderr, flush=True)
        if name in PLAIN_PYTORCH:
            pytorch.append(plain_pytorch_run(name, dataset, args))
            print(f"bench: {name}, round {round_ + 1} of {args.rounds}: plain PyTorch "
                  f"{pytorch[-1]['seconds_per_epoch']:.2f} s per epoch", file=sys.stderr,
                  flush=True)
    row = {backend: compare(kinds) for backend, kinds in runs.items()}
    for backend in args.backends:
        row[backend]["help_seconds"] = statistics.median(helps[backend])
        if defaults[backend]:
            row[backend]["default_run"] = default_summary(defaults[backend])
    if pytorch:
        row["plain_pytorch"] = summarize(pytorch)
    return row


# -- The data and the machine ---------------------------------------------------------------------

def pick_dataset(args):
    if args.data:
        return "mnist"
    home = pathlib.Path(os.environ.get("KERAS_HOME", pathlib.Path.home() / ".keras"))
    if (home / "datasets" / "mnist.npz").exists():
        return "mnist"
    if FASHION_MNIST.exists():
        return "fashion_mnist"
    sys.exit("bench.py: error: it needs full-size data: MNIST in the Keras cache (run a lesson "
             "once online) or Fashion-MNIST (apt-get install dataset-fashion-mnist)")


# The vector extensions that decide which kernels TensorFlow (oneDNN), XLA and PyTorch pick, widest
# first: the same seconds per epoch are not expected of an AVX2 and an AVX-512 machine.
VECTOR_EXTENSIONS = {"amx_tile": "AMX", "avx512_bf16": "AVX-512 BF16",
                     "avx512_vnni": "AVX-512 VNNI", "avx512f": "AVX-512", "avx2": "AVX2",
                     "fma": "FMA", "avx": "AVX"}


def machine():
    """The CPU, its vector extensions and its kind (model and widest extension), cores, memory
    and the versions that were timed."""
    info = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "python": platform.python_version(), "vector_extensions": []}
    if os.path.exists("/proc/cpuinfo"):
        lines = open("/proc/cpuinfo").read().splitlines()
        names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
        info["cpu"] = names[0] if names else info["cpu"]
        flags = next((set(line.split(":", 1)[1].split()) for line in lines
                      if line.startswith("flags")), set())
        info["vector_extensions"] = [name for flag, name in VECTOR_EXTENSIONS.items()
                                     if flag in flags]
        total = [line.split()[1] for line in open("/proc/meminfo") if line.startswith("MemTotal")]
        info["memory_gib"] = round(int(total[0]) / 2**20, 1)
    widest = next((name for name in ("AVX-512", "AVX2", "AVX")
                   if name in info["vector_extensions"]), "no AVX")
    model = " ".join(re.sub(r"\((R|TM|tm)\)|\bCPU\b|@.*|\b\d+-Core Processor", " ",
                            info["cpu"]).split())
    info["kind"] = f"{model}, {widest}"
    info.update({package: version(package)
                 for package in ("tensorflow", "keras", "numpy", "jax", "torch")})
    return info


def code_version():
    """The commit the lessons were measured at ("b13748b"; "b13748b+" with uncommitted changes),
    or None outside a git checkout: a row measured before a change is read as such."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True,
                                capture_output=True, check=True).stdout.strip()
        changed = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                                 cwd=ROOT, text=True, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    return commit + ("+" if changed.strip() else "")


def kind_key(info):
    """The machine's kind as a key of results["machines"]: "amd_epyc_avx_512"."""
    return re.sub(r"\W+", "_", info["kind"].lower()).strip("_")


def version(package):
    """The installed version of `package`, or None when it is not installed."""
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


# -- One run, in a process of its own -------------------------------------------------------------

def child(command, backend, env=None):
    """Run `command` from the repository root with KERAS_BACKEND=`backend`. Returns its stdout,
    its peak memory in GiB, its wall-clock seconds from the start to the end, and the seconds
    from the start until it printed "Epoch 1/" (Keras's first epoch beginning; None if never)."""
    env = {**os.environ, "AUTOENCODERS_OFFLINE": "1", "KERAS_BACKEND": backend,
           "PYTHONUNBUFFERED": "1", **(env or {})}  # unbuffered: each line arrives when printed
    first_epoch, lines = None, []
    with tempfile.TemporaryFile("w+") as stderr:
        started = time.perf_counter()
        process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=stderr,
                                   env=env, text=True)
        for line in process.stdout:
            if first_epoch is None and line.startswith("Epoch 1/"):
                first_epoch = time.perf_counter() - started
            lines.append(line)
        _, status, usage = os.wait4(process.pid, 0)  # reaps it, with its resource usage
        wall = time.perf_counter() - started
        process.returncode = os.waitstatus_to_exitcode(status)
        if process.returncode != 0:
            stderr.seek(0)
            sys.exit(f"bench.py: error: KERAS_BACKEND={backend} {' '.join(command)} failed:\n"
                     f"{stderr.read()[-3000:]}")
    # ru_maxrss is in KiB on Linux, in bytes on macOS
    peak = usage.ru_maxrss / (2**30 if sys.platform == "darwin" else 2**20)
    return {"stdout": "".join(lines), "peak": peak, "wall": wall, "first_epoch": first_epoch}


def lesson_run(name, dataset, args, backend):
    """The lesson as a user runs it, on `backend`; its epochs timed by the lesson itself, its
    start-up (to the first epoch) and its whole run by the bench."""
    script, flags = LESSONS[name]
    with tempfile.TemporaryDirectory() as out:
        run = child([sys.executable, f"{script}.py", "--dataset", dataset, "--out", out,
                     *data_flags(args), "--epochs", str(args.epochs), *flags], backend)
        results = json.loads((pathlib.Path(out) / "results" / f"{script}.json").read_text())
    return {**measured(list(epoch_times(results)), results["train_examples"], run["peak"]),
            "seconds_to_first_epoch": run["first_epoch"], "wall_seconds": run["wall"]}


def help_seconds(name, backend):
    """The wall-clock seconds of `python <lesson>.py --help`: what a learner waits first."""
    return child([sys.executable, f"{LESSONS[name][0]}.py", "--help"], backend)["wall"]


def default_run(backend, flags=()):
    """The VAE lesson's default command, as a new user first runs it (offline: the 4,000-image
    MNIST sample, its 50 epochs, both of its models): its wall-clock seconds against the seconds
    its epochs took, every model's summed."""
    with tempfile.TemporaryDirectory() as out:
        # An empty Keras home: the run uses the offline sample even where MNIST is cached.
        run = child([sys.executable, "VariationalAutoEncoder_tf2.py", "--out", out, *flags],
                    backend,
                    env={"KERAS_HOME": str(pathlib.Path(out) / "keras-home")})
        results = json.loads(
            (pathlib.Path(out) / "results" / "VariationalAutoEncoder_tf2.json").read_text())
    training = sum(train_seconds(results))
    return {"wall_seconds": run["wall"], "training_seconds": training,
            "seconds_to_first_epoch": run["first_epoch"], "peak_memory_gib": run["peak"]}


def plain_run(name, dataset, args, backend):
    """The lesson's models in plain Keras on `backend` (plain_keras_run, in a child)."""
    return reported(child([sys.executable, str(pathlib.Path(__file__).resolve()), "--plain", name,
                           "--dataset", dataset, "--epochs", str(args.epochs),
                           *data_flags(args)], backend))


def plain_pytorch_run(name, dataset, args):
    """The lesson's network in plain PyTorch (benchmarks/plain_pytorch.py, in a child). Its
    KERAS_BACKEND is torch, so that nothing it imports starts TensorFlow."""
    return reported(child([sys.executable, str(PLAIN_PYTORCH[name]), "--dataset", dataset,
                           "--epochs", str(args.epochs), *data_flags(args)], "torch"))


def reported(run):
    """One run of a child that prints, last, {"epoch_seconds": [...], "train_examples": N}."""
    report = json.loads(run["stdout"].strip().splitlines()[-1])
    return measured(report["epoch_seconds"], report["train_examples"], run["peak"])


def data_flags(args):
    return [*(["--data", args.data] if args.data else []),
            *(["--limit", str(args.limit)] if args.limit else [])]


def train_seconds(results):
    """Every `train_seconds` in a lesson's results: one per model it trained (the VAE's second,
    averaged-loss model keeps its own in results["averaged_losses"])."""
    for key, value in results.items():
        if isinstance(value, dict):
            yield from train_seconds(value)
        elif key == "train_seconds":
            yield value


def epoch_times(results):
    """Every `...epoch_seconds` list in a lesson's results: one per model it trained."""
    for key, value in results.items():
        if isinstance(value, dict):
            yield from epoch_times(value)
        elif key.endswith("epoch_seconds"):
            yield value


def measured(per_model, train_examples, peak):
    """One run: every model's epochs but the first, and its seconds per epoch (each model's
    median epoch, summed over the models)."""
    epochs = [times[1:] for times in per_model]
    seconds = sum(statistics.median(times) for times in epochs)
    return {"seconds_per_epoch": seconds, "epoch_seconds": epochs, "models": len(per_model),
            "train_examples": train_examples, "peak_memory_gib": peak}


def summarize(reports):
    """Every round of one kind of run: each model's median epoch over all the rounds, summed;
    the spread of the rounds ((slowest - fastest) / median); the median start-up and whole run,
    where the bench timed them."""
    models = zip(*(r["epoch_seconds"] for r in reports))  # each model's epochs, every round
    seconds = sum(statistics.median([t for times in model for t in times]) for model in models)
    per_run = [r["seconds_per_epoch"] for r in reports]
    summary = {"seconds_per_epoch": seconds,
               "seconds_per_epoch_range": [min(per_run), max(per_run)],
               "spread": (max(per_run) - min(per_run)) / statistics.median(per_run),
               "images_per_second": reports[0]["train_examples"] * reports[0]["models"] / seconds,
               "peak_memory_gib": max(r["peak_memory_gib"] for r in reports)}
    for key in ("seconds_to_first_epoch", "wall_seconds"):
        if all(r.get(key) is not None for r in reports):
            summary[key] = statistics.median(r[key] for r in reports)
    return {**summary, "runs": reports}


def default_summary(runs):
    """The default runs of every round: median wall and training seconds, and the median of
    each round's ratio wall / training."""
    return {"wall_seconds": statistics.median(r["wall_seconds"] for r in runs),
            "training_seconds": statistics.median(r["training_seconds"] for r in runs),
            "seconds_to_first_epoch": statistics.median(r["seconds_to_first_epoch"] for r in runs),
            "ratio": statistics.median(r["wall_seconds"] / r["training_seconds"] for r in runs),
            "runs": runs}


def compare(runs):
    """A lesson's row on one backend: the lesson, plain Keras, and the ratio lesson / plain."""
    summary = {kind: summarize(reports) for kind, reports in runs.items()}
    summary["ratio"] = (summary["lesson"]["seconds_per_epoch"]
                        / summary["plain_keras"]["seconds_per_epoch"])
    return summary


def targets(lessons):
    """Each target whose runs were made: the measured value, the target, and whether it is met
    (at most the target). Speed: a ratio of two medians of seconds per epoch, run side by side.
    Start-up: the default VAE run's wall time / its training time, the slowest lesson's `--help`
    in seconds. Steadiness: the spread of the VAE lesson's rounds on each backend."""
    found = {}
    for key, timed, against, at_most in TARGETS:
        sides = [summary_at(lessons, path) for path in (timed, against)]
        if None in sides:
            continue
        medians = [side["seconds_per_epoch"] for side in sides]
        ratio = medians[0] / medians[1]
        found[key] = {"timed": "/".join(timed), "against": "/".join(against),
                      "seconds_per_epoch": medians, "value": ratio, "ratio": ratio,
                      "at_most": at_most, "met": ratio <= at_most}
    for backend in BACKENDS:
        default = summary_at(lessons, ("vae", backend, "default_run"))
        if default is not None and backend in DEFAULT_RUN_BACKENDS:
            found[f"vae_default_run_{backend}"] = {
                "what": f"the VAE's default run on {BACKEND_NAMES[backend]}: wall / training",
                "value": default["ratio"], "at_most": WALL_OVER_TRAINING,
                "met": default["ratio"] <= WALL_OVER_TRAINING}
        helps = [rows[backend]["help_seconds"] for rows in lessons.values()
                 if "help_seconds" in rows.get(backend, {})]
        if helps:
            found[f"help_{backend}"] = {
                "what": f"the slowest lesson's --help on {BACKEND_NAMES[backend]}, seconds",
                "value": max(helps), "at_most": HELP_SECONDS, "met": max(helps) <= HELP_SECONDS}
        vae = summary_at(lessons, ("vae", backend, "lesson"))
        if vae is not None and len(vae["runs"]) > 1:
            found[f"vae_{backend}_spread"] = {
                "what": f"the VAE lesson's rounds on {BACKEND_NAMES[backend]}: spread",
                "value": vae["spread"], "at_most": SPREAD, "met": vae["spread"] <= SPREAD}
    return found


def summary_at(lessons, path):
    """The summary at `path` in results["lessons"], e.g. ("vae", "jax", "lesson"); None when it
    was not run."""
    for key in path:
        if key not in lessons:
            return None
        lessons = lessons[key]
    return lessons


def print_table(results):
    """One row per lesson and backend, lesson against plain Keras; plain PyTorch in the plain
    columns of a row of its own."""
    load = results["load_average"]
    print(f"\n{results['dataset']}, {results['rounds']} rounds of {results['epochs']} epochs "
          f"(the first of each left out); {results['machine']['cpu']} "
          f"({', '.join(results['machine']['vector_extensions']) or 'no AVX'}), "
          f"{results['machine']['cores']} cores, load average {load['start'][0]:.1f} at the "
          f"start, {load['end'][0]:.1f} at the end")
    print(f"{'':12s} {'backend':14s} {'lesson s/epoch (rounds)':>24s} {'plain (rounds)':>21s} "
          f"{'ratio':>6s} {'images/s':>9s} {'plain':>6s} {'peak GiB':>9s} {'plain':>6s} "
          f"{'epoch 1 at':>10s} {'run':>6s} {'--help':>6s}")
    for name, rows in results["lessons"].items():
        for backend, row in rows.items():
            if backend == "plain_pytorch":
                print(f"{name:12s} {'plain PyTorch':14s} {'-':>24s} {seconds(row):>21s} "
                      f"{'-':>6s} {'-':>9s} {row['images_per_second']:6.0f} {'-':>9s} "
                      f"{row['peak_memory_gib']:6.2f}")
                continue
            lesson, plain = row["lesson"], row["plain_keras"]
            print(f"{name:12s} {BACKEND_NAMES[backend]:14s} {seconds(lesson):>24s} "
                  f"{seconds(plain):>21s} {row['ratio']:6.2f} "
                  f"{lesson['images_per_second']:9.0f} {plain['images_per_second']:6.0f} "
                  f"{lesson['peak_memory_gib']:9.2f} {plain['peak_memory_gib']:6.2f} "
                  f"{lesson['seconds_to_first_epoch']:9.1f}s {lesson['wall_seconds']:5.0f}s "
                  f"{row['help_seconds']:5.2f}s")
    print("(plain: plain Keras on the same backend; ratio: lesson / plain Keras; epoch 1 at: "
          "seconds from the command to the lesson's first epoch; run: its whole run)")
    for name, rows in results["lessons"].items():
        for backend, row in rows.items():
            if "default_run" in row:
                run = row["default_run"]
                print(f"the VAE's default run on {BACKEND_NAMES[backend]}: "
                      f"{run['wall_seconds']:.1f} s in all, {run['training_seconds']:.1f} s of "
                      f"training (ratio {run['ratio']:.2f}), first epoch at "
                      f"{run['seconds_to_first_epoch']:.1f} s")


def print_targets(results):
    """The speed targets that were measured, each "met" or "missed"; a missed one is said
    plainly, on stdout and stderr, but is no error."""
    found = results["targets"]
    if not found:
        return
    print(f"\ntargets on {results['machine']['kind']} (speed: ratios of median seconds per "
          f"epoch, run side by side):")
    for key, target in found.items():
        what = target.get("what") or (f"{describe(target['timed'])} / "
                                      f"{describe(target['against'])}")
        print(f"  {what:58s} {target['value']:5.2f}  (at most {target['at_most']:.1f})  "
              f"{'met' if target['met'] else 'missed'}")
    missed = [key for key, target in found.items() if not target["met"]]
    if missed:
        print(f"bench: {len(missed)} of {len(found)} targets missed: {', '.join(missed)} (a "
              "measurement, not a failure: exit status 0)")


def describe(path):
    """A target's side in words: "vae lesson on JAX", "vae in plain PyTorch"."""
    name, *rest = path.split("/")
    if rest == ["plain_pytorch"]:
        return f"{name} in plain PyTorch"
    backend, kind = rest
    return f"{name} {kind.replace('_', ' ')} on {BACKEND_NAMES[backend]}"


def seconds(kind):
    low, high = kind["seconds_per_epoch_range"]
    return f"{kind['seconds_per_epoch']:.2f} ({low:.2f}-{high:.2f})"


# -- Plain Keras: the lesson's models, fit on NumPy arrays with Keras's defaults -------------------

def plain_keras_run(args):
    sys.path.insert(0, str(ROOT))
    import common  # noqa: F401 - first: quiets TensorFlow's start-up logs
    import keras
    from common import data

    script, _ = LESSONS[args.plain]
    spec = importlib.util.spec_from_file_location(script, ROOT / f"{script}.py")
    lesson = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(lesson)
    settings = lesson.parse_args(["--dataset", args.dataset, *data_flags(args)])  # its defaults
    dataset = data.load_dataset(settings.dataset, settings.data, settings.limit)
    keras.utils.set_random_seed(0)

    class EpochTimes(keras.callbacks.Callback):
        """The wall-clock seconds of every epoch, training and validation, as the lessons time
        theirs."""

        def on_train_begin(self, logs=None):
            self.seconds = []

        def on_epoch_begin(self, epoch, logs=None):
            self.started = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.seconds.append(time.perf_counter() - self.started)

    epoch_seconds = []
    for model, loss, train, test in PLAIN_MODELS[args.plain](lesson, settings, dataset):
        model.compile(optimizer=keras.optimizers.Adam(settings.learning_rate), loss=loss)
        timer = EpochTimes()
        model.fit(*train, validation_data=test, batch_size=settings.batch_size,
                  epochs=args.epochs, callbacks=[timer], verbose=0)
        epoch_seconds.append(timer.seconds)
    return {"epoch_seconds": epoch_seconds, "train_examples": len(dataset.x_train)}


def plain_vae(lesson, args, dataset):
    from common import data, losses

    x, x_test = data.binarize(dataset.x_train, 0), data.binarize(dataset.x_test, 1)
    _, _, model = lesson.build_vae(args.arch, args.latent_dim, args.beta, args.seed,
                                   summary=False)
    return [(model, losses.bernoulli_nll, (x, x), (x_test, x_test))]


def plain_cvae(lesson, args, dataset):
    from common import data, losses

    x, x_test = data.binarize(dataset.x_train, 0), data.binarize(dataset.x_test, 1)
    y, y_test = lesson.one_hot(dataset.y_train), lesson.one_hot(dataset.y_test)
    encoder = lesson.build_encoder(args.arch, args.latent_dim)
    model = lesson.build_cvae(encoder, lesson.build_decoder(args.arch, args.latent_dim),
                              args.beta, args.seed)
    return [(model, losses.bernoulli_nll, ([x, y], x), ([x_test, y_test], x_test))]


def plain_ae(lesson, args, dataset):
    import keras
    from common import losses

    pairs = ((dataset.x_train, dataset.x_train), (dataset.x_test, dataset.x_test))
    return [(lesson.build_linear(args.code_dim).autoencoder, keras.losses.MeanSquaredError(),
             *pairs)] + [(build(args.code_dim).autoencoder, losses.bernoulli_nll, *pairs)
                         for build in (lesson.build_shallow, lesson.build_deep)]


def plain_pretrain(lesson, args, dataset):
    from common import losses

    pairs = ((dataset.x_train, dataset.x_train), (dataset.x_test, dataset.x_test))
    return [(lesson.build_deep(lesson.deep_layers(args.code_dim), name).autoencoder,
             losses.bernoulli_nll, *pairs) for name in ("random_init", "greedy")]


def plain_dae(lesson, args, dataset):
    import keras
    from common import noise

    noisy = noise.add_noise(dataset.x_train, args.noise, args.noise_factor, args.seed)
    noisy_test = noise.add_noise(dataset.x_test, args.noise, args.noise_factor, args.seed + 1)
    encoder = lesson.build_encoder()
    model = lesson.build_dae(encoder, lesson.build_decoder(encoder.output_shape[1:]))
    return [(model, keras.losses.BinaryCrossentropy(from_logits=True),
             (noisy, dataset.x_train), (noisy_test, dataset.x_test))]


def plain_sparse(lesson, args, dataset):
    from common import losses

    pairs = ((dataset.x_train, dataset.x_train), (dataset.x_test, dataset.x_test))
    return [(lesson.build_autoencoder(lesson.build_encoder(args.hidden),
                                      lesson.build_decoder(args.hidden), penalty, args),
             losses.bernoulli_nll, *pairs) for penalty in (args.penalty, "none")]


def plain_contractive(lesson, args, dataset):
    from common import losses

    pairs = ((dataset.x_train, dataset.x_train), (dataset.x_test, dataset.x_test))
    return [(lesson.build_autoencoder(lesson.build_encoder(args.hidden, contraction),
                                      lesson.build_decoder(args.hidden)),
             losses.bernoulli_nll, *pairs) for contraction in (args.contraction, 0.0)]


def plain_mae(lesson, args, dataset):
    import keras

    pairs = ((dataset.x_train, dataset.x_train), (dataset.x_test, dataset.x_test))
    mae = lesson.build_mae(args.mask_ratio, args.seed, summary=False)
    # No loss to compile: the model's own compute_loss scores the hidden patches.
    return [(mae.model, None, *pairs),
            (lesson.build_plain_autoencoder()[1], keras.losses.MeanSquaredError(), *pairs)]


def plain_vqvae(lesson, args, dataset):
    import numpy as np
    from common import data, losses

    x, x_test = data.binarize(dataset.x_train, 0), data.binarize(dataset.x_test, 1)
    vqvae = lesson.build_vqvae(args.codebook_size, args.code_dim, args.beta, args.ema,
                               summary=False)[-1]
    # The prior learns code grids: random ones take it as long as the VQ-VAE's would.
    rng = np.random.default_rng(0)
    codes, test_codes = (rng.integers(args.codebook_size, size=(len(images), *lesson.GRID))
                         .astype("int32") for images in (x, x_test))
    return [(vqvae, losses.bernoulli_nll, (x, x), (x_test, x_test)),
            (lesson.build_prior(args.codebook_size, summary=False), lesson.code_nll,
             (codes, codes), (test_codes, test_codes))]


PLAIN_MODELS = {"vae": plain_vae, "cvae": plain_cvae, "ae": plain_ae, "pretrain": plain_pretrain,
                "dae": plain_dae, "sparse": plain_sparse, "contractive": plain_contractive,
                "mae": plain_mae, "vqvae": plain_vqvae}


if __name__ == "__main__":
    main()
