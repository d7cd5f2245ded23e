"""fairseq plugin: conformer self-supervised learning on log-mel spectrograms of non-speech audio.

Importing the package registers its fairseq components. fairseq's
``import_user_module`` imports only ``tasks/`` and ``models/`` of a user dir,
so everything that registers is imported here.
"""
import os

from . import criterions, models, tasks  # noqa: F401  (registration side effects)

__version__ = "0.1.0"

CONFIG_DIR = os.path.join(os.path.dirname(__file__), "config")
