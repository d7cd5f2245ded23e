"""Makes the plugin's configs visible to Hydra (and so to ``fairseq-hydra-train --config-name``).

Hydra imports every module of the ``hydra_plugins`` namespace package when it
starts. Importing ``fairseq_logmel_conformer`` here also registers the
plugin's tasks, models and criteria before fairseq resolves the config.
"""
from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin

import fairseq_logmel_conformer  # noqa: F401  (registers the fairseq components)


class LogmelConformerSearchPathPlugin(SearchPathPlugin):
    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        search_path.append("fairseq_logmel_conformer", "pkg://fairseq_logmel_conformer.config.pretraining")
        search_path.append("fairseq_logmel_conformer", "pkg://fairseq_logmel_conformer.config.finetuning")
