"""The VQ-VAE lesson: the quantizer (nearest code, straight-through gradient, where its two terms
send their gradients), the EMA codebook, the re-seeding of dead codes, the PixelCNN's causality
and its sampling, and a tiny run whose negative ELBO is recomputed from its saved models in a
fresh process."""

import json
import math
import subprocess
import sys

import keras
import numpy as np
import pytest

from conftest import ROOT
from conftest import assert_figure
from conftest import assert_figures
from conftest import assert_finite_numbers
from conftest import assert_usage_error
from conftest import jacobian

NAME = "VQVAE"
FIGURES = ["vqvae_reconstructions.png", "vqvae_code_grids.png", "vqvae_codebook_usage.png",
           "vqvae_prior_samples.png", "vqvae_uniform_samples.png"]
MODELS = ["vqvae", "vqvae_encoder", "vqvae_decoder", "pixelcnn_prior"]


@pytest.fixture(scope="module")
def lesson(lessons):
    return lessons[NAME]


@pytest.fixture(scope="module")
def tiny(tiny_run):
    return tiny_run(NAME)


def grids(seed, shape=(2, 2, 3, 4)):
    return np.random.default_rng(seed).normal(size=shape).astype("float32")


def gradient(fn, x):
    """d fn(x) / d x for a scalar fn, by the backend's autodiff; zeros where fn does not depend
    on x at all (TensorFlow would answer None: the added 0 * sum(x) connects them)."""
    return jacobian(lambda v: fn(v) + 0.0 * keras.ops.sum(v), x)


@pytest.mark.parametrize("argv, message", [
    (["--codebook-size", "1"], "--codebook-size: must be at least 2"),
    (["--codebook-size", "1025"], "--codebook-size: must be at most 1,024"),
    (["--code-dim", "0"], "--code-dim: must be a positive integer, got '0'"),
    (["--code-dim", "257"], "--code-dim: must be at most 256"),
    (["--beta", "-1"], "--beta: must be a number >= 0, got '-1'"),
    (["--prior-epochs", "0"], "--prior-epochs: must be a positive integer, got '0'"),
])
def test_bad_values_stop_with_one_line_and_status_2(lesson, tmp_path, capsys, argv, message):
    assert_usage_error(lesson.main, f"{NAME}.py", argv, tmp_path, capsys, message)


# -- The quantizer ------------------------------------------------------------------------------

@pytest.mark.every_backend
def test_the_quantizer_returns_exactly_the_nearest_codebook_vectors(lesson):
    z_e, codebook = grids(0), grids(1, (6, 4))
    layer = lesson.VectorQuantizer(6)
    layer.build(z_e.shape)
    layer.codebook.assign(codebook)
    z_q = keras.ops.convert_to_numpy(layer(z_e)).reshape(-1, 4)
    distances = ((z_e.reshape(-1, 1, 4).astype(np.float64) - codebook[None]) ** 2).sum(-1)
    nearest = np.argmin(distances, axis=1)
    assert len(set(nearest)) > 2  # not a trivial case: several codes are chosen
    np.testing.assert_array_equal(z_q, codebook[nearest])  # bit for bit, not nearly
    codes = keras.ops.convert_to_numpy(lesson.nearest_codes(z_e, codebook))
    assert codes.shape == (2, 2, 3) and np.array_equal(codes.ravel(), nearest)


@pytest.mark.every_backend
def test_the_straight_through_gradient_is_the_identity_into_z_e(lesson):
    z_e, codebook = grids(2), grids(3, (5, 4))
    constant_z, constant_codebook = map(keras.ops.convert_to_tensor, (z_e, codebook))
    through = jacobian(lambda z: lesson.quantize(z, constant_codebook)[0], z_e)  # dz_q / dz_e
    np.testing.assert_allclose(through.reshape(z_e.size, z_e.size), np.eye(z_e.size), atol=1e-6)
    # ... and the decoder's gradient does not reach the codebook through z_q.
    to_codebook = gradient(
        lambda c: keras.ops.sum(lesson.quantize(constant_z, c)[0] * constant_z), codebook)
    np.testing.assert_array_equal(to_codebook, 0)


