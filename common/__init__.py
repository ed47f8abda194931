"""Plumbing shared by the lessons of the suite: data, noise, layers, losses, metrics, plots,
outputs, training, runtime and the command line.

Importing the package registers its custom Keras objects (the `Sampling` layer, the
`PenalizedModel` that logs its KL, and the `bernoulli_nll` loss), so a saved VAE, CVAE,
autoencoder or denoiser loads with::

    import common
    import keras
    model = keras.models.load_model("models/vae.keras")

A lesson's own layers (the sparsity penalties, the contractive layer) are registered by the
lesson: import it first, as its docstring says.
"""

from common import runtime  # first: quiets TensorFlow's start-up logging before it is imported
from common import layers
from common import losses

__all__ = ["layers", "losses", "runtime"]
