"""A user's fairseq plugin: a bird call-type task on top of fairseq_logmel_conformer.

fairseq's ``import_user_module`` (``common.user_dir=.../my_bird_plugin``) imports
this package and then its ``tasks/`` and ``models/`` folders; anything that
registers elsewhere must be imported here. Importing fairseq_logmel_conformer
registers the model and criterion the task is trained with.
"""
import fairseq_logmel_conformer  # noqa: F401  (registers logmel_conformer_classifier and logmel_consistency)

from . import tasks  # noqa: F401  (registers my_bird_calls)
