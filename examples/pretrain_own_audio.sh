#!/usr/bin/env bash
# Example 1: self-supervised pre-training on a folder of your own audio.
#
#   examples/pretrain_own_audio.sh AUDIO_DIR OUT_DIR [CONFIG] [hydra overrides ...]
#
# AUDIO_DIR  wav/flac/ogg/mp3 files in any sub-folders, at any rate and channel count (read as 16 kHz mono).
# CONFIG     pretrain_cfS (default; 18.4M parameters), pretrain_cfL (88.1M), pretrain_tiny
#            (a CPU smoke run); an argument without '=' is taken as CONFIG, the rest are Hydra overrides, e.g.
#              common.bf16=true                                bf16 mixed precision (GPUs with bf16; common.fp16=true otherwise)
#              common.memory_efficient_bf16=true               with it: fp32 master weights updated in a few kernels
#              distributed_training.distributed_world_size=4   GPUs to use (default: all GPUs of the machine)
#              optimization.update_freq='[2]'                  the batch of twice as many GPUs (max_tokens is per GPU)
#              common.cpu=true                                 no GPU
# VALID_PERCENT=0.01 (environment) is the fraction of clips held out to validate the contrastive loss.
#
# Writes OUT_DIR/manifests, OUT_DIR/checkpoints and OUT_DIR/hydra (logs). Rerunning the same command reuses
# the manifests and resumes from OUT_DIR/checkpoints/checkpoint_last.pt.
set -euo pipefail

if [ $# -lt 2 ]; then
    echo "usage: $(basename "$0") AUDIO_DIR OUT_DIR [CONFIG] [hydra overrides ...]" >&2
    exit 2
fi
AUDIO_DIR=$(realpath "$1")
OUT=$(realpath -m "$2")
shift 2
CONFIG=pretrain_cfS
if [ $# -gt 0 ] && [[ "$1" != *=* ]]; then
    CONFIG=$1
    shift
fi

# A fresh split on a rerun would move clips between train and valid of a run being resumed.
if [ ! -f "$OUT/manifests/train.tsv" ]; then
    logmel-manifest "$AUDIO_DIR" --dest "$OUT/manifests" --valid-percent "${VALID_PERCENT:-0.01}"
fi

fairseq-hydra-train --config-name "$CONFIG" \
    task.data="$OUT/manifests" checkpoint.save_dir="$OUT/checkpoints" hydra.run.dir="$OUT/hydra" "$@"

# checkpoint_best.pt has the lowest validation loss; it exists once a validation has run.
CHECKPOINT="$OUT/checkpoints/checkpoint_best.pt"
[ -f "$CHECKPOINT" ] || CHECKPOINT="$OUT/checkpoints/checkpoint_last.pt"
echo "pre-trained checkpoint: $CHECKPOINT"
