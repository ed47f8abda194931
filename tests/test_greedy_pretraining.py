"""The greedy layer-wise pretraining lesson: each stage trains one pair of layers on the codes of
the ones below, the stack is the deep model, and a tiny run compares it with random weights."""

import argparse
import math

import common  # noqa: F401 - registers the custom objects for load_model
import common.metrics
import keras
import numpy as np
import pytest

from common import data
from conftest import assert_figures
from conftest import assert_finite_numbers
from conftest import assert_usage_error

NAME = "GreedyPretraining"
FIGURES = ["pretraining_curves.png", "pretraining_reconstructions.png"]


@pytest.fixture(scope="module")
def lesson(lessons):
    return lessons[NAME]


@pytest.fixture(scope="module")
def tiny(tiny_run):
    return tiny_run(NAME)


@pytest.mark.parametrize("argv, message", [
    (["--code-dim", "0"], "--code-dim: must be a positive integer, got '0'"),
    (["--code-dim", "256"], "--code-dim: must be below 256"),
    (["--pretrain-epochs", "0"], "--pretrain-epochs: must be a positive integer, got '0'"),
    (["--learning-rate", "inf"], "--learning-rate: must be a positive number, got 'inf'"),
    (["--out", None], "cannot be written"),
])
def test_bad_values_stop_with_one_line_and_status_2(lesson, tmp_path, capsys, argv, message):
    assert_usage_error(lesson.main, f"{NAME}.py", argv, tmp_path, capsys, message)


class WeightSnapshots(keras.callbacks.Callback):
    """Record the weights of every built layer of the pairs at the start and end of a stage."""

    def __init__(self, pairs, log):
        super().__init__()
        self.pairs, self.log = pairs, log

    def snapshot(self):
        return {layer.name: [w.copy() for w in layer.get_weights()]
                for pair in self.pairs for layer in pair}

    def on_train_begin(self, logs=None):
        self.log.append(("begin", self.snapshot()))

    def on_train_end(self, logs=None):
        self.log.append(("end", self.snapshot()))


def test_greedy_pretraining_trains_each_layer_on_the_codes_below(lesson, tmp_path):
    keras.utils.set_random_seed(0)
    x = np.random.default_rng(0).random((64, 784)).astype("float32")
    pairs = lesson.deep_layers(code_dim=5)
    settings = argparse.Namespace(pretrain_epochs=2, batch_size=32, learning_rate=1e-3, seed=0,
                                  tensorboard=False)
    run = argparse.Namespace(checkpoint=lambda name, model: tmp_path / name)  # backup folders
    log = []
    stages = lesson.greedy_pretrain(pairs, x, settings, run,
                                    callbacks=[WeightSnapshots(pairs, log)])

    # Order and shapes: pixels -> 512 -> 256 -> 5, each stage trained on the one below's codes.
    assert [s.name for s in stages] == ["pretrain_stage_1", "pretrain_stage_2",
                                        "pretrain_stage_3"]
    assert [s.encoder for s in stages] == ["encoder_1", "encoder_2", "code"]
    assert [s.inputs.shape for s in stages] == [(64, 784), (64, 512), (64, 256)]
    np.testing.assert_array_equal(stages[0].inputs, x)
    for (encoder_layer, _), below, stage in zip(pairs, stages, stages[1:]):
        codes = keras.ops.convert_to_numpy(encoder_layer(below.inputs))
        np.testing.assert_allclose(stage.inputs, codes, rtol=1e-5, atol=1e-6)
    assert all(len(s.fitted.history["loss"]) == 2 and all(map(math.isfinite,
                                                              s.fitted.history["loss"]))
               for s in stages)

    # Stage k changes pair k only: the layers below are fixed, the ones above not yet built.
    assert len(log) == 6
    for k in range(3):
        (_, before), (_, after) = log[2 * k], log[2 * k + 1]
        for i, pair in enumerate(pairs):
            for layer in pair:
                if i > k:
                    assert after[layer.name] == [], layer.name
                    continue
                changed = any(not np.array_equal(a, b)
                              for a, b in zip(before[layer.name], after[layer.name]))
                assert changed == (i == k), (k, layer.name)

    # The stacked deep model is built from the same layers: its code is the stages' composition.
    model = lesson.build_deep(pairs, name="stacked")
    top = keras.ops.convert_to_numpy(pairs[-1][0](stages[-1].inputs))
    np.testing.assert_allclose(model.encoder.predict(x.reshape(64, 28, 28, 1), verbose=0), top,
                               rtol=1e-5, atol=1e-5)
    assert model.encoder.output_shape == (None, 5)
    assert model.decoder.output_shape == (None, 28, 28, 1)


def test_tiny_run_compares_pretraining_with_random_weights(lesson, tiny, small_mnist_npz):
    out, results = tiny.out, tiny.results
    assert_finite_numbers(results)
    assert "greedy pretraining first" in tiny.stdout
    assert list(results["stage_losses"]) == [f"pretrain_stage_{k}" for k in (1, 2, 3)]
    for approach in ("random_init", "greedy"):
        curve = results[f"{approach}_val_loss_by_epoch"]
        assert len(curve) == 3  # epoch 0, then the two epochs
        assert curve[0] == pytest.approx(results[f"{approach}_before_test_bce_nats"])
        assert curve[-1] == pytest.approx(results[f"{approach}_test_bce_nats"], rel=1e-4)
    # Before any end-to-end training the stacked stages already rebuild digits far better than
    # random weights do: the head start the method is known for.
    assert (results["greedy_before_test_bce_nats"]
            < 0.8 * results["random_init_before_test_bce_nats"])
    assert results["random_init_parameters"] == results["greedy_parameters"]
    assert_figures(out / "figures", FIGURES)

    dataset = data.load_dataset("mnist", path=small_mnist_npz)
    for approach in ("random_init", "greedy"):
        model = keras.models.load_model(out / "models" / f"pretraining_{approach}.keras")
        logits = model.predict(dataset.x_test, verbose=0)
        scores = common.metrics.reconstruction_errors(dataset.x_test, logits)
        assert scores["test_bce_nats"] == pytest.approx(results[f"{approach}_test_bce_nats"],
                                                        rel=1e-5)
