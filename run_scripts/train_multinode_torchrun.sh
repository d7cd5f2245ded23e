#!/usr/bin/env bash
# Data-parallel training on several machines with torchrun (NCCL): run this on every node.
#
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=node0 [MASTER_PORT=29500] [NPROC_PER_NODE=8] \
#       run_scripts/train_multinode_torchrun.sh MANIFEST_DIR OUTPUT_DIR [hydra overrides ...]
#
# NODE_RANK is 0 on the node whose address is MASTER_ADDR, 1 .. NNODES-1 on the others;
# NPROC_PER_NODE defaults to the GPUs visible on the node. MANIFEST_DIR, the audio and OUTPUT_DIR
# must be on a file system all nodes share. fairseq reads RANK/WORLD_SIZE from torchrun's environment
# (one GPU per process: device = RANK % GPUs per node). Each process writes Hydra's log to
# OUTPUT_DIR/hydra/rankR. Rerunning the same command on every node resumes.
set -euo pipefail
source "$(dirname "$0")/train_common.sh"
: "${NNODES:?set NNODES}" "${NODE_RANK:?set NODE_RANK}" "${MASTER_ADDR:?set MASTER_ADDR}"
NPROC_PER_NODE=${NPROC_PER_NODE:-$("$PYTHON" -c "import torch; print(torch.cuda.device_count())")}
exec torchrun --nnodes="$NNODES" --node_rank="$NODE_RANK" --nproc_per_node="$NPROC_PER_NODE" \
    --master_addr="$MASTER_ADDR" --master_port="${MASTER_PORT:-29500}" --no-python \
    fairseq-hydra-train --config-name "$CONFIG" \
    task.data="$DATA" checkpoint.save_dir="$OUT/checkpoints" "hydra.run.dir=$OUT/hydra/rank\${oc.env:RANK}" \
    distributed_training.distributed_world_size=$((NNODES * NPROC_PER_NODE)) \
    distributed_training.distributed_backend=nccl \
    "${OVERRIDES[@]}"
