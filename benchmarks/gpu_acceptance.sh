#!/usr/bin/env bash
# The GPU acceptance run: what ratsweep can only check on a GPU, in one go and in at most about 8
# minutes, on a machine with nothing but Python, torch and CuPy. From the repository root:
#
#   benchmarks/gpu_acceptance.sh --fetch-wheels   # first, where pip reaches PyPI: the wheels the run
#                                                 # needs (pytest, PyYAML) into benchmarks/.wheels,
#                                                 # to carry to the GPU machine
#   benchmarks/gpu_acceptance.sh                  # on the GPU machine; PYTHON=... picks the interpreter
#   benchmarks/gpu_acceptance.sh --quick --out D  # tiny sizes, results in D: tries the script itself
#                                                 # (on a CPU-only machine the GPU parts skip or fail)
#
# Steps: the environment, the wheels, a forward and a backward of each kernel against the reference
# (`ratsweep check`), the CUDA tests, CUDA-graph capture and fullgraph torch.compile, the kernel
# benchmark (fp32/bf16/fp16 at 1M/16M/64M: bandwidth against a plain copy, time against GELU), a
# short CIFAR-10 VGG4 run (rational vs GELU) and the RL update step eager and compiled into CUDA graphs
# (rational vs ReLU and GELU). A failing step does not stop the later ones. Results go to
# benchmarks/results/ (or --out): rational_kernels_<gpu>.md, cifar_epoch_<gpu>.md, rl_updates_<gpu>.md, and
# gpu_acceptance_<gpu>.md with the device, versions, date and a table of every step, passed or failed
# with its cause; the full output is in gpu_acceptance_<gpu>.log. Exit status 1 if any step failed.
set -uo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
OUT=benchmarks/results
QUICK=0
BUDGET=480  # seconds for the whole run
WHEELS=${WHEELS:-benchmarks/.wheels}  # the carried wheels (--fetch-wheels)
while (($#)); do
    case $1 in
        --quick) QUICK=1 ;;
        --out) OUT=$2; shift ;;
        --fetch-wheels)
            # for the GPU machine's interpreter: CPython 3.12 on x86-64 Linux unless PYTHON_VERSION says
            exec "$PYTHON" -m pip download --only-binary=:all: --python-version "${PYTHON_VERSION:-3.12}" \
                --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 -d "$WHEELS" pytest pyyaml ;;
        *) echo "gpu_acceptance.sh: unknown argument $1 (expected --quick, --out DIR or --fetch-wheels)" >&2; exit 2 ;;
    esac
    shift
done
mkdir -p "$OUT" || exit 2
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
export PYTHON WHEELS WORK
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

# the GPU's model in a file name: h200 for "NVIDIA H200", else the name (geforce_rtx_4090); cpu without one
TAG=$("$PYTHON" -c 'import re, torch
name = torch.cuda.get_device_name().lower().replace("nvidia", "") if torch.cuda.is_available() else "cpu"
model = re.findall(r"\b([a-z]+\d+[a-z]*)\b", name)
print(model[0] if model else re.sub(r"[^a-z0-9]+", "_", name).strip("_"))' 2>/dev/null || echo unknown)
REPORT=$OUT/gpu_acceptance_$TAG.md
LOG=$OUT/gpu_acceptance_$TAG.log
: > "$LOG"
START=$(date +%s)
DEADLINE=$((START + BUDGET))
ROWS=()
FAILED=0

# step NAME SECONDS COMMAND...: runs COMMAND with a time limit, its output to the terminal and the log;
# records passed, or failed with the last line that says why (or that the run's time was up).
step() {
    local name=$1 limit=$2
    shift 2
    local left=$((DEADLINE - $(date +%s)))
    if ((left < 20)); then  # not run is not passed
        ROWS+=("| $name | FAILED | 0 | not run: out of the run's ${BUDGET} s |")
        FAILED=1
        return
    fi
    ((limit > left)) && limit=$left
    if declare -F "$1" >/dev/null; then  # a function of this script: timeout runs it in a new shell
        set -- bash -c "$(declare -f "$1"); $1"
    fi
    echo "=== $name (limit ${limit} s)" | tee -a "$LOG"
    local began=$(date +%s)
    timeout --kill-after=10 "$limit" "$@" 2>&1 | tee "$WORK/output" >> "$LOG"
    local status=${PIPESTATUS[0]} took=$(($(date +%s) - began))
    tail -n 3 "$WORK/output"
    if ((status == 0)); then
        local summary
        summary=$(grep -E "passed|failed|skipped|wrote|ok" "$WORK/output" | tail -n 1)
        summary=${summary:-$(grep -v '^\s*$' "$WORK/output" | tail -n 1)}
        ROWS+=("| $name | passed | $took | $(echo "$summary" | tr '|' '/' | cut -c1-160) |")
    else
        local cause
        if ((status == 124 || status == 137)); then
            cause="timed out after ${limit} s"
        else
            cause=$(grep -E "Error|error|FAILED|failed|No module" "$WORK/output" | tail -n 1)
            cause=${cause:-$(grep -v '^\s*$' "$WORK/output" | tail -n 1)}
            cause="exit $status: $(echo "$cause" | tr '|' '/' | cut -c1-200)"
        fi
        ROWS+=("| $name | FAILED | $took | $cause |")
        FAILED=1
    fi
}

environment() {
    "$PYTHON" - <<'EOF'
import platform, subprocess
import torch
print(f"python {platform.python_version()}, torch {torch.__version__} (CUDA {torch.version.cuda})")
try:
    import cupy
    print(f"cupy {cupy.__version__}")
except ImportError as e:
    print(f"cupy: not importable ({e})")
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f"gpu: {p.name}, {p.multi_processor_count} SMs, {p.total_memory / 2**30:.0f} GiB, sm_{p.major}{p.minor}")
    print(subprocess.run(["nvidia-smi", "--query-gpu=driver_version,clocks.max.sm,clocks.max.mem", "--format=csv"],
                         capture_output=True, text=True).stdout.strip())
else:
    print("gpu: none (no CUDA device)")
EOF
}

