"""Loading checkpoints with errors that name the file, and resuming from the newest intact one.

    python -m fairseq_logmel_conformer.checkpoint SAVE_DIR

fairseq writes ``checkpoint_E_U.pt`` atomically (to a ``.tmp`` file, then a
rename) but *copies* it to ``checkpoint_last.pt``; a full disk or a kill
during that copy leaves ``checkpoint_last.pt`` cut short, and torch fails with
a message that names no file. Importing the plugin wraps fairseq's checkpoint
loading (:func:`install`), so that every entry point, ``fairseq-hydra-train``
included, reports a damaged or foreign file by name and what is wrong with it;
and a rerun of ``fairseq-hydra-train`` whose ``checkpoint_last.pt`` is damaged
resumes from the newest intact checkpoint of its ``checkpoint.save_dir``
(with a warning naming both), or stops with that message if there is none.
A checkpoint whose config sets a field that this version of the plugin's
tasks, models, criterions or optimisers no longer has loads with a warning
naming the file and the field, which is ignored (fairseq would refuse it).
Torch's zip format stores a CRC-32 of each record, so a file cut short or
corrupted is detected without unpickling it. Run as a module, it checks every
checkpoint of SAVE_DIR and says which training would resume from (exit status
1 when none could).
"""
import argparse
import dataclasses
import functools
import glob
import logging
import os
import sys
import zipfile
from typing import Any, Dict, List, Optional, Tuple

import torch

logger = logging.getLogger(__name__)

LAST = "checkpoint_last.pt"


class CheckpointError(RuntimeError):
    """A checkpoint cannot be used; the message names the file and says why."""


def verify_checkpoint(path: str) -> Optional[str]:
    """None if ``path`` is an intact checkpoint, else a message naming the file and saying what is wrong."""
    if not os.path.isfile(path):
        return f"{path}: no such file"
    size = os.path.getsize(path)
    if size == 0:
        return f"{path}: the file is empty (0 bytes); it was cut short while being written"
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as archive:
                damaged = archive.testzip()
                has_pickle = any(name.endswith("/data.pkl") or name == "data.pkl" for name in archive.namelist())
        except (zipfile.BadZipFile, OSError, EOFError) as error:
            return f"{path}: corrupt checkpoint ({size} bytes): {error}"
        if damaged is not None:
            return f"{path}: corrupt checkpoint ({size} bytes): record {damaged} fails its CRC check"
        if not has_pickle:
            return f"{path}: not a torch checkpoint: the archive holds no data.pkl"
        return None
    with open(path, "rb") as f:
        head = f.read(2)
    if head == b"PK":
        return f"{path}: corrupt or cut short ({size} bytes): a zip archive without its end (the central directory is missing)"
    if not head.startswith(b"\x80"):
        return f"{path}: not a torch checkpoint ({size} bytes): neither a zip archive, as torch.save writes, nor a pickle"
    # A legacy (pre-zip) torch file: unpickle only what weights_only allows; refused globals are not damage.
    try:
        torch.load(path, map_location="cpu", weights_only=True)
    except (EOFError, RuntimeError) as error:
        if "truncated" in str(error) or "Ran out of input" in str(error) or isinstance(error, EOFError):
            return f"{path}: corrupt or cut short ({size} bytes), it cannot be loaded: {error}"
    except Exception:
        pass
    return None


def training_checkpoints(save_dir: str) -> List[str]:
    """The checkpoints of ``save_dir`` that hold a training state, newest first (excluding ``checkpoint_last.pt``)."""
    paths = [
        path
        for path in glob.glob(os.path.join(save_dir, "checkpoint*.pt"))
        if os.path.basename(path) != LAST
    ]
    return sorted(paths, key=os.path.getmtime, reverse=True)