@pytest.mark.every_backend
def test_the_codebook_and_commitment_terms_move_different_things(lesson):
    z_e, codebook = grids(4), grids(5, (5, 4))
    batch = len(z_e)
    codes = keras.ops.convert_to_numpy(lesson.nearest_codes(z_e, codebook))
    nearest = codebook[codes]
    constant_z, constant_codebook = map(keras.ops.convert_to_tensor, (z_e, codebook))
    terms = lesson.quantize(constant_z, constant_codebook)[2:]
    terms = [float(keras.ops.convert_to_numpy(term)) for term in terms]
    assert terms[0] == pytest.approx(terms[1])  # equal values ...
    assert terms[0] == pytest.approx(((z_e - nearest) ** 2).sum() / batch, rel=1e-5)
    # ... the codebook term moves only the codebook, towards the vectors that chose each code
    codebook_term_z = gradient(lambda z: lesson.quantize(z, constant_codebook)[2], z_e)
    codebook_term_e = gradient(lambda c: lesson.quantize(constant_z, c)[2], codebook)
    np.testing.assert_array_equal(codebook_term_z, 0)
    expected = np.zeros_like(codebook)
    np.add.at(expected, codes.ravel(), 2 * (nearest - z_e).reshape(-1, 4) / batch)
    np.testing.assert_allclose(codebook_term_e, expected, rtol=1e-5, atol=1e-6)
    # ... and the commitment term only the encoder's output, towards its code
    commitment_z = gradient(lambda z: lesson.quantize(z, constant_codebook)[3], z_e)
    commitment_e = gradient(lambda c: lesson.quantize(constant_z, c)[3], codebook)
    np.testing.assert_allclose(commitment_z, 2 * (z_e - nearest) / batch, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(commitment_e, 0)


@pytest.mark.every_backend
def test_the_decoders_gradient_reaches_the_encoder(lesson):
    keras.utils.set_random_seed(0)
    _, _, _, vqvae = lesson.build_vqvae(8, 4, 0.25, ema=False, summary=False)
    image = np.random.default_rng(0).random((1, 28, 28, 1)).astype("float32")
    through = jacobian(lambda x: keras.ops.sum(vqvae(x)), image)  # only path: via z_e
    assert np.abs(through).max() > 1e-4  # zero, if the quantizer returned e_k as it is


@pytest.mark.every_backend
def test_the_layer_adds_its_terms_and_keeps_them_for_the_log(lesson):
    z_e, codebook = grids(6), grids(7, (5, 4))
    for ema, expected in ((False, lambda c, m: c + 0.5 * m), (True, lambda c, m: 0.5 * m)):
        layer = lesson.VectorQuantizer(5, beta=0.5, ema=ema)
        layer.build(z_e.shape)
        layer.codebook.assign(codebook)
        layer(z_e)
        codebook_term, commitment_term = (
            float(keras.ops.convert_to_numpy(term)) for term in layer.last_terms)
        added = float(keras.ops.convert_to_numpy(layer.losses[0]))
        assert added == pytest.approx(expected(codebook_term, commitment_term))
        assert [w.name for w in layer.trainable_weights] == ([] if ema else ["codebook"])
        # The values are equal, so only the gradient tells which term beta weighs: the
        # commitment term's, 2 beta (z_e - e) / batch into z_e, the codebook term adding none.
        nearest = codebook[keras.ops.convert_to_numpy(lesson.nearest_codes(z_e, codebook))]

        def added_loss(z):
            layer(z)
            return layer.losses[0]

        np.testing.assert_allclose(gradient(added_loss, z_e), 0.5 * 2 * (z_e - nearest) / 2,
                                   rtol=1e-5, atol=1e-6)


@pytest.mark.every_backend
def test_the_ema_codebook_is_the_moving_average_of_its_vectors(lesson):
    z_e, codebook = grids(8), grids(9, (5, 4))
    layer = lesson.VectorQuantizer(5, ema=True)
    layer.build(z_e.shape)
    layer.codebook.assign(codebook)
    layer.code_sums.assign(codebook)
    layer(z_e, training=False)  # inference changes nothing
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer.codebook), codebook)
    layer(z_e, training=True)
    codes = np.argmin(((z_e.reshape(-1, 1, 4) - codebook[None]) ** 2).sum(-1), axis=1)
    one_hot = np.eye(5)[codes]
    counts = 0.99 * 1.0 + 0.01 * one_hot.sum(0)
    sums = 0.99 * codebook + 0.01 * one_hot.T @ z_e.reshape(-1, 4)
    smoothed = (counts + 1e-5) / (counts.sum() + 5e-5) * counts.sum()
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer.code_counts), counts, rtol=1e-6)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer.codebook),
                               sums / smoothed[:, None], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("ema", [False, True])
