#!/usr/bin/env bash
# The GPU check of the compiled training step (model.compile), in one call of at most 8 minutes, compilation included.
#
#   bash benchmarks/gpu_step.sh WHEEL_DIR [BUDGET_SECONDS]
#
# On a machine with an NVIDIA GPU, Python 3.12 and torch (2.11 + CUDA 13 on the device machine), no network: installs
# fairseq-fixed's dependencies from WHEEL_DIR, builds fairseq-fixed's two Cython modules from its sdist there, then runs
# benchmarks.bench_train_throughput (bf16, fairseq's Trainer, common.memory_efficient_bf16=true, eager against
# model.compile=true, each configuration its own process, repetitions interleaved, medians) in groups, most
# important first, each only if the time left allows it:
#
#   1. 512 x 10 s: cf_L and cf_S, eager and compiled: model FLOP utilisation (MFU, 989 TFLOP/s dense bf16 peak), peak
#      memory, and the kernel-time profile of each step (top 25 GPU kernels by CUDA time, time_by_kernel);
#   then the packed corpus's loader (issue 27: benchmarks.bench_input_pipeline, 0-15 workers) against the
#      consumption group 1 measured: supply over each configuration (target 3x the compiled cf_L step);
#   2. 128 x 10 s: the same four and fairseq's wav2vec 2.0 base (its own config and fairseq's bf16, as in the
#      earlier runs; cf_L per audio second over it: target 8x);
#   3. 8 x 10 s: cf_L eager / compiled / compiled with CUDA graphs (compile_mode=reduce-overhead), on fairseq's
#      Trainer and on the bare loop (trainer overhead: target <= 15%), cf_S eager / compiled, wav2vec 2.0 base (3x);
#   4. fine-tuning cf_S with finetune_esc50's recipe (consistency loss, two passes) at 32 x 4 s: eager, compiled,
#      compiled with CUDA graphs: updates per second (target 20);
#   5. if time is left, cf_L at 512 compiled other ways: the depthwise convolution as a convolution
#      (bench.depthwise=conv), a static batch size (bench.dynamic_batch=false); then max-autotune-no-cudagraphs.
#
# Results: one JSON per group (git commit, machine, settings, per configuration the step times, audio s/s,
# updates/s, TFLOP/s, MFU, peak memory, first-step (compile) seconds, graphs compiled, GPU kernels per step, the
# kernel profile, host-device syncs; ratios and the issue's targets), a summary and the full log (at most 8 files,
# what the device tool returns), in $OUT (the device tool's folder) or experiments/train_throughput/results/gpu_step/.
#
# Estimated runtime (never measured: no GPU was at hand when this was written), about 8.5 minutes if no group were skipped:
#   set-up 40 s (local wheels; Cython builds two modules);
#   group 1 ~190 s: writing 512 clips 20 s, four workers start 25 s, the first step compiles cf_L's and cf_S's
#     graphs (pre-training pass and loss, forward and backward, all twelve blocks inlined) side by side, cold:
#     guessed 90-150 s for cf_L on 16 cores; then 1 more warm-up step and 3 x 3 timed steps of at most 0.4 s for
#     each of 4 workers (20 s) and diagnostics (FLOPs, operations, profile, optimizer, syncs: ~7 steps each, 15 s);
#   loader ~60 s: writing and packing 3,000 generated 12 s clips (1.2 GB) 20 s, 2 x 5 worker counts x 2 epochs;
#   group 2 ~80 s: inductor's on-disk cache (one folder for all groups) gives the compiled workers group 1's graphs
#     (the batch dimension is dynamic, so the graph is the same), leaving tracing (~20-30 s);
#   group 3 ~90 s: 9 small workers; CUDA graphs record on their first steps (~10 s); reduce-overhead may compile
#     anew if its config misses the cache;
#   group 4 ~80 s: a new graph (the classifier's encoder), cf_S only, ~40-60 s cold;
#   groups 5: only if >= 100 s (variants: two new graphs) and then >= 150 s (max-autotune benchmarks GEMM
#     choices while compiling, minutes) are left; at the estimate above they are skipped.
# Each group gets the time left as its limit; a group cut short leaves no JSON, the log says how far it got.
#
# Preparation, here with network: bash benchmarks/gpu_prepare.sh (the wheels in .whl, 12.9 MB, and the commit; the
# carried audio too, which this script does not use). Then one call of the device tool:
# run(command="bash benchmarks/gpu_step.sh .whl", carry=[".whl"], timeout_s=500).
set -uo pipefail

