from .logmel_pretraining import LogmelPretrainingConfig, LogmelPretrainingTask  # noqa: F401
