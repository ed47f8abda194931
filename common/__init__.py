"""Plumbing shared by the lessons; a learner follows a lesson without opening it (see the book,
Layout). Importing it quiets TensorFlow's start-up logs and registers `PenalizedModel` and
`bernoulli_nll`; a saved model with a lesson's own layers loads after importing that lesson.
"""

from common import runtime  # first: quiets TensorFlow's start-up logging before it is imported
from common import layers
from common import losses

__all__ = ["layers", "losses", "runtime"]
