#!/usr/bin/env bash
# The main job on an embedded default, no download needed: generate a small audio set, build its manifests,
# pre-train the tiny conformer on CPU for a few updates with fairseq-hydra-train, and load the checkpoint.
#   bash run_scripts/demo.sh [WORK_DIR]      (default: ./demo_run)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
WORK="$(mkdir -p "${1:-demo_run}" && cd "${1:-demo_run}" && pwd)"

python -c "from fairseq_logmel_conformer.data.synthetic import write_dataset; write_dataset('$WORK/audio', num_clips=60, seconds=(1.0, 5.0))"
logmel-manifest "$WORK/audio" --dest "$WORK/manifest" --valid-percent 0.1
fairseq-hydra-train --config-name pretrain_tiny \
    task.data="$WORK/manifest" common.cpu=true optimization.max_update=20 \
    checkpoint.save_dir="$WORK/checkpoints" hydra.run.dir="$WORK/hydra" 2>&1 | grep -E '\]\[(train_inner|train|valid)\]\[|done training'
python - "$WORK/checkpoints/checkpoint_last.pt" <<'PY'
import sys
import torch
import fairseq_logmel_conformer  # noqa: F401  (registers the plugin)
from fairseq import checkpoint_utils

models, cfg, task = checkpoint_utils.load_model_ensemble_and_task([sys.argv[1]])
features, _ = models[0].eval().extract_features(torch.randn(1, 16000 * 3))
print(f"checkpoint: {sys.argv[1]}")
print(f"frame embeddings of a 3 s clip: {tuple(features.shape)} (batch, 80 ms steps, dim)")
PY
