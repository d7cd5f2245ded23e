from .logmel_audio_classification import LogmelAudioClassificationTask  # noqa: F401
from .logmel_audio_tagging import LogmelAudioTaggingTask  # noqa: F401
from .logmel_pretraining import LogmelPretrainingConfig, LogmelPretrainingTask  # noqa: F401
