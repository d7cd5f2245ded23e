#!/usr/bin/env bash
# Example 2: fine-tune on ESC-50 with its 5-fold cross-validation and report the mean accuracy.
#
#   examples/finetune_esc50.sh ESC50_DIR CHECKPOINT|scratch OUT_DIR [FOLDS] [hydra overrides ...]
#
# ESC50_DIR   the ESC-50 release (github.com/karolpiczak/ESC-50): audio/ and meta/esc50.csv
# CHECKPOINT  a pre-trained checkpoint (e.g. from examples/pretrain_own_audio.sh), or "scratch" for the baseline
#             without pre-training; its encoder is ENCODER=cfS (environment; default), cfL or tiny
# FOLDS       all (default) or held-out folds such as 1 or 2,4; an argument without '=' is taken as FOLDS,
#             the rest are Hydra overrides, e.g. common.bf16=true, or common.cpu=true without a GPU
#
# Writes OUT_DIR/manifests/foldK (train = the other four folds, valid = fold K) and, per fold,
# OUT_DIR/foldK/checkpoints, OUT_DIR/foldK/hydra (logs) and OUT_DIR/foldK/eval (metrics.json, per-class
# results, confusion matrix); prints each fold's accuracy and their mean (the paper's ESC-50 number).
# Rerunning the same command skips the folds that have OUT_DIR/foldK/eval/metrics.json and resumes the
# others from their checkpoint_last.pt: delete OUT_DIR/foldK to redo fold K.
set -euo pipefail

if [ $# -lt 3 ]; then
    echo "usage: $(basename "$0") ESC50_DIR CHECKPOINT|scratch OUT_DIR [FOLDS] [hydra overrides ...]" >&2
    exit 2
fi
ESC50_DIR=$(realpath "$1")
OUT=$(realpath -m "$3")
if [ "$2" = scratch ]; then
    START=(model.pretrained_path=null "+encoder=${ENCODER:-cfS}")
else
    START=("model.pretrained_path=$(realpath "$2")")
fi
shift 3
FOLDS="1 2 3 4 5"
if [ $# -gt 0 ] && [[ "$1" != *=* ]]; then
    [ "$1" = all ] || FOLDS=${1//,/ }
    shift
fi
PYTHON=${PYTHON:-python}

if [ ! -f "$OUT/manifests/fold5/valid.tsv" ]; then
    "$PYTHON" -m fairseq_logmel_conformer.prepare esc50 "$ESC50_DIR" --out "$OUT/manifests"
fi

METRICS=()
for FOLD in $FOLDS; do
    RUN="$OUT/fold$FOLD"
    METRICS+=("$RUN/eval/metrics.json")
    if [ -f "$RUN/eval/metrics.json" ]; then
        echo "fold $FOLD: already evaluated, reusing $RUN/eval/metrics.json"
        continue
    fi
    fairseq-hydra-train --config-name finetune_esc50 task.data="$OUT/manifests/fold$FOLD" "${START[@]}" \
        checkpoint.save_dir="$RUN/checkpoints" hydra.run.dir="$RUN/hydra" "$@"
    logmel-evaluate "$RUN/checkpoints/checkpoint_best.pt" --split valid --out "$RUN/eval"
done

"$PYTHON" -c '
import json, sys
accuracies = [json.load(open(path))["metrics"]["accuracy"] for path in sys.argv[1:]]
for path, accuracy in zip(sys.argv[1:], accuracies):
    print(f"{path}: accuracy {accuracy:.4f}")
print(f"ESC-50 mean accuracy over {len(accuracies)} fold(s): {sum(accuracies) / len(accuracies):.4f}")
' "${METRICS[@]}"
