"""fairseq plugin: conformer self-supervised learning on log-mel spectrograms of non-speech audio.

Importing the package registers its fairseq components. fairseq's
``import_user_module`` imports only ``tasks/`` and ``models/`` of a user dir,
so everything that registers is imported here.
"""
import logging
import os

_root_level = logging.getLogger().level
# fairseq logs "Please install tensorboardX" while it imports its text-to-speech task, which nothing here uses: drop
# that record. This works where this package is imported before fairseq (its console scripts, `import
# fairseq_logmel_conformer` first); fairseq-hydra-train imports fairseq before Hydra loads any plugin.
logging.getLogger("fairseq.tasks.text_to_speech").addFilter(lambda record: "tensorboardX" not in record.getMessage())
from . import criterions, models, optim, tasks  # noqa: E402,F401  (registration side effects)
from .checkpoint import install as _install_checkpoint_loading  # noqa: E402

# Importing fairseq's tasks runs logging.basicConfig(level=DEBUG) in one of its modules; undo that side effect.
logging.getLogger().setLevel(_root_level)

# fairseq's checkpoint loading, wrapped: damaged files are named, and a rerun resumes from an intact checkpoint.
_install_checkpoint_loading()

__version__ = "0.1.0"

CONFIG_DIR = os.path.join(os.path.dirname(__file__), "config")
