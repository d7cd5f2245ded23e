"""Integrity of fairseq checkpoints, and falling back to the newest intact one.

    python -m fairseq_logmel_conformer.checkpoint SAVE_DIR [--fall-back]

fairseq writes ``checkpoint_E_U.pt`` atomically (to a ``.tmp`` file, then a
rename) but *copies* it to ``checkpoint_last.pt``; a full disk or a kill
during that copy leaves ``checkpoint_last.pt`` cut short, and the restarted
run fails inside ``torch.load`` with a message that does not name the file.
The launch scripts in ``run_scripts/`` run this check first: every
checkpoint of SAVE_DIR is verified (torch's zip format stores a CRC-32 of
each record, so a file cut short or corrupted is detected without unpickling
it) and, with ``--fall-back``, a damaged ``checkpoint_last.pt`` is renamed to
``checkpoint_last.pt.corrupt`` and replaced by a copy of the newest intact
checkpoint, from which fairseq then resumes. Exit status: 0 when training can
resume (or start: no ``checkpoint_last.pt``), 1 when ``checkpoint_last.pt`` is
damaged and was not (or could not be) replaced.
"""
import argparse
import glob
import os
import shutil
import sys
import zipfile
from typing import List, Optional

import torch

LAST = "checkpoint_last.pt"


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
    # Not a (complete) zip archive: a legacy-format checkpoint loads, a zip checkpoint cut short does not.
    try:
        torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # torch raises RuntimeError, EOFError, UnpicklingError, ... on damaged files
        return f"{path}: corrupt or cut short ({size} bytes), it cannot be loaded: {error}"
    return None


def training_checkpoints(save_dir: str) -> List[str]:
    """The checkpoints of ``save_dir`` that hold a training state, newest first (excluding ``checkpoint_last.pt``)."""
    paths = [
        path
        for path in glob.glob(os.path.join(save_dir, "checkpoint*.pt"))
        if os.path.basename(path) != LAST
    ]
    return sorted(paths, key=os.path.getmtime, reverse=True)


def fall_back(save_dir: str) -> str:
    """Replace a damaged ``checkpoint_last.pt`` by the newest intact checkpoint; return what was done.

    Raises ``RuntimeError`` if no intact checkpoint is left.
    """
    last = os.path.join(save_dir, LAST)
    for candidate in training_checkpoints(save_dir):
        if verify_checkpoint(candidate) is None:
            os.replace(last, last + ".corrupt")
            # Copy to a temporary name, then rename: a second interruption cannot leave a damaged checkpoint_last.pt.
            shutil.copyfile(candidate, last + ".tmp")
            os.replace(last + ".tmp", last)
            return f"{last} renamed to {LAST}.corrupt and replaced by a copy of {candidate}"
    raise RuntimeError(
        f"{last} is damaged and {save_dir} holds no intact checkpoint to fall back to; "
        f"remove it to start training from scratch"
    )


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("save_dir", help="checkpoint.save_dir of the run")
    parser.add_argument("--fall-back", action="store_true", help=f"replace a damaged {LAST} by the newest intact checkpoint")
    args = parser.parse_args(argv)
    last = os.path.join(args.save_dir, LAST)
    for path in training_checkpoints(args.save_dir):
        problem = verify_checkpoint(path)
        if problem:
            print(f"warning: {problem}", file=sys.stderr)
    if not os.path.exists(last):
        return 0
    problem = verify_checkpoint(last)
    if problem is None:
        return 0
    print(f"error: {problem}", file=sys.stderr)
    if not args.fall_back:
        print(f"rerun with --fall-back to resume from the newest intact checkpoint of {args.save_dir}", file=sys.stderr)
        return 1
    try:
        print(fall_back(args.save_dir), file=sys.stderr)
    except RuntimeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
