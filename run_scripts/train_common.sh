# Sourced by the train_*.sh launchers: the argument parsing they share. A rerun resumes by itself: fairseq-hydra-train
# (with this plugin) resumes from checkpoint_last.pt, or from the newest intact checkpoint if that one was cut short.
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
