"""``my_bird_calls``: call types of bird recordings, single- or multi-label by config.

Everything but the label set and the label mode comes from
:class:`fairseq_logmel_conformer.tasks.labelled_audio.LabelledAudioTask`: the
manifests (``<split>.tsv``, ``<split>.labels``), the label vocabulary, crops and
batching, and validation metrics over the whole split.
"""
from dataclasses import dataclass, field

from fairseq.tasks import register_task

from fairseq_logmel_conformer.tasks.labelled_audio import LabelledAudioConfig, LabelledAudioTask


@dataclass
class BirdCallsConfig(LabelledAudioConfig):
    labels: str = field(default="call_types.txt", metadata={"help": "call-type vocabulary (one per line, fixing the class order), relative to data"})
    multilabel: bool = field(
        default=False,
        metadata={
            "help": "a clip may hold several call types (several birds at once): sigmoid outputs and "
            "mAP/mAUC/lwlrap, instead of exactly one call type per clip: softmax outputs and accuracy/mAP"
        },
    )


@register_task("my_bird_calls", dataclass=BirdCallsConfig)
class BirdCallsTask(LabelledAudioTask):
    """Classifies (or tags) clips by call type, e.g. ``song``, ``alarm``, ``contact``, ``no_call``.

    The package's own tasks fix the label mode per class; here it is a config
    field, so one recipe serves single- and multi-label annotations. The model
    head, the loss (``logmel_consistency``) and the metrics follow
    ``self.multilabel``.
    """

    cfg: BirdCallsConfig

    def __init__(self, cfg: BirdCallsConfig):
        super().__init__(cfg)
        self.multilabel = cfg.multilabel
