"""Reconstruction losses, as negative log-likelihoods in nats per example."""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="autoencoders")
def bernoulli_nll(y_true, logits):
    """-log p(x | z) for a Bernoulli decoder, summed over pixels: one number per example. It is
    the binary cross-entropy from the logits, softplus(l) - x * l, so no probability is clipped."""
    per_pixel = ops.binary_crossentropy(y_true, logits, from_logits=True)
    return ops.sum(ops.reshape(per_pixel, (ops.shape(per_pixel)[0], -1)), axis=-1)