WHEELS="${1:?usage: bash benchmarks/gpu_step.sh WHEEL_DIR [BUDGET_SECONDS]}"
BUDGET="${2:-470}"
START=$(date +%s)
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RESULTS="${OUT:-$ROOT/experiments/train_throughput/results/gpu_step}"
mkdir -p "$RESULTS"
LOG="$RESULTS/gpu_step.log"
SUMMARY="$RESULTS/gpu_step_summary.txt"
: > "$LOG"
left() { echo $(( BUDGET - ($(date +%s) - START) )); }
say() { echo "[$(( $(date +%s) - START ))s] $*" | tee -a "$LOG"; }

# ---- set-up: wheels, fairseq-fixed's Cython modules, the package from this checkout
source "$ROOT/benchmarks/gpu_setup.sh"

# ---- groups
BF16="common.memory_efficient_bf16=true"
C="model.compile=true"
CG="model.compile=true:model.compile_mode=reduce-overhead"
COMMON=(--device cuda --precision bf16 --peak-tflops 989 --parallel-warmup)

group() {  # NAME MIN_SECONDS MODULE ARGS...: run one benchmark if MIN_SECONDS are left, limited to the time left
    local name=$1 need=$2 module=$3; shift 3
    local remaining; remaining=$(left)
    if (( remaining < need )); then
        say "skipped $name: ${remaining}s left, needs about ${need}s"
        return
    fi
    say "group $name (limit ${remaining}s)"
    # Its own process group, so that the limit ends the workers too (they hold GPU memory the next group needs).
    setsid python3 -m "$module" "$@" >/tmp/gpu_step_group.out 2>>"$LOG" &
    local pid=$!
    ( sleep "$remaining"; kill -TERM -- "-$pid" 2>/dev/null; sleep 10; kill -KILL -- "-$pid" 2>/dev/null ) &
    local watchdog=$!
    wait "$pid"
    local status=$?
    kill "$watchdog" 2>/dev/null
    wait "$watchdog" 2>/dev/null
    tee -a "$LOG" </tmp/gpu_step_group.out
    say "group $name ended (exit $status)"
}

step() {  # NAME MIN_SECONDS ARGS...: a group of bench_train_throughput, its JSON gpu_step_NAME.json
    local name=$1 need=$2; shift 2
    group "$name" "$need" benchmarks.bench_train_throughput "${COMMON[@]}" "$@" --output "$RESULTS/gpu_step_$name.json"
}

step b512 150 --clips 512 --reps 3 --steps 3 --warmup 2 --profile-top 25 \
    --configs "cfL_trainer:$BF16,cfL_trainer:$BF16:$C,cfS_trainer:$BF16,cfS_trainer:$BF16:$C"
# The packed corpus's loader (issue 27) against what group b512's steps consume: the supply ratio per configuration.
group loader 60 benchmarks.bench_input_pipeline --device cuda --sections loader,frontend --formats packed \
    --workers 0,1,4,8,15 --epochs 2 --repeats 2 --packed-clips 3000 --threads 1 \
    --train-results "$RESULTS/gpu_step_b512.json" --output "$RESULTS/gpu_loader.json"
step b128 60 --clips 128 --reps 3 --steps 3 --warmup 2 \
    --configs "cfL_trainer:$BF16,cfL_trainer:$BF16:$C,cfS_trainer:$BF16,cfS_trainer:$BF16:$C,w2v2_base_trainer"
