"""The `Sampling` layer of the VAE and the CVAE, the closed-form KL it adds to the loss (also used
to score the test split), and `PenalizedModel`, which logs each penalty a layer adds, on every
Keras backend. All are registered, so saved models load after `import common`.

A penalty layer (`Sampling` here, the sparsity and contractive layers of their lessons) adds its
weighted term to the model's loss with `add_penalty`, which calls `add_loss` and keeps the
unweighted term of this forward pass; `PenalizedModel.compute_loss` hands that term to a `Mean`
metric named after the layer's `penalty_name`, so `kl_loss` and `val_kl_loss` show in the log and
in `history.history`. (A metric updated inside a layer's `call` works on TensorFlow and PyTorch
but not on JAX, whose forward pass is stateless; `compute_loss` runs where every backend keeps
the metrics' state.)
"""

import keras
from keras import layers
from keras import ops


def add_penalty(layer, value, weight):
    """Add `weight * value` to the loss of the model that calls `layer` (with `add_loss`), and
    keep the unweighted `value` for `PenalizedModel` to log as `layer.penalty_name`."""
    layer.add_loss(weight * value)
    layer.last_penalty = value


@keras.saving.register_keras_serializable(package="autoencoders")
class PenalizedModel(keras.Model):
    """A functional `keras.Model` (built as `PenalizedModel(inputs, outputs, name=...)`) that
    logs, beside its loss, the unweighted term of every penalty layer in it, nested models
    included: a `Mean` metric per layer, named by its `penalty_name`."""

    def __init__(self, inputs, outputs, name=None, **kwargs):
        super().__init__(inputs, outputs, name=name, **kwargs)
        self.penalty_trackers = [keras.metrics.Mean(name=layer.penalty_name)
                                 for layer in penalty_layers(self)]

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        loss = super().compute_loss(x, y, y_pred, sample_weight, training=training)
        for layer, tracker in zip(penalty_layers(self), self.penalty_trackers):
            tracker.update_state(layer.last_penalty)  # the term of this very forward pass
        return loss


def penalty_layers(model):
    """The layers of `model` that add a penalty (they have a `penalty_name`), in order, looking
    inside nested models."""
    found = []
    for layer in model.layers:
        if hasattr(layer, "penalty_name"):
            found.append(layer)
        if isinstance(layer, keras.Model):
            found += penalty_layers(layer)
    return found


@keras.saving.register_keras_serializable(package="autoencoders")
class Sampling(layers.Layer):
    """Draw z ~ q(z | x) = N(mu, diag(sigma^2)) with the reparameterisation trick, and add the KL.

    Reparameterisation: z = mu + sigma * eps with eps ~ N(0, I) and sigma = exp(0.5 * log_var),
    so z is a differentiable function of (mu, log_var) and the noise is an input, not a node.

    KL to the prior N(0, I), in closed form, summed over the d latent dimensions:
        KL(q(z|x) || p(z)) = -1/2 * sum_j (1 + log_var_j - mu_j^2 - exp(log_var_j))
    averaged over the batch, weighted by `beta` and added to the model's loss with `add_loss`.
    In a `PenalizedModel` the unweighted KL is logged as `kl_loss` and `val_kl_loss`, in nats
    per example.
    """

    penalty_name = "kl_loss"

    def __init__(self, beta=1.0, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.beta = float(beta)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, inputs):
        z_mean, z_log_var = inputs
        add_penalty(self, ops.mean(kl_divergence(z_mean, z_log_var)), self.beta)
        epsilon = keras.random.normal(ops.shape(z_mean), seed=self.seed_generator)
        return z_mean + ops.exp(0.5 * z_log_var) * epsilon

    def compute_output_shape(self, input_shape):
        return input_shape[0]

    def get_config(self):
        return {**super().get_config(), "beta": self.beta, "seed": self.seed}


def kl_divergence(z_mean, z_log_var):
    """KL(N(mu, diag(exp(log_var))) || N(0, I)) per example, summed over latent dimensions.

    The closed form for two Gaussians: -1/2 * sum_j (1 + log_var_j - mu_j^2 - exp(log_var_j)).
    Takes tensors and returns a tensor (`metrics.evaluate_elbo` computes it in NumPy's float64).
    """
    return -0.5 * ops.sum(1.0 + z_log_var - ops.square(z_mean) - ops.exp(z_log_var), axis=-1)
