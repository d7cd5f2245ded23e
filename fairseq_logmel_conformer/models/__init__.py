from .logmel_conformer import LogmelConformerConfig, LogmelConformerModel  # noqa: F401
from .logmel_conformer_classifier import LogmelConformerClassifier, LogmelConformerClassifierConfig  # noqa: F401
