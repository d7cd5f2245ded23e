"""Write a small generated call-type data set in the manifest folder format of ``my_bird_calls``.

    python examples/new_task_plugin/make_demo_data.py OUT_DIR [--clips 40] [--seed 0]

OUT_DIR receives the clips, ``train.tsv``/``train.labels``, ``valid.tsv``/``valid.labels``
(every fourth round of call types) and the vocabulary ``call_types.txt``. Each call type
is one of fairseq_logmel_conformer's generated sound families, standing in for real
recordings.
"""
import argparse
import os
from typing import List, Optional

from fairseq_logmel_conformer.data.synthetic import write_dataset, write_label_files

# call type -> generated sound family that plays it
CALL_TYPES = {"song": "chirp", "alarm": "clicks", "contact": "tone", "no_call": "noise_burst"}


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir", help="folder for the clips, manifests, label files and call_types.txt")
    parser.add_argument("--clips", type=int, default=40, help="number of clips, 1-3 s each, call types in turn")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated sounds and lengths")
    args = parser.parse_args(argv)
    if args.clips < 4 * len(CALL_TYPES):
        parser.error(f"--clips must be at least {4 * len(CALL_TYPES)} (four rounds of call types), so that valid has clips, got {args.clips}")

    call_type = {sound: call for call, sound in CALL_TYPES.items()}
    clips = write_dataset(args.out_dir, args.clips, seconds=(1.0, 3.0), classes=list(CALL_TYPES.values()), seed=args.seed)
    for clip in clips:
        clip["label"] = call_type[clip["label"]]
    # Whole rounds go to valid, so that every call type is validated.
    is_valid = [(i // len(CALL_TYPES)) % 4 == 3 for i in range(len(clips))]
    write_label_files(args.out_dir, [c for c, v in zip(clips, is_valid) if not v], "train")
    write_label_files(args.out_dir, [c for c, v in zip(clips, is_valid) if v], "valid")
    with open(os.path.join(args.out_dir, "call_types.txt"), "w") as f:
        f.writelines(name + "\n" for name in CALL_TYPES)
    print(f"{len(clips)} clips of {len(CALL_TYPES)} call types in {os.path.abspath(args.out_dir)}")


if __name__ == "__main__":
    main()
