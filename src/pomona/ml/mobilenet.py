"""MobileNetV2 without its top, as Keras builds it: the one model every backend runs (imports TensorFlow)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pomona.ml.preprocess import INPUT_SHAPE
from pomona.ml.weights import WeightsRef

if TYPE_CHECKING:
    import keras

FEATURE_DIM = 1280  # the global-average-pooled output
RANDOM_SEED = 1234


def build_keras_model(weights: WeightsRef) -> keras.Model:
    """MobileNetV2 (alpha 1.0, no top, global average pooling) with `weights` loaded; imports TensorFlow."""
    import keras

    if weights.path is None:
        # "random": Keras draws initial weights from its global seed; fixing it makes them reproducible
        # across processes (and reseeds Python's and numpy's global generators as a side effect).
        keras.utils.set_random_seed(RANDOM_SEED)
    model = keras.applications.MobileNetV2(
        alpha=1.0, include_top=False, pooling="avg", input_shape=INPUT_SHAPE, weights=None
    )
    if weights.path is not None:
        model.load_weights(weights.path)
    return model
