"""`PenalizedModel`: a functional `keras.Model` that logs, beside its loss, the penalty terms its
layers add, on every Keras backend (see the book, Backends). Registered, so saved models load
after `import common`.

A penalty layer adds `weight * value` with `self.add_loss` and keeps the unweighted `value` of
this forward pass as `self.last_penalty`; its class attribute `penalty_name` names the metric.
"""
import keras


@keras.saving.register_keras_serializable(package="autoencoders")
class PenalizedModel(keras.Model):
    """`PenalizedModel(inputs, outputs, name=...)`: a `Mean` metric per penalty layer in it,
    nested models included, updated in `compute_loss`, where every backend keeps metric state."""

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
    """The layers of `model`, nested models included, that have a `penalty_name`, in order."""
    found = []
    for layer in model.layers:
        if hasattr(layer, "penalty_name"):
            found.append(layer)
        if isinstance(layer, keras.Model):
            found += penalty_layers(layer)
    return found
