"""Plumbing shared by every lesson in the suite: data, layers, metrics, plots, runtime, command line.

Importing the package registers the custom Keras objects (the `Sampling` layer and the
reconstruction loss), so any saved model of the suite loads with::

    import common
    import keras
    model = keras.models.load_model("models/vae.keras")
"""

from common import runtime  # first: quiets TensorFlow's start-up logging before it is imported
from common import layers
from common import losses
from common import regularizers

__all__ = ["layers", "losses", "regularizers", "runtime"]
