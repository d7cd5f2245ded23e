#!/usr/bin/env bash
# Training on one GPU.
#
#   run_scripts/train_1gpu.sh MANIFEST_DIR OUTPUT_DIR [hydra overrides ...]
#
# CONFIG=pretrain_cfL (default pretrain_cfS) picks the config; fine-tuning configs work the same way.
# Checkpoints go to OUTPUT_DIR/checkpoints, Hydra's logs to OUTPUT_DIR/hydra; rerunning the same
# command resumes from OUTPUT_DIR/checkpoints/checkpoint_last.pt. dataset.max_tokens is per GPU:
# to reproduce a run on N GPUs, add optimization.update_freq='[N]'.
set -euo pipefail
source "$(dirname "$0")/train_common.sh"
exec fairseq-hydra-train --config-name "$CONFIG" \
    task.data="$DATA" checkpoint.save_dir="$OUT/checkpoints" hydra.run.dir="$OUT/hydra" \
    distributed_training.distributed_world_size=1 \
    "${OVERRIDES[@]}"