step b8 60 --clips 8 --reps 5 --steps 5 --warmup 3 \
    --configs "cfL_trainer:$BF16,cfL_trainer:$BF16:$C,cfL_trainer:$BF16:$CG,cfL_bare,cfL_bare:$C,cfL_bare:$CG,cfS_trainer:$BF16,cfS_trainer:$BF16:$C,w2v2_base_trainer"
step ft 60 --clips 32 --seconds 4 --reps 5 --steps 5 --warmup 3 \
    --configs "cfS_ft_trainer:$BF16,cfS_ft_trainer:$BF16:$C,cfS_ft_trainer:$BF16:$CG"
step variants 100 --clips 512 --reps 2 --steps 3 --warmup 2 \
    --configs "cfL_trainer:$BF16:$C,cfL_trainer:$BF16:$C:bench.depthwise=conv,cfL_trainer:$BF16:$C:bench.dynamic_batch=false"
step autotune 150 --clips 512 --reps 2 --steps 3 --warmup 2 \
    --configs "cfL_trainer:$BF16:$C,cfL_trainer:$BF16:model.compile=true:model.compile_mode=max-autotune-no-cudagraphs"

# ---- summary: every configuration's headline numbers and every target, from the JSON files written
python3 - "$RESULTS" <<'EOF' 2>>"$LOG" | tee "$SUMMARY"
import glob, json, os, sys

for path in sorted(glob.glob(os.path.join(sys.argv[1], "gpu_step_*.json"))):
    run = json.load(open(path))
    print(f"== {os.path.basename(path)}: commit {run.get('commit')}, {run['machine'].get('gpu')}, clips {run['settings']['clips']} x {run['settings']['seconds']} s")
    for name, c in run["results"]["configs"].items():
        if "error" in c:
            print(f"  {name}: failed: {c['error']}")
            continue
        print(f"  {name}: step {c['step']['median_s']:.4f} s, {c['audio_s_per_s']:.0f} audio s/s, {c['updates_per_s']:.1f} updates/s, "
              f"MFU {c.get('mfu', float('nan')):.1%}, peak {c.get('peak_memory_mib', float('nan')) / 1024:.1f} GiB, "
              f"first step {c.get('first_step_s', float('nan')):.0f} s, graphs {c.get('graphs_compiled')}, "
              f"GPU ops/step {c.get('device_operations_per_step')}, syncs {c.get('host_syncs', {}).get('count')}")
        if "compile=true" in name and run["settings"]["clips"] >= 512:
            for kernel in c.get("time_by_kernel", {}).get("top", [])[:12]:
                print(f"      {kernel['ms']:8.2f} ms {kernel['share']:6.1%} x{kernel['calls']:<4d} {kernel['name'][:110]}")
    for key, value in run["results"]["ratios"].items():
        print(f"  {key}: {value:.3f}")
    for key, check in run["results"]["targets"].items():
        print(f"  target {key}: {check['value']:.3f} vs {check['target']}: {'met' if check['met'] else 'NOT met'}")
loader = os.path.join(sys.argv[1], "gpu_loader.json")
if os.path.isfile(loader):
    run = json.load(open(loader))
    packed = run["results"]["loader"]["packed"]
    print(f"== gpu_loader.json: commit {run.get('commit')}: packed corpus, audio s/s (per CPU s) by num_workers, epochs after a loader's first: " + ", ".join(
        f"{key[8:]}: {(v['later_epochs'] or v)['audio_s_per_s']:.0f} ({(v['later_epochs'] or v)['audio_s_per_cpu_s']:.0f})"
        for key, v in packed.items() if key.startswith("workers_")))
    for name, c in run["results"].get("against_training", {}).get("configs", {}).items():
        print(f"  supply over {name}: {c['supply_ratio_best']:.2f}x (target 3x: {'met' if c['supply_at_least_3x'] else 'NOT met'})")
EOF
say "done in $(( $(date +%s) - START ))s"
