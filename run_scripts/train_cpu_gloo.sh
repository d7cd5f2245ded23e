#!/usr/bin/env bash
# Data-parallel training on one CPU machine: NPROC processes over torch.distributed's gloo backend.
#
#   [NPROC=2] [PORT=29500] [CONFIG=pretrain_tiny] run_scripts/train_cpu_gloo.sh MANIFEST_DIR OUTPUT_DIR [hydra overrides ...]
#
# One fairseq-hydra-train per rank (fairseq's own launcher and torchrun both assume GPUs), with
# fairseq's legacy_ddp gradient all-reduce (PyTorch DDP as fairseq builds it needs a GPU). Each
# process uses OMP_NUM_THREADS threads (default: cores / NPROC). Rank 0 logs to the terminal and
# writes the checkpoints; Hydra's logs go to OUTPUT_DIR/hydra/rankR. If one rank fails the others
# are stopped. Rerunning the same command resumes. With optimization.update_freq='[K]' the batch
# equals that of a one-process run with update_freq='[NPROC*K]'.
set -euo pipefail
DEFAULT_CONFIG=pretrain_tiny
source "$(dirname "$0")/train_common.sh"
NPROC=${NPROC:-2}
PORT=${PORT:-29500}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(( $(nproc) / NPROC > 0 ? $(nproc) / NPROC : 1 ))}
pids=()
stop_ranks() {
    for pid in "${pids[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
}
trap stop_ranks EXIT
for rank in $(seq 0 $((NPROC - 1))); do
    fairseq-hydra-train --config-name "$CONFIG" \
        task.data="$DATA" checkpoint.save_dir="$OUT/checkpoints" hydra.run.dir="$OUT/hydra/rank$rank" \
        common.cpu=true \
        distributed_training.distributed_backend=gloo \
        distributed_training.ddp_backend=legacy_ddp \
        distributed_training.distributed_init_method="tcp://127.0.0.1:$PORT" \
        distributed_training.distributed_world_size="$NPROC" \
        distributed_training.distributed_rank="$rank" \
        distributed_training.distributed_no_spawn=true \
        "${OVERRIDES[@]}" &
    pids+=($!)
done
status=0
for _ in "${pids[@]}"; do
    if ! wait -n; then
        status=1
        stop_ranks
    fi
done
trap - EXIT
exit $status