# pytest and PyYAML from the carried wheels, where the machine lacks them
wheels() {
    if "$PYTHON" -c "import pytest, yaml" 2>/dev/null; then
        echo "pytest and yaml importable"
        return 0
    fi
    if ! ls "$WHEELS"/*.whl >/dev/null 2>&1; then
        echo "pytest or yaml missing and no wheels in $WHEELS: run benchmarks/gpu_acceptance.sh --fetch-wheels where pip reaches PyPI, and carry $WHEELS"
        return 1
    fi
    # a wheel is a zip of what goes into site-packages: unpacked, it needs no pip (which may be missing)
    local wheel
    for wheel in "$WHEELS"/*.whl; do
        "$PYTHON" -m zipfile -e "$wheel" "$WORK/site" || return 1
    done
    echo "unpacked $(ls "$WHEELS"/*.whl | wc -l) wheels from $WHEELS into the run's own site folder"
}

if ((QUICK)); then  # the CPU cases of the same tests, tiny sizes
    DEVICE=cpu
    BENCHMARK_ARGS=(--device cpu --size 65536 --rounds 3 --calls 1)
    CIFAR_ARGS=(--models vgg4 --train-images 256 --epochs 2 --precisions fp32 --pack 0)
    RL_ARGS=(--device cpu --algorithms iql --activations relu,rational --updates 20 --warmup 2 --rounds 2 --compile)
    TESTS=(-q -k "sign_bit or large_inputs")
    GRAPH_TESTS=(-q -k "graph or (compiled and mlp)")
else  # the GPU cases only (-m gpu): the CPU ones run in CI, and would need a C++ compiler here
    DEVICE=cuda
    BENCHMARK_ARGS=(--device cuda --size $((1 << 20)) --size $((16 << 20)) --size $((64 << 20)))
    CIFAR_ARGS=(--models vgg4 --epochs 2 --precisions fp32 --pack 0)
    RL_ARGS=(--device cuda --updates 1000 --warmup 20 --compile)  # compiled: CUDA graphs, the rational kernels inside
    TESTS=(-v -m gpu -k "not graph and not compiled")  # -v: each result in the log as it comes
    GRAPH_TESTS=(-v -m gpu -k "graph or compiled")
fi
PYTEST=("$PYTHON" -m pytest -p no:cacheprovider -W ignore::pytest.PytestConfigWarning tests/test_rational_cuda.py)

step environment 30 environment
step wheels 30 wheels
export PYTHONPATH="$PYTHONPATH:$WORK/site"
step "kernel check" 90 "$PYTHON" -c "import argparse, sys; from ratsweep.cli import check; sys.exit(check(argparse.Namespace(device=['$DEVICE'])))"
step "CUDA tests" 180 "${PYTEST[@]}" "${TESTS[@]}"
step "graph capture, fullgraph compile" 90 "${PYTEST[@]}" "${GRAPH_TESTS[@]}"
step "kernel benchmark" 120 "$PYTHON" benchmarks/rational_kernels.py "${BENCHMARK_ARGS[@]}" --output "$OUT/rational_kernels_$TAG.md"
step "CIFAR-10 VGG4, rational vs GELU" 120 "$PYTHON" benchmarks/cifar_epoch.py "${CIFAR_ARGS[@]}" --output "$OUT/cifar_epoch_$TAG.md"
step "RL updates, eager and CUDA graphs" 180 "$PYTHON" benchmarks/rl_updates.py "${RL_ARGS[@]}" --output "$OUT/rl_updates_$TAG.md"

{
    echo "# GPU acceptance run"
    echo
    echo "- date: $(date -u +%Y-%m-%dT%H:%M:%SZ); command: benchmarks/gpu_acceptance.sh $([ $QUICK = 1 ] && echo --quick); $(($(date +%s) - START)) s"
    timeout 30 bash -c "$(declare -f environment); environment" 2>&1 | sed 's/^/- /'
    echo "- outputs: $OUT/rational_kernels_$TAG.md, $OUT/cifar_epoch_$TAG.md; full log $LOG"
    echo
    echo "| step | result | seconds | summary or cause |"
    echo "|---|---|---:|---|"
    printf '%s\n' "${ROWS[@]}"
} > "$REPORT"
echo
cat "$REPORT"
exit $FAILED
