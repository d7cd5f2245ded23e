#!/usr/bin/env bash
# Data-parallel training on all GPUs of one machine (NCCL); fairseq starts one process per GPU.
#
#   [NGPUS=8] [PORT=29671] run_scripts/train_1node_multigpu.sh MANIFEST_DIR OUTPUT_DIR [hydra overrides ...]
#
# NGPUS defaults to the number of visible GPUs (restrict them with CUDA_VISIBLE_DEVICES).
# dataset.max_tokens is per GPU, so the batch is NGPUS times the one-GPU batch; to keep the batch of
# a run on more GPUs, add optimization.update_freq='[K]'. Rerunning the same command resumes.
set -euo pipefail
source "$(dirname "$0")/train_common.sh"
NGPUS=${NGPUS:-$("$PYTHON" -c "import torch; print(torch.cuda.device_count())")}
exec fairseq-hydra-train --config-name "$CONFIG" \
    task.data="$DATA" checkpoint.save_dir="$OUT/checkpoints" hydra.run.dir="$OUT/hydra" \
    distributed_training.distributed_world_size="$NGPUS" \
    distributed_training.distributed_backend=nccl \
    distributed_training.distributed_port="${PORT:-29671}" \
    "${OVERRIDES[@]}"