def test_the_logged_loss_adds_up_and_ema_trains_no_codebook_weight(lesson, ema):
    keras.utils.set_random_seed(0)
    _, quantizer, _, vqvae = lesson.build_vqvae(8, 4, 0.5, ema=ema, summary=False)
    lesson.compile_vqvae(vqvae, 1e-3)
    x = (np.random.default_rng(0).random((64, 28, 28, 1)) < 0.2).astype("float32")
    before = keras.ops.convert_to_numpy(quantizer.codebook)
    history = vqvae.fit(x, x, validation_data=(x, x), batch_size=32, epochs=1, verbose=0).history
    codebook_weight = 0.0 if ema else 1.0
    for prefix in ("", "val_"):
        assert history[f"{prefix}codebook_loss"] == pytest.approx(
            history[f"{prefix}commitment_loss"])
        assert history[f"{prefix}loss"][0] == pytest.approx(
            history[f"{prefix}reconstruction_loss"][0]
            + codebook_weight * history[f"{prefix}codebook_loss"][0]
            + 0.5 * history[f"{prefix}commitment_loss"][0], rel=1e-4)
    assert not np.array_equal(keras.ops.convert_to_numpy(quantizer.codebook), before)  # moved
    assert any("codebook" in v.path for v in vqvae.trainable_variables) != ema


def test_dead_codes_are_moved_onto_encoder_outputs(lesson):
    keras.utils.set_random_seed(0)
    encoder, quantizer, _, _ = lesson.build_vqvae(8, 4, 0.25, ema=True, summary=False)
    images = (np.random.default_rng(0).random((30, 28, 28, 1)) < 0.2).astype("float32")
    z_e = keras.ops.convert_to_numpy(encoder(images)).reshape(-1, 4)
    codebook = np.full((8, 4), 100.0, "float32")
    codebook[:2] = z_e[:2]  # codes 0 and 1 sit on encoder outputs; 2 to 7, far away, are dead
    quantizer.codebook.assign(codebook)
    logs = {}
    lesson.ReseedDeadCodes(encoder, quantizer, images, seed=0).on_epoch_end(0, logs)
    moved = keras.ops.convert_to_numpy(quantizer.codebook)
    assert logs["reseeded_codes"] == 6
    np.testing.assert_array_equal(moved[:2], codebook[:2])  # the live codes stay
    for vector in moved[2:]:  # each dead one is now one of the encoder's vectors, exactly
        assert (np.abs(z_e - vector).max(axis=1) == 0).any()
    assert len(np.unique(lesson.encode(encoder, quantizer, images)[1])) > 2  # and chosen
    # Under --ema the moving averages restart at the new vector, counted once.
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(quantizer.code_counts)[2:], 1.0)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(quantizer.code_sums)[2:],
                                  moved[2:])


def test_the_settings_compared(lesson):
    parse = lesson.parse_args
    assert lesson.compared_settings(parse([])) == ["plain", "ema", "reseed"]
    assert lesson.compared_settings(parse(["--reseed-dead-codes"])) == ["reseed", "plain", "ema"]
    both = parse(["--ema", "--reseed-dead-codes", "--no-comparison"])
    assert lesson.chosen_setting(both) == "ema_reseed"
    assert lesson.compared_settings(both) == ["ema_reseed"]


# -- The prior ----------------------------------------------------------------------------------

@pytest.mark.every_backend
def test_the_pixelcnn_never_sees_the_code_it_predicts_or_any_after_it(lesson):
    keras.utils.set_random_seed(0)
    prior = lesson.build_prior(5, summary=False)
    rng = np.random.default_rng(0)
    embedding = prior.get_layer("code_embedding")  # larger than at initialisation: clear signals
    embedding.set_weights([rng.normal(size=embedding.weights[0].shape).astype("float32")])
    codes = rng.integers(5, size=(1, 7, 7)).astype("int32")
    before = keras.ops.convert_to_numpy(prior(codes)).reshape(49, 5)
    for position in (0, 9, 24, 48):
        changed = codes.copy()
        changed.reshape(-1)[position] = (changed.reshape(-1)[position] + 1) % 5
        after = keras.ops.convert_to_numpy(prior(changed)).reshape(49, 5)
        # Positions up to and including this one read only the earlier codes: unchanged.
        np.testing.assert_allclose(after[:position + 1], before[:position + 1], atol=1e-6)
        if position < 48:  # the next position does read it
            assert np.abs(after[position + 1] - before[position + 1]).max() > 1e-4


