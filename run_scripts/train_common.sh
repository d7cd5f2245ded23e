# Sourced by the train_*.sh launchers: argument parsing and the checkpoint check shared by all of them.
# The launchers expect the environment to be active (fairseq-hydra-train on PATH), e.g. after `source run_scripts/env.sh`.
#
# Sets DATA (absolute manifest folder), OUT (absolute output folder), CONFIG (fairseq-hydra-train
# --config-name, default $DEFAULT_CONFIG) and OVERRIDES (the remaining arguments: Hydra overrides).

if [ $# -lt 2 ]; then
    echo "usage: $(basename "$0") MANIFEST_DIR OUTPUT_DIR [hydra overrides ...]" >&2
    exit 2
fi
DATA=$(realpath "$1")
OUT=$(realpath -m "$2")
shift 2
OVERRIDES=("$@")
CONFIG=${CONFIG:-${DEFAULT_CONFIG:-pretrain_cfS}}
PYTHON=${PYTHON:-python}
mkdir -p "$OUT/checkpoints"

# A checkpoint_last.pt cut short (full disk, kill during fairseq's copy) is reported and replaced
# by the newest intact checkpoint, so that rerunning the same command resumes.
verify_checkpoints() {
    "$PYTHON" -m fairseq_logmel_conformer.checkpoint "$OUT/checkpoints" --fall-back
}
