#!/usr/bin/env bash
# cf_S pre-trained vs from scratch on ESC-50's five folds, on one GPU, in one call of the device tool (under 10 minutes).
#
#   bash benchmarks/gpu_esc50.sh WHEEL_DIR AUDIO [BENCHMARK_ARGS...]
#
# AUDIO is the pre-training audio: unlabeled, or unlabeled+unlabeled_sfx (folders of .device/audio, joined by +).
# Runs benchmarks.esc50_pretrain_vs_scratch with the shipped pretrain_cfS and finetune_esc50 recipes in bf16, sized to
# the call: pre-training for PRETRAIN_MINUTES (default 2.5) of wall time (the learning rate decays over 2,000 updates,
# of which one H200 takes about 1,700 in that time on either audio set), then the ten fine-tuning runs (five folds,
# pre-trained and scratch, seed 1) of 1,000 updates side by side on the card, then logmel-evaluate on each held-out
# fold, and residual_scale.py on the pre-trained checkpoint. BENCHMARK_ARGS go to the benchmark, e.g.
# --finetune-train-fraction 0.2 --name esc50_cfS_h200_sfx_labels20.
# Results (JSON with commit, machine and settings, a table, a figure) and the log go to $OUT, or to the study's
# results folder. Runtime, estimated from an earlier run of the same benchmark on one H200 (3.25 minutes of
# pre-training, fine-tuning 293 s, 585 s in all): set-up and decoding 60 s, pre-training 2.5 min + 20 s start,
# fine-tuning and evaluation 330 s: about 9 minutes.
#
# Preparation, here with network and the data (../shared/data): bash benchmarks/gpu_prepare.sh, which fills .whl
# (the wheels and the commit) and .device/audio: ESC-50 and both unlabelled sets as Ogg Opus at compression level
# 0.98, about 12 kbit/s (ESC-50 14.3 MB, unlabeled 7.4 MB, unlabeled_sfx 21.5 MB); with the wheels (12.9 MB) and the
# working tree (6.4 MB) 59 MiB of the 64 MiB a call carries, which it checks.
# Then, for example:
#   run(command="bash benchmarks/gpu_esc50.sh .whl unlabeled+unlabeled_sfx", carry=[".whl", ".device"], timeout_s=590)
set -uo pipefail

WHEELS="${1:?usage: bash benchmarks/gpu_esc50.sh WHEEL_DIR AUDIO [BENCHMARK_ARGS...]}"
AUDIO="${2:?usage: bash benchmarks/gpu_esc50.sh WHEEL_DIR AUDIO [BENCHMARK_ARGS...]}"
shift 2
START=$(date +%s)
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RESULTS="${OUT:-$ROOT/experiments/esc50_pretrain_vs_scratch/results}"
CARRIED="$ROOT/.device/audio"
DECODED=/tmp/esc_audio
mkdir -p "$RESULTS"
LOG="$RESULTS/gpu_esc50.log"
: > "$LOG"
say() { echo "[$(( $(date +%s) - START ))s] $*" | tee -a "$LOG"; }

source "$ROOT/benchmarks/gpu_setup.sh"

unlabeled=()
for set in esc50 ${AUDIO//+/ }; do
    [ -d "$CARRIED/$set" ] || { say "no carried audio in $CARRIED/$set (see this script's header)"; exit 1; }
    python3 -m benchmarks.device_audio decode "$CARRIED/$set" "$DECODED/$set" >>"$LOG" 2>&1 \
        || { say "decoding $set failed (see $LOG)"; exit 1; }
    [ "$set" = esc50 ] || unlabeled+=("$DECODED/$set")
done
say "decoded esc50 and $AUDIO"

SLUG=$(echo "$AUDIO" | tr + _)
if python3 -m benchmarks.esc50_pretrain_vs_scratch --esc50-dir "$DECODED/esc50" --unlabeled-dir "${unlabeled[@]}" \
    --work-dir /tmp/esc --results-dir "$RESULTS" --subset esc50 --folds 1 2 3 4 5 --config cfS \
    --device cuda --precision bf16 --jobs 10 --pretrain-minutes "${PRETRAIN_MINUTES:-2.5}" --pretrain-updates 2000 \
    --pretrain-override lr_scheduler.warmup_updates=250 checkpoint.save_interval=1000000 dataset.validate_interval=10 \
    --finetune-updates 1000 --name "esc50_cfS_$SLUG" \
    --note "audio carried as Ogg Opus (benchmarks/device_audio.py, compression level 0.98, about 12 kbit/s), decoded to FLAC" \
    "$@" 2>&1 | tee -a "$LOG"; then
    # Whether pre-training grew the first block's input, as it did the small model's (the study's finding 12): seconds
    # on CPU. The checkpoint is the one the results file just written names (the newest: BENCHMARK_ARGS may rename it);
    # a glob over /tmp/esc would also take an earlier call's pre-training on a machine kept warm.
    RESULT=$(ls -t "$RESULTS"/*.json | head -1)
    CHECKPOINT=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["results"]["pretraining"]["checkpoint"])' "$RESULT")
    python3 experiments/esc50_pretrain_vs_scratch/residual_scale.py "$CHECKPOINT" --audio-dir "$DECODED/esc50/audio" \
        --output "$RESULTS/residual_scale_$(basename "$RESULT")" >>"$LOG" 2>&1 || say "residual_scale.py failed (see $LOG)"
else
    say "the benchmark failed (see $LOG)"
fi
say "done"
