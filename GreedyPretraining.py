r"""Greedy layer-wise pretraining of a deep autoencoder on MNIST, in Keras 3 (any backend).

Deep autoencoders were first trained greedily, one layer at a time (Hinton and Salakhutdinov,
2006, with RBMs; Bengio et al., 2007, with autoencoders, as here). Stage k trains a shallow
autoencoder on the codes h_{k-1} of the layers below, already trained and now fixed (h_0 = x):

    $$ \text{stage } k: \quad \min_{f_k, g_k}\ \mathbb{E} \big\|h_{k-1} - g_k(f_k(h_{k-1}))\big\|,
       \qquad h_k = f_k(h_{k-1}) $$

then the encoders f_1..f_n and the decoders g_n..g_1 are stacked into one deep autoencoder
(784-512-256-code and mirrored), and fine-tuned end to end. The lesson trains that deep model
twice, from the same seed and the same batches: from random weights, and after greedy
pretraining; it scores both on the test split before the first end-to-end epoch and after each
one. With ReLUs, good initialisations and Adam the method is rarely needed today; the numbers
show what it still buys (a head start) and what it costs (the stages' time).

    python GreedyPretraining.py                         # code size 32, 3 stages of 10 epochs
    python GreedyPretraining.py --pretrain-epochs 20
    python GreedyPretraining.py --code-dim 8 --epochs 50

It writes results/GreedyPretraining.json (its timings among them), models/pretraining_*.keras
and figures/pretraining_*.png; Ctrl-C, then the same command, resumes. The saved models load in
a fresh process after `import common`, which registers their loss.
"""

from typing import NamedTuple

import common  # first: quiets TensorFlow's start-up logs, registers the suite's Keras objects
import keras
import matplotlib.pyplot as plt
import numpy as np
from keras import layers, ops
from matplotlib import ticker

from common import cli, data, losses, metrics, outputs, plots, training

SCRIPT_NAME = "GreedyPretraining"
PIXELS = int(np.prod(data.IMAGE_SHAPE))
DEEP_UNITS = (512, 256)  # the deep encoder: 784-512-256-code, decoder mirrored
APPROACHES = {"random_init": "from random weights", "greedy": "greedy pretraining first"}


def parse_args(argv=None):
    parser = cli.base_parser(SCRIPT_NAME, epochs=30, batch_size=128, learning_rate=1e-3)
    lesson = parser.add_argument_group("this lesson")
    lesson.add_argument("--code-dim", type=cli.positive_int, default=32,
                        help=f"size of the code, below {DEEP_UNITS[-1]}")
    lesson.add_argument("--pretrain-epochs", type=cli.positive_int, default=10,
                        help="epochs of each stage of the pretraining (--epochs: end to end)")
    lesson.add_argument("--binarize", choices=data.BINARIZATIONS, default="none",
                        help="train and score on grey levels (none) or on binary pixels")
    args = parser.parse_args(argv)
    if args.code_dim >= DEEP_UNITS[-1]:
        parser.error(f"argument --code-dim: must be below {DEEP_UNITS[-1]} for an undercomplete "
                     f"deep model, got {args.code_dim}")
    return args


def main(argv=None):
    args = parse_args(argv)
    dataset = data.load_dataset(args.dataset, args.data, args.limit)  # checked before all else
    run = outputs.start(args, SCRIPT_NAME, dataset)  # output folders, devices, seeds
    trained = {approach: train(approach, dataset, args, run) for approach in APPROACHES}
    results = {**run.header, **compare(trained)}
    draw_figures(trained, results, dataset, args, run.figures)
    run.finish(results, pretraining_random_init=trained["random_init"].model.autoencoder,
               pretraining_greedy=trained["greedy"].model.autoencoder)
    print_summary(results)


# -- Data: the digits as the model sees them ------------------------------------------------------
# Grey levels by default. The pretraining stages see the training images as the deep model does:
# the grey levels, or with --binarize static (and, for the stages, dynamic) the draw of --seed.

def training_inputs(dataset, args):
    images = dataset.x_train if args.binarize == "none" else data.binarize(dataset.x_train,
                                                                           args.seed)
    return images.reshape(len(images), -1)


