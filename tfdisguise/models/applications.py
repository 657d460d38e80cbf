"""`keras.applications.<Name>`: any Keras application, untrained (`weights=None`)."""

from __future__ import annotations

import keras

from tfdisguise.models.registry import register_model


@register_model("keras.applications")
def application(x, num_classes, *, input_shape, spec=None, application: str):
    """The named application with its own softmax top, on the normalized input."""
    del spec
    app = getattr(keras.applications, application, None)
    if app is None or not callable(app):
        raise ValueError(
            f"Unknown Keras application {application!r}. Received: name='keras.applications.{application}'")
    backbone = app(weights=None, include_top=True, input_shape=input_shape, classes=num_classes,
                   classifier_activation="softmax")
    return backbone(x)
