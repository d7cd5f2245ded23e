from .logmel_consistency import LogmelConsistencyConfig, LogmelConsistencyCriterion  # noqa: F401
from .logmel_contrastive import LogmelContrastiveConfig, LogmelContrastiveCriterion  # noqa: F401