def looks_complete(path: str) -> bool:
    """Whether ``path`` is a whole torch zip archive, from its central directory alone (no CRC pass): cheap
    enough for every start, and enough to catch a file cut short; damage inside it shows when it is loaded."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.endswith("/data.pkl") or name == "data.pkl" for name in archive.namelist())
    except (zipfile.BadZipFile, OSError, EOFError):
        return False


def resume_point(save_dir: str) -> Optional[str]:
    """The checkpoint a run writing to ``save_dir`` resumes from: ``checkpoint_last.pt``, or if that is cut
    short the newest intact checkpoint; None when there is none to resume from (a first start).

    Raises :class:`CheckpointError` if ``checkpoint_last.pt`` is damaged and no intact checkpoint is left.
    """
    last = os.path.join(save_dir, LAST)
    if not os.path.exists(last) or looks_complete(last):
        return last if os.path.exists(last) else None
    for candidate in training_checkpoints(save_dir):
        if verify_checkpoint(candidate) is None:
            return candidate
    raise CheckpointError(
        f"{verify_checkpoint(last)}; {save_dir} holds no intact checkpoint to resume from. "
        f"Remove {last} to start training from scratch."
    )


def _config_dataclasses() -> Dict[str, Dict[str, type]]:
    """{config group: {registered name: dataclass}} of fairseq's registries; nested configs look in ``model``."""
    from fairseq.criterions import CRITERION_DATACLASS_REGISTRY
    from fairseq.models import MODEL_DATACLASS_REGISTRY
    from fairseq.optim import OPTIMIZER_DATACLASS_REGISTRY
    from fairseq.optim.lr_scheduler import LR_SCHEDULER_DATACLASS_REGISTRY
    from fairseq.tasks import TASK_DATACLASS_REGISTRY

    return {"task": TASK_DATACLASS_REGISTRY, "model": MODEL_DATACLASS_REGISTRY, "criterion": CRITERION_DATACLASS_REGISTRY,
            "optimizer": OPTIMIZER_DATACLASS_REGISTRY, "lr_scheduler": LR_SCHEDULER_DATACLASS_REGISTRY}


def drop_removed_fields(path: str, cfg: Any) -> None:
    """Remove, in place, the fields of ``cfg`` (a checkpoint's config, as fairseq loads it: a DictConfig) that this
    plugin's configs no longer have.

    A config node belongs to one of the plugin's components when its ``_name``
    is registered with a dataclass of this package; that covers the top-level
    groups and nested configs such as a classifier's ``model.encoder``. No code
    of this version reads such a field, so it is dropped, with a warning naming
    ``path``, the field and its value (a field that had changed the model's
    parameters still fails when its weights load).
    """
    from omegaconf import DictConfig, open_dict

    registries = _config_dataclasses()

    def visit(node: Any, key: str, group: str) -> None:
        if not isinstance(node, DictConfig):
            return
        dataclass = registries.get(group, registries["model"]).get(node.get("_name"))
        if dataclass is not None and dataclass.__module__.startswith(__package__ + "."):
            known = {field.name for field in dataclasses.fields(dataclass)}
            removed = [name for name in node.keys() if name not in known]
            with open_dict(node):
                for name in removed:
                    logger.warning(f"{path}: {key}.{name}={node[name]!r} is not a field of this version's {node['_name']!r} config; ignored")
                    del node[name]
        for name in list(node.keys()):
            visit(node[name], f"{key}.{name}", group)

    if cfg is not None:
        for group in list(cfg.keys()):
            visit(cfg[group], group, group)


def _checked(load_checkpoint_to_cpu):
    """fairseq's ``load_checkpoint_to_cpu``, raising :class:`CheckpointError` naming a damaged or foreign file,
    and dropping config fields the plugin no longer has (:func:`drop_removed_fields`)."""

    @functools.wraps(load_checkpoint_to_cpu)
    def load(path, *args, **kwargs):
        try:
            state = load_checkpoint_to_cpu(path, *args, **kwargs)
        except Exception:
            problem = verify_checkpoint(path)
            if problem is None:
                raise
        else:
            drop_removed_fields(path, state.get("cfg"))
            return state
        # Outside the except block: torch's own message would suggest unpickling the file without safeguards.
        raise CheckpointError(problem)

    return load


