# Sourced by the GPU scripts (gpu_step.sh, gpu_esc50.sh): installs what the device machine's image lacks, without
# network, and puts this checkout first on PYTHONPATH. Expects ROOT (the checkout), WHEELS (the carried wheel folder,
# filled by gpu_prepare.sh), LOG and a say() function; leaves the shell in ROOT.
SITE=/tmp/gpu_site
FAIRSEQ_SDIST="$WHEELS"/fairseq_fixed-0.12.3.1.tar.gz
FAIRSEQ_SRC=/tmp/fairseq_fixed-0.12.3.1
# A second call on a machine still warm finds both done for the same wheels (their checksums) and skips them.
DONE="$SITE/.installed-$(cat "$WHEELS"/*.whl "$FAIRSEQ_SDIST" 2>/dev/null | sha1sum | cut -c1-12)"
if [ ! -f "$DONE" ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
        "$WHEELS"/*.whl >>"$LOG" 2>&1 || { say "pip install from $WHEELS failed (see $LOG)"; exit 1; }
    rm -rf "$FAIRSEQ_SRC" && tar xzf "$FAIRSEQ_SDIST" -C /tmp \
        || { say "no fairseq-fixed sdist in $WHEELS"; exit 1; }
    # Only what training imports: data_utils_fast (batch_by_size) and token_block_utils_fast. fairseq's own setup.py
    # would also build three torch C++ extensions, and CUDA ones when CUDA_HOME is set: minutes, for code no benchmark
    # runs.
    (cd "$FAIRSEQ_SRC" && python3 - >>"$LOG" 2>&1 <<'EOF'
import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup

modules = ["data_utils_fast", "token_block_utils_fast"]
extensions = [
    Extension(f"fairseq.data.{name}", [f"fairseq/data/{name}.pyx"], language="c++",
              include_dirs=[numpy.get_include()], extra_compile_args=["-std=c++11", "-O3"])
    for name in modules
]
setup(name="fairseq-cython-modules", ext_modules=cythonize(extensions, language_level=3, quiet=True),
      script_args=["build_ext", "--inplace", "--parallel", "2"])
EOF
    ) || { say "building fairseq-fixed's Cython modules failed (see $LOG)"; exit 1; }
    touch "$DONE"
fi
export PYTHONPATH="$ROOT:$FAIRSEQ_SRC:$SITE${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore
# One inductor cache for every process: later ones reuse the graphs the first compiled.
export TORCHINDUCTOR_CACHE_DIR=/tmp/gpu_inductor
[ -f "$WHEELS/COMMIT" ] && export LOGMEL_GIT_COMMIT="$(cat "$WHEELS/COMMIT")"
cd "$ROOT"
python3 -c "import torch, fairseq, fairseq_logmel_conformer; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'fairseq', fairseq.__version__, torch.cuda.get_device_name(0))" 2>>"$LOG" | tee -a "$LOG" \
    || { say "imports failed (see $LOG)"; exit 1; }
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv >>"$LOG" 2>&1
say "set-up done; commit ${LOGMEL_GIT_COMMIT:-(from git)}"