# -- Model: the deep autoencoder as pairs of layers, from the pixels inwards ----------------------
# Pair k is the shallow autoencoder of stage k: f_k maps the codes of layer k - 1 (the pixels for
# k = 1) to layer k, and g_k maps them back. The code layer f_n is linear, g_1 gives pixel logits.
# `build_deep` stacks the very same layer objects, so fine-tuning starts where the stages ended.
# The code and the logits compute in float32 even under --mixed-precision.

class Autoencoder(NamedTuple):
    encoder: keras.Model
    decoder: keras.Model
    autoencoder: keras.Model


def deep_layers(code_dim):
    widths = (*DEEP_UNITS, code_dim)
    hidden = len(DEEP_UNITS)  # layers below the code; the code and the logits are float32
    encoders = [layers.Dense(width, activation="relu" if k < hidden else None,
                             name=f"encoder_{k + 1}" if k < hidden else "code",
                             dtype=None if k < hidden else "float32")
                for k, width in enumerate(widths)]
    decoders = [layers.Dense(width, activation="relu" if k > 0 else None,
                             name=f"decoder_{k + 1}" if k > 0 else "pixel_logits",
                             dtype=None if k > 0 else "float32")
                for k, width in enumerate((PIXELS, *DEEP_UNITS))]
    return list(zip(encoders, decoders))


def build_deep(pairs, name):
    """x -> f_1 -> ... -> f_n (the code) -> g_n -> ... -> g_1 (pixel logits)."""
    images = keras.Input(shape=data.IMAGE_SHAPE, name="image")
    x = layers.Flatten(name="flatten")(images)
    for encoder_layer, _ in pairs:
        x = encoder_layer(x)
    encoder = keras.Model(images, x, name=f"{name}_encoder")
    code = x = keras.Input(shape=(pairs[-1][0].units,), name="code")
    for _, decoder_layer in reversed(pairs):
        x = decoder_layer(x)
    decoder = keras.Model(code, layers.Reshape(data.IMAGE_SHAPE, name="image_logits",
                                               dtype="float32")(x), name=f"{name}_decoder")
    return Autoencoder(encoder, decoder, keras.Model(images, decoder(encoder(images)),
                                                     name=f"{name}_autoencoder"))


# -- Loss: stage 1 and end to end, the cross-entropy in nats per image ---------------------------
# $$ -\sum_i \big[x_i \log \hat{x}_i + (1 - x_i) \log(1 - \hat{x}_i)\big] $$
# per image, from the logits; stages 2 and up rebuild unbounded ReLU codes, so their loss is the
# squared error. Every stage, and the fine-tuning, uses Adam at --learning-rate.

def stage_loss(k):
    return losses.bernoulli_nll if k == 0 else keras.losses.MeanSquaredError()


def compile_model(model, loss, learning_rate):
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss=loss)
    training.set_execution(model)  # steps per call and jax.jit, for this backend


# -- Training: Keras's fit, for every stage and for both deep models ------------------------------
# With two callbacks of common/training.py: a backup after every epoch, so that Ctrl-C and the
# same command resume (each model, stage or deep, under its own name), and a stop at the first
# NaN or exploding loss; with --tensorboard, Keras's TensorBoard too.

def fit_model(model, name, batches, epochs, args, run, validation_data=None, callbacks=()):
    backup = training.ResumableBackup(run.checkpoint(name, model), batches)
    watched = batches if validation_data is None else validation_data
    callbacks = [training.StopOnDivergence(model, watched), backup, *callbacks]
    if args.tensorboard:
        callbacks.append(keras.callbacks.TensorBoard(run.logs(name)))
    model.fit(batches, validation_data=validation_data, epochs=epochs, callbacks=callbacks,
              shuffle=False, verbose=2)  # the batches shuffle themselves, per epoch
    return backup.fitted()


# -- Greedy layer-wise pretraining: one pair of layers at a time ----------------------------------
# Stage k joins f_k and g_k into a shallow autoencoder and trains it on h_{k-1}, the codes of the
# stages below, computed once by their trained encoders: the layers below stay as they are. Its
# training data are (h, h) pairs, reshuffled every epoch with --seed.

