"""``logmel_audio_classification``: single-label fine-tuning (ESC-50, DCASE2019 1a, Kinetics700 audio)."""
from fairseq.tasks import register_task

from .labelled_audio import LabelledAudioConfig, LabelledAudioTask


@register_task("logmel_audio_classification", dataclass=LabelledAudioConfig)
class LogmelAudioClassificationTask(LabelledAudioTask):
    """Each clip has exactly one label; validation reports accuracy, top-1, top-5 and mAP."""

    multilabel = False
