"""The command line, read before Keras loads: `python Lesson.py --help`, or a mistyped flag, answers
in a fraction of a second instead of after the seconds that importing Keras and its backend
take. `import common`, the first import of every lesson, calls `read_command_line()` before it
imports anything of Keras.

It runs the lesson's own `parse_args`, taken from the lesson's source with the module-level
names it uses (the imports and constants above it; never Keras, never a class or a function of
the lesson but `parse_args`), on the process's arguments. `--help` then prints and exits 0, a
bad flag prints its one line and exits 2, exactly as the full parse would; with good flags
nothing happens here, and the lesson starts and parses them again, with the checks that need
the backend. Whatever cannot be run this way (a lesson whose flags need Keras) is left to the
full parse: this only ever makes an answer earlier, never different.
"""

import ast
import builtins
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent  # the lessons' folder
# While the early parse runs, cli skips the checks that need the backend (it is not loaded).
ACTIVE = False


def read_command_line():
    """Parse the running lesson's command line, if `__main__` is a lesson run as a script."""
    global ACTIVE
    path = _running_lesson()
    if path is None:
        return
    try:
        parse_args = _parse_args_of(path)
    except Exception:  # noqa: BLE001 - not runnable alone: the full parse answers later
        return
    if parse_args is None:
        return
    ACTIVE = True
    try:
        parse_args()  # --help exits 0, a bad flag exits 2: both as SystemExit, which propagates
    except SystemExit:
        raise
    except Exception:  # noqa: BLE001 - e.g. a check that needs Keras: the full parse answers
        pass
    finally:
        ACTIVE = False


def _running_lesson():
    """The path of the lesson that `python <Lesson>.py` runs, or None (a test, a notebook's
    kernel, an import)."""
    main = sys.modules.get("__main__")
    file = getattr(main, "__file__", None)
    if not file or not sys.argv or pathlib.Path(sys.argv[0]).resolve() != pathlib.Path(
            file).resolve():
        return None
    path = pathlib.Path(file).resolve()
    return path if path.parent == ROOT and path.suffix == ".py" else None


def _parse_args_of(path):
    """The lesson's `parse_args`, defined in a namespace of its own with only the module-level
    statements it needs (imports, constants, its flags' type functions); None if the lesson has
    none, or if what it needs imports Keras."""
    tree = ast.parse(path.read_text(), str(path))
    if not any(isinstance(node, ast.FunctionDef) and node.name == "parse_args"
               for node in tree.body):
        return None
    needed, kept = {"parse_args"}, {}
    # Until nothing new is needed: keep each statement that defines a needed name, and need the
    # names it uses in turn. Imports keep only their needed names.
    while True:
        for index, node in enumerate(tree.body):
            if isinstance(node, ast.FunctionDef):
                if node.name in needed and index not in kept:
                    kept[index] = node
            elif isinstance(node, (ast.Assign, ast.AnnAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                if _names_used(*targets) & needed and index not in kept:
                    kept[index] = node
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                aliases = [alias for alias in node.names
                           if (alias.asname or alias.name).split(".")[0] in needed]
                if aliases:
                    if _is_keras(node, aliases):
                        return None  # the flags need Keras: only the full parse can read them
                    kept[index] = ast.copy_location(
                        type(node)(**{**node.__dict__, "names": aliases}), node)
        more = set().union(*(_names_used(node) for node in kept.values())) - needed
        if not more:
            break
        needed |= more
    module = ast.Module(body=[kept[index] for index in sorted(kept)], type_ignores=[])
    namespace = {"__name__": "__early__", "__file__": str(path), "__builtins__": builtins}
    exec(compile(module, str(path), "exec"), namespace)
    return namespace["parse_args"]


def _names_used(*nodes):
    return {name.id for node in nodes for name in ast.walk(node) if isinstance(name, ast.Name)}


def _is_keras(node, aliases):
    modules = ([alias.name for alias in aliases] if isinstance(node, ast.Import)
               else [node.module or ""])
    return any(name.split(".")[0] in ("keras", "tensorflow", "jax", "torch") for name in modules)
