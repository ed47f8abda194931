"""The bookkeeping of a lesson that trains one network with a penalty and without it (the sparse
and contractive lessons): the record of each setting's trained models and scores, the results
side by side as penalized_<key> and baseline_<key>, the table printed at the end, and the names
the models are saved under. A learner never needs to read it.
"""

from typing import NamedTuple

import keras

from common import training


class Trained(NamedTuple):
    """One setting's trained network, and what it did on the test split."""

    encoder: keras.Model
    decoder: keras.Model
    autoencoder: keras.Model
    fitted: training.Fitted
    scores: dict  # its numbers on the test split, for the results file
    arrays: dict  # NumPy arrays the figures draw (codes, reconstructions, ...)


def settings(chosen, baseline):
    """The setting asked for, then the baseline; just the baseline when they are the same."""
    return list(dict.fromkeys((chosen, baseline)))


def side_by_side(trained, chosen, baseline):
    """penalized_<key> for every score and training figure of the chosen setting, then
    baseline_<key> for the baseline's; only baseline_ keys when the chosen one is the baseline."""
    labels = {"penalized": chosen, "baseline": baseline}
    if chosen == baseline:
        del labels["penalized"]
    return {f"{label}_{key}": value for label, setting in labels.items()
            for key, value in {**trained[setting].scores,
                               **trained[setting].fitted.results()}.items()}


def saved_models(prefix, trained):
    """{name: model} for `Run.finish`: <prefix>_<setting>, and its _encoder and _decoder, for
    every setting ("sparse_kl_encoder"; a number as `format(value, "g")`, "contractive_0.1")."""
    return {f"{prefix}_{_label(setting)}{part}": model for setting, run in trained.items()
            for part, model in (("", run.autoencoder), ("_encoder", run.encoder),
                                ("_decoder", run.decoder))}


def _label(setting):
    return format(setting, "g") if isinstance(setting, (int, float)) else str(setting)


def print_table(heading, columns, rows, results):
    """Print `heading`, then one line per row of `rows`, (text, key, format spec), holding
    results[f"{label}_{key}"] for each label of `columns` (label -> column title) that `results`
    has numbers for. An undefined number (None) prints as "undefined"."""
    labels = [label for label in columns if f"{label}_{rows[0][1]}" in results]
    text_width = max(len(text) for text, _, _ in rows) + 2
    width = max(14, *(len(columns[label]) + 4 for label in labels))
    print(heading)
    print(f"  {'':{text_width}s}" + "".join(f"{columns[label]:>{width}s}" for label in labels))
    for text, key, spec in rows:
        values = [results[f"{label}_{key}"] for label in labels]
        print(f"  {text:{text_width}s}" + "".join(
            f"{'undefined' if v is None else format(v, spec):>{width}s}" for v in values))