@pytest.mark.every_backend
def test_samples_follow_the_prior_one_position_at_a_time(lesson):
    keras.utils.set_random_seed(0)
    prior = lesson.build_prior(4, summary=False)
    layer = prior.get_layer("code_logits")
    kernel, bias = (keras.ops.convert_to_numpy(w) for w in layer.weights)
    layer.set_weights([np.zeros_like(kernel), np.array([0, 0, 30, 0], "float32")])  # always 2
    codes = lesson.sample_codes(prior, 3, seed=1)
    assert codes.shape == (3, 7, 7) and codes.dtype == np.int32 and np.all(codes == 2)
    layer.set_weights([kernel, bias])  # a random network: draws differ, and repeat by seed
    first, again = (lesson.sample_codes(prior, 3, seed=1) for _ in range(2))
    np.testing.assert_array_equal(first, again)
    assert len(np.unique(first)) > 1


def test_the_vaes_number_is_read_only_for_the_same_test_images(lesson, tmp_path):
    header = {"dataset": "mnist", "data_source": "offline", "test_examples": 1000,
              "binarize": "dynamic", "seed": 0}
    assert lesson.vae_neg_elbo(header, tmp_path) is None  # no results file
    (tmp_path / "results").mkdir()
    path = tmp_path / "results" / "VariationalAutoEncoder_tf2.json"
    path.write_text(json.dumps({**header, "test_neg_elbo_nats": 168.7}))
    assert lesson.vae_neg_elbo(header, tmp_path) == 168.7
    assert lesson.vae_neg_elbo({**header, "seed": 1}, tmp_path) is None  # other test images
    path.write_text("{not json")
    assert lesson.vae_neg_elbo(header, tmp_path) is None


# -- A tiny run ---------------------------------------------------------------------------------

def test_tiny_run_scores_the_binarized_test_split(tiny):
    results = tiny.results
    assert_finite_numbers(results)
    assert results["train_examples"] == 600 and results["test_examples"] == 200
    assert results["test_uniform_prior_nats"] == pytest.approx(49 * math.log(32))
    assert results["test_neg_elbo_nats"] == pytest.approx(
        results["test_reconstruction_nats"] + results["test_prior_nats"])
    assert results["test_neg_elbo_uniform_nats"] == pytest.approx(
        results["test_reconstruction_nats"] + 49 * math.log(32))
    assert results["test_prior_nats"] < results["test_uniform_prior_nats"]  # the prior learned
    assert results["test_reconstruction_nats"] < 400  # well below the untrained network's 543
    assert 2 <= results["codes_used"] <= 32 and 1 <= results["code_perplexity"] <= 32
    assert 1 / 32 < results["prior_next_code_accuracy"] <= 1
    assert list(results["compared"]) == ["plain"]  # TINY_ARGS: --no-comparison
    assert results["vae_neg_elbo_nats"] is None  # no VAE results in its --out
    assert "negative ELBO, PixelCNN prior" in tiny.stdout
    for name in ("codebook_loss", "commitment_loss", "next_code_accuracy"):
        assert f" - {name}: " in tiny.stdout and f" - val_{name}: " in tiny.stdout
    assert_figures(tiny.out / "figures", FIGURES)
    assert sorted(p.stem for p in (tiny.out / "models").glob("*.keras")) == sorted(MODELS)


