#!/usr/bin/env bash
# Everything the GPU scripts (gpu_step.sh, gpu_esc50.sh) carry to the device machine, in one command, run here from
# the repository root with network for pip and the data next to the checkout:
#
#   bash benchmarks/gpu_prepare.sh [DATA_DIR]        # DATA_DIR: default ../shared/data
#
# .whl/     what the device image (Python 3.12, its own torch and torchaudio, no network) lacks of fairseq-fixed's and
#           this package's requirements: wheels of hydra-core, omegaconf, bitarray, soundfile, cffi and pycparser
#           for CPython 3.12 on manylinux x86_64; antlr4 (omegaconf's parser, an sdist only, pure Python) built into a
#           wheel here; fairseq-fixed as its sdist (gpu_setup.sh builds its two Cython modules there); COMMIT, the
#           commit the results will record (the copy there has no git history: rerun after committing).
#           Already on the image, not carried: numpy, regex, sacrebleu, scikit-learn, tqdm, packaging, pyyaml,
#           Cython, setuptools, torchaudio, sentencepiece, matplotlib.
# .device/  ESC-50, unlabeled and unlabeled_sfx as Ogg Opus (benchmarks/device_audio.py, about 12 kbit/s); encoding
#           resumes and skips what is done, so a rerun after new commits only rewrites COMMIT.
#
# Both folders go into .git/info/exclude: ignored by git, so a call carries them only when named in its carry list.
# Last, the size of what a call carries (tracked and untracked files plus both folders) against the 64 MiB limit.
# Then, for example: run(command="bash benchmarks/gpu_esc50.sh .whl unlabeled", carry=[".whl", ".device"], timeout_s=590)
set -euo pipefail

DATA="${1:-../shared/data}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"   # any Python with pip, setuptools, wheel, Cython and torch
[ -x "$PYTHON" ] || { echo "no $PYTHON: run bash run_scripts/test.sh once, or set PYTHON" >&2; exit 1; }

EXCLUDE="$(git rev-parse --git-path info/exclude)"
mkdir -p "$(dirname "$EXCLUDE")"
for folder in /.whl/ /.device/; do
    grep -qxF "$folder" "$EXCLUDE" 2>/dev/null || echo "$folder" >> "$EXCLUDE"
done

mkdir -p .whl
PLATFORMS=(manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64)
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${PLATFORMS[@]/#/--platform=}" -d .whl \
    hydra-core==1.3.2 omegaconf==2.3.0 bitarray==3.8.0 soundfile==0.13.1 cffi==2.0.0 pycparser==2.23
[ -n "$(ls .whl/antlr4_python3_runtime-4.9.3-*.whl 2>/dev/null)" ] \
    || "$PYTHON" -m pip wheel -q --no-deps --no-build-isolation -w .whl antlr4-python3-runtime==4.9.3
"$PYTHON" -m pip download -q --no-deps --no-build-isolation --no-binary=:all: -d .whl fairseq-fixed==0.12.3.1
git rev-parse HEAD > .whl/COMMIT
git diff --quiet HEAD || echo "note: uncommitted changes; the results will record $(cat .whl/COMMIT) without them" >&2

for set in esc50 unlabeled unlabeled_sfx; do
    [ -d "$DATA/$set" ] || { echo "no $DATA/$set" >&2; exit 1; }
    "$PYTHON" -m benchmarks.device_audio encode "$DATA/$set" ".device/audio/$set"
done

# What a call carries: the files git would copy (tracked, and untracked ones it does not ignore) and the two folders.
tree=$(git ls-files -z --cached --others --exclude-standard | du -cb --files0-from=- 2>/dev/null | tail -1 | cut -f1)
wheels=$(du -sb .whl | cut -f1)
audio=$(du -sb .device | cut -f1)
carried=$((tree + wheels + audio))
echo "carried with .whl and .device: $((carried / 1048576)) MiB of 64 (working tree $((tree / 1048576)) MiB," \
     "wheels $((wheels / 1048576)) MiB, audio $((audio / 1048576)) MiB)"
[ "$carried" -lt $((64 * 1048576)) ] || { echo "over the 64 MiB a call carries" >&2; exit 1; }
