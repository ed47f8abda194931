"""Penalties of the regularized autoencoders, as registered layers so saved models load.

Each layer adds its penalty to the model's loss with `add_loss` and tracks it with a `Mean`
metric, so the penalty appears in the progress bar and in `history.history` (and as val_...).
As with the VAE's `kl_loss`, the metric is the unweighted penalty; the loss gets weight * it.

- `KLSparsity`: identity on a code of sigmoid units; adds beta * sum_j KL(rho || rho_hat_j).
- `L1Activity`: identity; adds Keras's L1 activity regularization, l1 * mean_x sum_j |h_j|.
- `ContractiveDense`: a sigmoid Dense layer h = s(W x + b) that adds lambda * ||J_h(x)||_F^2.
"""

import keras
from keras import layers
from keras import ops

_EPSILON = 1e-7  # keeps log(rho_hat) and log(1 - rho_hat) finite for a unit stuck at 0 or 1


def kl_sparsity(codes, rho):
    """sum_j KL(rho || rho_hat_j) in nats, rho_hat_j = mean activation of unit j over the batch.

    KL between Bernoulli(rho) and Bernoulli(rho_hat):
        KL(rho || rho_hat) = rho log(rho / rho_hat) + (1 - rho) log((1 - rho) / (1 - rho_hat))
    It is 0 when rho_hat = rho and grows steeply as rho_hat moves towards 1.
    """
    rho_hat = ops.clip(ops.mean(codes, axis=0), _EPSILON, 1.0 - _EPSILON)
    return ops.sum(rho * ops.log(rho / rho_hat)
                   + (1.0 - rho) * ops.log((1.0 - rho) / (1.0 - rho_hat)))


def sigmoid_jacobian_norm_sq(codes, kernel):
    """||J_h(x)||_F^2 per example for h = sigmoid(x W + b), W of shape (inputs, units).

    dh_j / dx_i = h_j (1 - h_j) W_ij, so the squared Frobenius norm factorises:
        ||J||_F^2 = sum_j (h_j (1 - h_j))^2 * sum_i W_ij^2
    one matrix-vector product per batch instead of a (units x inputs) Jacobian per example.
    """
    slope_sq = ops.square(codes * (1.0 - codes))             # (batch, units)
    column_norms_sq = ops.sum(ops.square(kernel), axis=0)    # (units,)
    return ops.matmul(slope_sq, column_norms_sq)             # (batch,)


@keras.saving.register_keras_serializable(package="autoencoders")
class KLSparsity(layers.Layer):
    """Pass sigmoid codes through unchanged; add beta * sum_j KL(rho || rho_hat_j) to the loss.

    rho_hat_j is the mean activation of unit j over the batch, so the penalty asks each unit to
    be active (near 1) on a fraction rho of the images and near 0 on the rest. The `kl_sparsity`
    metric is the unweighted sum of KLs, in nats.

    Batch size: the KL is of batch means, so its size does not grow with the batch (unlike a sum
    over examples), but rho_hat_j is estimated from one batch: small batches give a noisy
    rho_hat and, since the KL is convex, a penalty that is larger on average (Jensen). With a
    batch of one it would push every single activation to rho rather than their average.
    """

    def __init__(self, rho=0.05, beta=3.0, **kwargs):
        super().__init__(**kwargs)
        if not 0.0 < rho < 1.0:
            raise ValueError(f"rho must be strictly between 0 and 1, got {rho}")
        self.rho = float(rho)
        self.beta = float(beta)
        self.tracker = keras.metrics.Mean(name="kl_sparsity")

    def call(self, codes):
        penalty = kl_sparsity(codes, self.rho)
        self.add_loss(self.beta * penalty)
        self.tracker.update_state(penalty)
        return codes

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "rho": self.rho, "beta": self.beta}


@keras.saving.register_keras_serializable(package="autoencoders")
class L1Activity(layers.Layer):
    """Pass codes through unchanged; add `keras.regularizers.L1(l1)` activity regularization.

    The penalty is l1 * sum_j |h_j| averaged over the batch: `keras.regularizers.L1` sums |h|
    over the whole batch and Keras divides an activity penalty by the batch size (as here), so
    its weight does not change with the batch size. The `l1_activity` metric is the unweighted
    mean of sum_j |h_j| over the batch.
    """

    def __init__(self, l1=1e-4, **kwargs):
        super().__init__(**kwargs)
        self.l1 = float(l1)
        self.regularizer = keras.regularizers.L1(self.l1)
        self.tracker = keras.metrics.Mean(name="l1_activity")

    def call(self, codes):
        batch_size = ops.cast(ops.shape(codes)[0], codes.dtype)
        self.add_loss(self.regularizer(codes) / batch_size)  # = l1 * mean_x sum_j |h_j|
        self.tracker.update_state(ops.sum(ops.abs(codes)) / batch_size)
        return codes

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "l1": self.l1}


@keras.saving.register_keras_serializable(package="autoencoders")
class ContractiveDense(layers.Dense):
    """A Dense layer of sigmoid units, h = s(x W + b), that adds lambda * ||J_h(x)||_F^2.

    The penalty (Rifai et al., 2011) is the squared Frobenius norm of the Jacobian of the code
    with respect to the input, averaged over the batch, in closed form
    (`sigmoid_jacobian_norm_sq`). It asks the code to change little when the input moves, except
    along the directions the reconstruction needs. The `jacobian_norm_sq` metric tracks the
    unweighted ||J||_F^2, also when `contraction` is 0, so a baseline's history shows it too.
    """

    def __init__(self, units, contraction=0.1, **kwargs):
        activation = kwargs.pop("activation", "sigmoid")
        if activation not in ("sigmoid", keras.activations.sigmoid):
            raise ValueError("the closed-form Jacobian holds for sigmoid units only, "
                             f"got activation={activation!r}")
        super().__init__(units, activation="sigmoid", **kwargs)
        self.contraction = float(contraction)
        self.tracker = keras.metrics.Mean(name="jacobian_norm_sq")

    def call(self, inputs, training=None):
        codes = super().call(inputs, training=training)
        norm_sq = ops.mean(sigmoid_jacobian_norm_sq(codes, self.kernel))
        self.add_loss(self.contraction * norm_sq)
        self.tracker.update_state(norm_sq)
        return codes

    def get_config(self):
        return {**super().get_config(), "contraction": self.contraction}