class Stage(NamedTuple):
    name: str
    encoder: str          # the layer f_k it trained
    inputs: np.ndarray    # what it trained on: h_{k-1}
    fitted: training.Fitted


def greedy_pretrain(pairs, images, args, run, callbacks=()):
    """Train the pairs one after another, each on the codes of the ones below; return the stages.

    `images` are flat (N, 784); `callbacks` are added to those of every stage.
    """
    inputs, stages = images, []
    for k, (encoder_layer, decoder_layer) in enumerate(pairs):
        codes = keras.Input(shape=(inputs.shape[1],), name=f"codes_{k}")
        stage = keras.Model(codes, decoder_layer(encoder_layer(codes)),
                            name=f"pretrain_stage_{k + 1}")
        compile_model(stage, stage_loss(k), args.learning_rate)
        batches = data.batches((inputs, inputs), args.batch_size, args.seed)
        fitted = fit_model(stage, stage.name, batches, args.pretrain_epochs, args, run,
                           callbacks=callbacks)
        stages.append(Stage(stage.name, encoder_layer.name, inputs, fitted))
        # The next stage's training data, in float32 like its Input (under --mixed-precision the
        # hidden layers compute in bfloat16).
        inputs = ops.convert_to_numpy(ops.cast(encoder_layer(inputs), "float32"))
    return stages


# -- Evaluation on the test split -----------------------------------------------------------------
# Each deep model is scored before its first end-to-end epoch (the pretrained one: the stages
# simply stacked) and after its last, by the cross-entropy and the squared error per pixel.

def evaluate(model, test_inputs):
    """Test cross-entropy and squared error of the model as it is, and its reconstructions."""
    logits = training.predict(model.autoencoder, test_inputs)
    return (metrics.reconstruction_errors(test_inputs, logits),
            ops.convert_to_numpy(ops.sigmoid(logits)))


# -- The comparison: the deep model from random weights, or pretrained, then end to end -----------
# The same seed for both: the same initial weights (drawn as the layers are created) and the
# same batches, so the pretraining is the only difference. The test loss by epoch starts at
# epoch 0, before end-to-end training.

class Trained(NamedTuple):
    model: Autoencoder
    stages: list              # the pretraining stages (none from random weights)
    before: dict              # test scores before the first end-to-end epoch
    fitted: training.Fitted
    after: dict               # test scores after the last
    images_before: np.ndarray  # test reconstructions before and after end-to-end training
    images_after: np.ndarray


def train(approach, dataset, args, run):
    keras.utils.set_random_seed(args.seed)
    train_ds, test_ds, test_inputs = data.autoencoder_datasets(
        dataset, args.batch_size, args.binarize, args.seed)
    pairs = deep_layers(args.code_dim)
    stages = []
    if approach == "greedy":
        print(f"\n-- greedy layer-wise pretraining: {len(pairs)} stages of "
              f"{args.pretrain_epochs} epochs --")
        stages = greedy_pretrain(pairs, training_inputs(dataset, args), args, run)
    model = build_deep(pairs, approach)
    compile_model(model.autoencoder, losses.bernoulli_nll, args.learning_rate)
    before, images_before = evaluate(model, test_inputs)
    print(f"\n-- training the deep autoencoder end to end, {APPROACHES[approach]} --")
    fitted = fit_model(model.autoencoder, approach, train_ds, args.epochs, args, run,
                       validation_data=test_ds)
    after, images_after = evaluate(model, test_inputs)
    return Trained(model, stages, before, fitted, after, images_before, images_after)


def compare(trained):
    """greedy_... and random_init_... side by side; the test loss by epoch, from epoch 0."""
    stages = trained["greedy"].stages
    results = {"stage_losses": {stage.name: stage.fitted.history["loss"] for stage in stages},
               "pretraining_seconds": sum(stage.fitted.results()["train_seconds"]
                                          for stage in stages)}
    for approach, outcome in trained.items():
        scores = {**outcome.after, **{f"before_{k}": v for k, v in outcome.before.items()},
                  "val_loss_by_epoch": [outcome.before["test_bce_nats"],
                                        *outcome.fitted.history["val_loss"]],
                  "parameters": int(outcome.model.autoencoder.count_params()),
                  **outcome.fitted.results()}
        results.update({f"{approach}_{k}": v for k, v in scores.items()})
    return results


