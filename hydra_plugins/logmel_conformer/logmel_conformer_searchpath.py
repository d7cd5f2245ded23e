"""Makes the plugin's configs visible to Hydra (and so to ``fairseq-hydra-train --config-name``).

Hydra imports every module of the ``hydra_plugins`` namespace package when it
starts. Importing ``fairseq_logmel_conformer`` here also registers the
plugin's tasks, models and criteria before fairseq resolves the config.
"""
import contextlib
import difflib
import io
import os
import sys
from typing import List, Optional

from hydra.core.config_search_path import ConfigSearchPath
from hydra.core.config_store import ConfigStore
from hydra.plugins.search_path_plugin import SearchPathPlugin

import fairseq_logmel_conformer  # noqa: F401  (registers the fairseq components)
from fairseq_logmel_conformer import config as shipped_configs

CONFIG_PACKAGES = ("pretraining", "finetuning")


class LogmelConformerSearchPathPlugin(SearchPathPlugin):
    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        for package in CONFIG_PACKAGES:
            search_path.append("fairseq_logmel_conformer", f"pkg://fairseq_logmel_conformer.config.{package}")
        message = unknown_config_message(search_path)
        if message is not None:
            sys.exit(message)


def shipped_config_names() -> List[str]:
    """The primary configs this package ships (``pretrain_tiny``, ``finetune_esc50``, ...), sorted."""
    folder = os.path.dirname(shipped_configs.__file__)
    return sorted(
        name[: -len(".yaml")] for package in CONFIG_PACKAGES for name in os.listdir(os.path.join(folder, package)) if name.endswith(".yaml")
    )


def unknown_config_message(search_path: ConfigSearchPath) -> Optional[str]:
    """The error for ``fairseq-hydra-train --config-name NAME`` when no config file NAME is on the search path, else None.

    fairseq-hydra-train stores its bare ``FairseqConfig`` schema in Hydra's ConfigStore under whatever name it is given
    (``fairseq.dataclass.initialize.hydra_init``), so a misspelt name composes fairseq's empty defaults and fails
    later on an unrelated key (``Key 'data' is not in struct``, ``Must specify batch size``). This runs while Hydra
    builds the search path, before composition; --config-dir is not on the path yet and is taken from the command
    line, as fairseq takes the name. Any other Hydra application, or a name that is a config file on the path (ours,
    fairseq's own ``config``, --config-dir's, other search-path plugins' before this one), gives None.
    """
    try:
        # Hydra's own command-line parser, as fairseq_cli.hydra_train.cli_main uses it for the name.
        from hydra._internal.config_repository import ConfigRepository
        from hydra._internal.config_search_path_impl import ConfigSearchPathImpl
        from hydra._internal.utils import get_args

        # In a program with a command line of its own (a script composing configs with Hydra's API, pytest) the
        # parser fails; what it would print about it concerns Hydra's command line, not that program's.
        with contextlib.redirect_stderr(io.StringIO()):
            args = get_args()
    except (ImportError, SystemExit):
        return None
    name = args.config_name
    if not name or not is_fairseq_fallback(name):
        return None
    candidates = ConfigSearchPathImpl()
    if args.config_dir is not None:
        candidates.append("command-line", f"file://{os.path.abspath(args.config_dir)}")
    for element in search_path.get_path():
        candidates.append(element.provider, element.path)
    if ConfigRepository(candidates).config_exists(name):
        return None
    shipped = shipped_config_names()
    close = difflib.get_close_matches(name, shipped, n=1)
    return (
        f"error: --config-name {name}: no config of that name exists"
        + (f" (did you mean {close[0]}?)" if close else "")
        + f".\nConfigs shipped with fairseq_logmel_conformer: {', '.join(shipped)}."
        + "\nFor a config of your own, give its folder with --config-dir."
    )


def is_fairseq_fallback(name: str) -> bool:
    """Whether Hydra's ConfigStore holds fairseq-hydra-train's bare ``FairseqConfig`` under ``name``."""
    from fairseq.dataclass.configs import FairseqConfig
    from omegaconf import OmegaConf

    try:
        node = ConfigStore.instance().load(config_path=f"{name}.yaml")
    except Exception:  # Hydra's ConfigLoadError: nothing stored under the name
        return False
    return OmegaConf.get_type(node.node) is FairseqConfig