def _resume_from_intact(load_checkpoint):
    """fairseq's ``load_checkpoint`` (the trainer's restore), resuming from the newest intact checkpoint when
    ``checkpoint_last.pt`` is cut short. Every rank takes the same decision from the same files; none is moved."""

    @functools.wraps(load_checkpoint)
    def load(cfg, trainer, **kwargs):
        if cfg.restore_file != LAST or cfg.finetune_from_model is not None or trainer.checkpoint_suffix:
            return load_checkpoint(cfg, trainer, **kwargs)
        point = resume_point(cfg.save_dir)
        if point is None or os.path.basename(point) == LAST:
            return load_checkpoint(cfg, trainer, **kwargs)
        logger.warning(f"{verify_checkpoint(os.path.join(cfg.save_dir, LAST))}; resuming from {point}, the newest intact checkpoint")
        cfg.restore_file = os.path.abspath(point)
        try:
            return load_checkpoint(cfg, trainer, **kwargs)
        finally:
            cfg.restore_file = LAST

    return load


def install() -> None:
    """Wrap fairseq's checkpoint loading (once): errors that name the file, configs of an older plugin version,
    and resuming from an intact checkpoint."""
    from fairseq import checkpoint_utils

    if getattr(checkpoint_utils.load_checkpoint_to_cpu, "_logmel_wrapped", False):
        return
    checkpoint_utils.load_checkpoint_to_cpu = _checked(checkpoint_utils.load_checkpoint_to_cpu)
    checkpoint_utils.load_checkpoint = _resume_from_intact(checkpoint_utils.load_checkpoint)
    checkpoint_utils.load_checkpoint_to_cpu._logmel_wrapped = True


def import_user_dir(user_dir: Optional[str]) -> None:
    """Import a fairseq plugin folder (fairseq's ``--user-dir``), so that its tasks and models are registered."""
    if user_dir:
        from fairseq import utils

        if not os.path.isdir(user_dir):
            raise CheckpointError(f"--user-dir {user_dir} is not a folder")
        utils.import_user_module(argparse.Namespace(user_dir=user_dir))


def _check_registered(path: str, state: Dict[str, Any]) -> None:
    """Raise :class:`CheckpointError` saying which ``--user-dir`` a checkpoint needs if its task or model is unknown."""
    from fairseq.models import MODEL_REGISTRY
    from fairseq.tasks import TASK_REGISTRY

    cfg = state.get("cfg") or {}
    task, model = (cfg.get(group) or {} for group in ("task", "model"))
    missing = [(kind, entry.get("_name")) for kind, entry, registry in (("task", task, TASK_REGISTRY), ("model", model, MODEL_REGISTRY))
               if entry.get("_name") and entry.get("_name") not in registry]
    if missing:
        kind, name = missing[0]
        trained_with = (cfg.get("common") or {}).get("user_dir")
        hint = f" (it was trained with common.user_dir={trained_with})" if trained_with else ""
        raise CheckpointError(
            f"{path}: its {kind} {name!r} is not registered: pass --user-dir with the plugin folder that defines it{hint}"
        )


def load_model(path: str, user_dir: Optional[str] = None, arg_overrides: Optional[Dict[str, Any]] = None) -> Tuple[Any, Any, Any]:
    """(model, cfg, task) of a checkpoint, with fairseq's ``load_model_ensemble_and_task``.

    ``user_dir`` is imported first (a plugin defining the checkpoint's task or
    model). Raises :class:`CheckpointError` naming the file if it is missing,
    damaged or not a torch checkpoint, or if its task or model is not registered.
    """
    from fairseq import checkpoint_utils

    import_user_dir(user_dir)
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: no such checkpoint file")
    state = checkpoint_utils.load_checkpoint_to_cpu(path, arg_overrides)
    _check_registered(path, state)
    models, cfg, task = checkpoint_utils.load_model_ensemble_and_task([path], arg_overrides=arg_overrides, state=state)
    return models[0], cfg, task


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("save_dir", help="checkpoint.save_dir of the run")
    # fairseq-hydra-train falls back by itself now; the flag stays accepted for scripts that pass it.
    parser.add_argument("--fall-back", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for path in training_checkpoints(args.save_dir) + [os.path.join(args.save_dir, LAST)]:
        problem = verify_checkpoint(path) if os.path.exists(path) else None
        if problem:
            print(f"warning: {problem}", file=sys.stderr)
    try:
        point = resume_point(args.save_dir)
    except CheckpointError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"training resumes from {point}" if point else f"{args.save_dir} holds no checkpoint: training starts from scratch")
    return 0


if __name__ == "__main__":
    sys.exit(main())
