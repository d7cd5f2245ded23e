from .logmel_contrastive import LogmelContrastiveConfig, LogmelContrastiveCriterion  # noqa: F401
