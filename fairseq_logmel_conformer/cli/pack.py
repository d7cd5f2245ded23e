"""Pack the clips of fairseq manifests into a few large shards of decoded 16 kHz audio, or check a packed corpus.

    logmel-pack MANIFEST_DIR --out PACKED_DIR [--jobs N]
    logmel-pack MANIFEST_DIR/train.tsv --out PACKED_DIR      # one split
    logmel-pack --check PACKED_DIR

Training on a packed corpus decodes nothing: a random crop is one read at an
offset of a shard. Use it where decoding sets the pace (large corpora,
compressed or 44.1/48 kHz audio, fast GPUs): give ``task.data=PACKED_DIR``
where the manifest folder was; no other setting changes, and crops, batches and
clip names are those of the manifests (same seed).

Each manifest ``<split>.tsv`` becomes, in PACKED_DIR, ``<split>.NNNNN.npy``
shards (numpy int16 arrays, about ``--shard-mb`` each), ``<split>.index.npy``
and ``<split>.paths.npy`` (one record and path per clip) and
``<split>.pack.json`` (sizes and CRC-32s of them all, written last).
``labels.txt`` and ``<split>.labels`` next to a manifest are copied, so a
packed fine-tuning split reads its labels as before (the index keeps each
clip's manifest line). Storage: 115 MB per hour of audio (16-bit, 16 kHz).

Clips are decoded and resampled as training would (any format soundfile reads)
in ``--jobs`` processes. Clips that cannot be read, or whose length disagrees
with the manifest, are left out and listed in PACKED_DIR/unreadable.txt
(``manifest:LINE: why``), as logmel-manifest lists files it leaves out.

Interrupted (Ctrl-C, SIGKILL, a full disk)? Run the same command again: shards
already written are kept (each was fsynced and renamed into place when
finished) and only the rest is decoded. A split already packed from the same
manifest is skipped; one from another manifest or with other settings is left
alone unless ``--overwrite``.

``--check`` reads every byte and reports every missing, truncated or corrupt
file (by CRC-32), naming the damaged clips and their manifest lines; the exit
status is 1 if there was any problem. Training checks only sizes, headers and
the CRC-32 of a few clips when it starts: a CRC of every clip read would cost
as much as the read itself.
"""
import argparse
import glob
import os
import shutil
import sys
from typing import List, Optional

from ..data.packed import DEFAULT_SHARD_MB, PackExistsError, check_packed, pack_split, packed_splits
from .common import add_jobs_argument


def manifests_of(inputs: List[str]) -> List[str]:
    """Manifest files: each input is a .tsv manifest or a folder whose .tsv manifests are all taken."""
    manifests = []
    for source in inputs:
        if os.path.isdir(source):
            found = sorted(glob.glob(os.path.join(source, "*.tsv")))
            if not found:
                raise SystemExit(f"error: no manifest (*.tsv) in {source}")
            manifests.extend(found)
        elif os.path.isfile(source):
            manifests.append(source)
        else:
            raise SystemExit(f"error: {source} does not exist")
    splits = [os.path.splitext(os.path.basename(m))[0] for m in manifests]
    repeated = sorted({s for s in splits if splits.count(s) > 1})
    if repeated:
        raise SystemExit(f"error: more than one manifest for split(s) {', '.join(repeated)}")
    return manifests


def copy_labels(manifest: str, out: str) -> List[str]:
    """Copy ``<split>.labels`` and ``labels.txt`` from beside ``manifest`` into ``out``; return what was copied."""
    folder, name = os.path.split(manifest)
    copied = []
    for label_file in (os.path.splitext(name)[0] + ".labels", "labels.txt"):
        source = os.path.join(folder, label_file)
        if os.path.isfile(source):
            shutil.copyfile(source, os.path.join(out, label_file))
            copied.append(label_file)
    return copied


def pack(args: argparse.Namespace) -> int:
    manifests = manifests_of(args.inputs)
    os.makedirs(args.out, exist_ok=True)
    unreadable = []
    for manifest in manifests:
        split = os.path.splitext(os.path.basename(manifest))[0]
        try:
            report = pack_split(manifest, args.out, split, args.jobs, args.shard_mb, args.sample_rate, args.overwrite)
        except PackExistsError as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
        copied = copy_labels(manifest, args.out)
        if report.skipped:
            print(f"{split}: already packed from {manifest} ({report.clips} clips), skipped")
            continue
        hours = report.samples / args.sample_rate / 3600
        resumed = f", {report.resumed_shards} of them kept from an interrupted run" if report.resumed_shards else ""
        print(
            f"{split}: {report.clips} of {report.entries} clips ({hours:.2f} h) packed into {report.shards} shards{resumed} "
            f"in {report.seconds:.1f} s ({hours * 3600 / max(report.seconds, 1e-9):.0f} audio s/s, {args.jobs} processes); "
            f"{len(report.unreadable)} unreadable" + (f"; copied {', '.join(copied)}" if copied else "")
        )
        unreadable.extend(report.unreadable)
    # Rewritten by every run from the splits it packed (a resumed run lists the clips of kept shards too).
    with open(os.path.join(args.out, "unreadable.txt"), "w") as f:
        f.writelines(line + "\n" for line in unreadable)
    if unreadable:
        print(f"{len(unreadable)} unreadable clips left out, listed in {os.path.join(args.out, 'unreadable.txt')}:", file=sys.stderr)
        for line in unreadable[:20]:
            print("  " + line, file=sys.stderr)
    return 0


def check(args: argparse.Namespace) -> int:
    failed = False
    for folder in args.check:
        splits = packed_splits(folder) if os.path.isdir(folder) else []
        if not splits:
            print(f"error: {folder} holds no packed split (<split>.pack.json)")
            failed = True
            continue
        for split in splits:
            problems = check_packed(folder, split)
            for line in problems:
                print(line)
            print(f"{sum(not p.startswith('  ') for p in problems)} problem(s) in {folder}: {split}")
            failed = failed or bool(problems)
    return 1 if failed else 0


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="logmel-pack", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="*", metavar="MANIFEST", help="a manifest folder (every *.tsv in it) or manifest files")
    parser.add_argument("--out", "--dest", dest="out", help="folder for the packed corpus (give it as task.data)")
    parser.add_argument("--check", nargs="+", metavar="PACKED_DIR", help="read every byte of each packed corpus and report all problems")
    parser.add_argument("--shard-mb", type=float, default=DEFAULT_SHARD_MB, help="shard size in MiB (default: %(default)s, about 9 h of audio)")
    parser.add_argument("--sample-rate", type=int, default=16000, help="audio is resampled to this rate, the task's sample_rate (default: %(default)s)")
    parser.add_argument("--overwrite", action="store_true", help="replace a split packed from another manifest or with other settings")
    add_jobs_argument(parser)
    args = parser.parse_args(argv)
    if args.check:
        return check(args)
    if not args.inputs or not args.out:
        parser.error("give MANIFEST and --out, or --check PACKED_DIR")
    return pack(args)


if __name__ == "__main__":
    sys.exit(main())
