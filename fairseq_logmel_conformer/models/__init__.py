from .logmel_conformer import LogmelConformerConfig, LogmelConformerModel  # noqa: F401
from .logmel_conformer_classifier import LogmelConformerClassifier, LogmelConformerClassifierConfig  # noqa: F401


def encoder_of(model) -> LogmelConformerModel:
    """The conformer encoder of a pre-training model (the model itself) or of a fine-tuned one (its ``encoder``)."""
    if isinstance(model, LogmelConformerModel):
        return model
    if isinstance(model, LogmelConformerClassifier):
        return model.encoder
    raise ValueError(f"expected a logmel_conformer or logmel_conformer_classifier model, got {type(model).__name__}")
