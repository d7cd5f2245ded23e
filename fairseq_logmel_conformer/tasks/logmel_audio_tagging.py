"""``logmel_audio_tagging``: multi-label fine-tuning (AudioSet, FSDKaggle2019, MagnaTagATune)."""
from fairseq.tasks import register_task

from .labelled_audio import LabelledAudioConfig, LabelledAudioTask


@register_task("logmel_audio_tagging", dataclass=LabelledAudioConfig)
class LogmelAudioTaggingTask(LabelledAudioTask):
    """Each clip has zero or more labels; validation reports mAP, mAUC, d-prime and lwlrap."""

    multilabel = True