RECOMPUTE = """
import json, sys
import numpy as np
import VQVAE  # registers the lesson's layers and losses
import keras
from keras import ops
from common import data

models, npz = sys.argv[1], sys.argv[2]
loaded = {name: keras.models.load_model(f"{models}/{name}.keras")
          for name in ("vqvae", "vqvae_encoder", "vqvae_decoder", "pixelcnn_prior")}
x = data.test_inputs(data.load_dataset("mnist", npz), "dynamic", 0).astype(np.float64)
codebook = ops.convert_to_numpy(loaded["vqvae"].get_layer("quantizer").codebook)
z_e = loaded["vqvae_encoder"].predict(x, verbose=0).reshape(len(x), 49, 1, -1)
codes = np.argmin(((z_e - codebook) ** 2).sum(-1), axis=-1).reshape(-1, 7, 7).astype("int32")
logits = loaded["vqvae"].predict(x, verbose=0).astype(np.float64)
decoded = loaded["vqvae_decoder"].predict(codebook[codes], verbose=0)
# -log p(x | z_q) = sum of softplus(l) - x l over the pixels; -log p(k) = sum of -log softmax
reconstruction = (np.logaddexp(0, logits) - x * logits).reshape(len(x), -1).sum(1)
code_logits = loaded["pixelcnn_prior"].predict(codes, verbose=0).astype(np.float64)
log_p = code_logits - np.log(np.exp(code_logits).sum(-1, keepdims=True))
prior = -np.take_along_axis(log_p, codes[..., None], -1).reshape(len(x), -1).sum(1)
print(json.dumps({"reconstruction": reconstruction.mean(), "prior": prior.mean(),
                  "decoder_agrees": float(np.abs(decoded - logits).max())}))
"""


def test_saved_models_give_the_reported_negative_elbo_in_a_fresh_process(tiny, small_mnist_npz):
    done = subprocess.run([sys.executable, "-c", RECOMPUTE, str(tiny.out / "models"),
                           str(small_mnist_npz)], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    recomputed = json.loads(done.stdout.strip().splitlines()[-1])
    results = tiny.results
    assert recomputed["reconstruction"] == pytest.approx(results["test_reconstruction_nats"],
                                                         rel=1e-5)
    assert recomputed["prior"] == pytest.approx(results["test_prior_nats"], rel=1e-5)
    assert recomputed["reconstruction"] + recomputed["prior"] == pytest.approx(
        results["test_neg_elbo_nats"], rel=1e-5)
    assert recomputed["decoder_agrees"] < 1e-4  # the model is encoder, quantizer, decoder


def test_usage_and_perplexity_and_the_comparison_of_codebooks(lesson, tmp_path):
    from common import training

    images = (np.random.default_rng(0).random((16, 28, 28, 1)) < 0.2).astype("float32")
    runs = {}
    for setting in ("plain", "ema", "reseed"):
        keras.utils.set_random_seed(0)
        encoder, quantizer, decoder, model = lesson.build_vqvae(8, 4, 0.25, setting == "ema",
                                                                summary=False)
        quantizer.codebook.assign(grids(10, (8, 4)))
        codes = lesson.encode(encoder, quantizer, images)[1]
        scores, usage = lesson.evaluate_vqvae(decoder, quantizer, images, codes)
        shares = np.bincount(codes.ravel(), minlength=8) / codes.size
        assert scores["codes_used"] == len(np.unique(codes)) == np.count_nonzero(usage) > 1
        assert scores["code_perplexity"] == pytest.approx(
            np.exp(-sum(p * np.log(p) for p in shares if p > 0)))
        logits = keras.ops.convert_to_numpy(model(images))  # scored as the model outputs
        assert scores["test_reconstruction_nats"] == pytest.approx(
            float(np.mean(keras.ops.convert_to_numpy(lesson.bernoulli_nll(images, logits)))),
            rel=1e-5)
        history = {"loss": [1.0, 1.0], **({"reseeded_codes": [3.0, 2.0]}
                                          if setting == "reseed" else {})}
        fitted = training.Fitted(history=history, epoch_seconds=[0.5, 0.25])
        runs[setting] = lesson.Trained(encoder, quantizer, decoder, model, fitted, scores, codes,
                                       usage)
    compared = lesson.compare(runs)
    assert list(compared) == ["plain", "ema", "reseed"]
    assert [c["reseeded_codes"] for c in compared.values()] == [0, 0, 5]
    assert compared["ema"]["train_seconds"] == 0.75
    lesson.plot_code_usage(runs, tmp_path / "three.png", "three codebooks")
    lesson.plot_code_usage({"plain": runs["plain"]}, tmp_path / "one.png", "one codebook")
    three, one = assert_figure(tmp_path / "three.png"), assert_figure(tmp_path / "one.png")
    assert three.shape[0] > one.shape[0] + 200  # a panel for each
