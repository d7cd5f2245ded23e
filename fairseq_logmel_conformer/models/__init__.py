from .logmel_conformer import LogmelConformerConfig, LogmelConformerModel  # noqa: F401