# -- Figures, all from the test split -------------------------------------------------------------

def draw_figures(trained, results, dataset, args, folder):
    title = (f"{dataset.title} deep autoencoder, code size {args.code_dim}, "
             "with and without greedy pretraining")
    stages = len(trained["greedy"].stages)
    plot_curves(results, stages, args, folder / "pretraining_curves.png",
                f"{title}\ntest loss before end-to-end training (epoch 0) and after each epoch")
    picked = data.examples_per_class(dataset.y_test, 2)
    rows = [data.test_inputs(dataset, args.binarize, args.seed)[picked],
            trained["greedy"].images_before[picked], trained["greedy"].images_after[picked],
            trained["random_init"].images_after[picked]]
    labels = ["test image", f"{stages} stages stacked,\nnot fine-tuned",
              f"stacked, then\n{args.epochs} epochs end to end",
              f"random weights,\n{args.epochs} epochs end to end"]
    plots.plot_image_rows(rows, labels, folder / "pretraining_reconstructions.png",
                          f"{title}\ntest digits and their reconstructions")


def plot_curves(results, stages, args, path, title):
    """Test cross-entropy per epoch of both runs, on a log scale with ticks at round numbers."""
    colors = {"random_init": "tab:red", "greedy": "tab:green"}
    curves = {approach: results[f"{approach}_val_loss_by_epoch"] for approach in APPROACHES}
    with plt.style.context(plots.STYLE):
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for approach, losses_by_epoch in curves.items():
            label = APPROACHES[approach] + (f"\n({stages} stages x {args.pretrain_epochs} "
                                            "epochs)" if approach == "greedy" else "")
            ax.plot(range(len(losses_by_epoch)), losses_by_epoch, color=colors[approach],
                    marker=".", label=f"{label}: {losses_by_epoch[-1]:.1f} at epoch "
                                      f"{len(losses_by_epoch) - 1}")
        ax.set_yscale("log")
        low = min(min(c) for c in curves.values())
        high = max(max(c) for c in curves.values())
        pad = max((high / low) ** 0.04, 1.005)  # 4% of the log range; a tick must not stretch it
        bottom, top = low / pad, high * pad
        ax.set_ylim(bottom, top)
        ticks = [t for t in (50, 60, 70, 80, 100, 120, 150, 200, 300, 500, 700, 1000, 2000)
                 if bottom <= t <= top]
        if len(ticks) < 2:  # a narrow range (a short run): evenly spaced round numbers instead
            ticks = [t for t in ticker.MaxNLocator(4).tick_values(bottom, top)
                     if bottom <= t <= top]
        ax.set_yticks(ticks, [f"{t:g}" for t in ticks])
        ax.minorticks_off()
        ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
        ax.set(title=title, xlabel="epoch of end-to-end training (0: before the first)",
               ylabel="test cross-entropy, nats per image")
        ax.grid(alpha=0.3)
        ax.legend(loc="center right")
        plots.save_figure(fig, path)


# -- Summary -------------------------------------------------------------------------------------

def print_summary(results):
    print(f"\n{SCRIPT_NAME} on {results['test_examples']:,} held-out test images "
          f"({results['binarize']} binarization), code size {results['code_dim']}; "
          "test cross-entropy in nats per image:")
    print(f"  {'':28s} {'before':>9s} {'after':>9s} {'MSE/pixel':>10s} {'seconds':>8s}")
    for approach, title in APPROACHES.items():
        seconds = results[f"{approach}_train_seconds"] + (
            results["pretraining_seconds"] if approach == "greedy" else 0.0)
        print(f"  {title:28s} {results[f'{approach}_before_test_bce_nats']:9.2f} "
              f"{results[f'{approach}_test_bce_nats']:9.2f} "
              f"{results[f'{approach}_test_mse_per_pixel']:10.5f} {seconds:8.1f}")
    print("  pretraining stages, training loss at the last epoch: " + ", ".join(
        f"{name} {values[-1]:.4g}" for name, values in results["stage_losses"].items()))


if __name__ == "__main__":
    cli.run(main)
