#!/usr/bin/env bash
# Data-parallel training on a SLURM cluster, submitted by Hydra's submitit launcher: run on the login node.
#
#   NODES=2 [GPUS_PER_NODE=8] [PARTITION=gpu] [TIME_MIN=4320] [REQUEUES=3] [CPUS_PER_TASK=10] [MEM_GB=400] [PORT=29671] \
#       run_scripts/train_slurm_submitit.sh MANIFEST_DIR OUTPUT_DIR [hydra overrides ...]
#
# Needs `pip install hydra-submitit-launcher`. One SLURM task per GPU; fairseq reads its rank from
# SLURM_PROCID and its GPU from SLURM_LOCALID, and rendezvous on the first node at PORT. On a time-out or a
# preemption submitit requeues the job (up to REQUEUES times) and training resumes from
# OUTPUT_DIR/checkpoints/checkpoint_last.pt; the checkpoint check runs at the start of every (re)queued job.
# Other launcher settings: hydra.launcher.<field>=... (e.g. hydra.launcher.constraint=a100). Hydra's and
# submitit's logs go to OUTPUT_DIR/hydra.
set -euo pipefail
source "$(dirname "$0")/train_common.sh"
NODES=${NODES:-1}
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
PARTITION_OVERRIDE=()
if [ -n "${PARTITION:-}" ]; then
    PARTITION_OVERRIDE=("hydra.launcher.partition=$PARTITION")
fi
exec fairseq-hydra-train --multirun --config-name "$CONFIG" \
    hydra/launcher=submitit_slurm \
    hydra.launcher.nodes="$NODES" \
    hydra.launcher.tasks_per_node="$GPUS_PER_NODE" \
    hydra.launcher.gpus_per_node="$GPUS_PER_NODE" \
    hydra.launcher.cpus_per_task="${CPUS_PER_TASK:-10}" \
    hydra.launcher.mem_gb="${MEM_GB:-400}" \
    hydra.launcher.timeout_min="${TIME_MIN:-4320}" \
    hydra.launcher.max_num_timeout="${REQUEUES:-3}" \
    "${PARTITION_OVERRIDE[@]}" \
    hydra.sweep.dir="$OUT/hydra" \
    task.data="$DATA" checkpoint.save_dir="$OUT/checkpoints" \
    distributed_training.distributed_world_size=$((NODES * GPUS_PER_NODE)) \
    distributed_training.distributed_backend=nccl \
    distributed_training.distributed_port="${PORT:-29671}" \
    "${OVERRIDES[@]}"
