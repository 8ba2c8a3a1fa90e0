#!/usr/bin/env bash
# One command that gathers every GPU figure of the project (issues #4, #5, #6) and checks the GPU code paths,
# each step with its own time limit, a failing step never stopping the others. Run from the repository root.
#
#   bash bench/gpu_run.sh --prepare    # HERE, before a device run: fills bench/_work/device/ (git-ignored) with
#                                      # what the GPU machine lacks: the lmdb wheel (cp312) and the shared files
#                                      # the steps read (~30 MB); prints the `carry` list for the device tool
#   bash bench/gpu_run.sh              # ON THE GPU MACHINE (carry: ["bench/_work/device"]); about 4-8 minutes
#   bash bench/gpu_run.sh --dry-run    # (or CPU_SMOKE=1) every step at its tiniest size on the CPU: proves the
#                                      # plumbing (arguments, paths, outputs) in about a minute and a half
#
# Steps (limit in seconds; the sum is the budget, GPU_RUN_BUDGET, default 480):
#   env       20   nvidia-smi, python/torch/CUDA/cuDNN versions, the packages the project imports
#   tests     80   pytest tests/gpu_checks.py (not slow) + tests/test_training_gpu_paths.py
#   data      40   bench_data.py --resident-only: GPUResidentDataset images/s, 227/224 crops (goal >= 20k/s)
#   eval      90   bench_eval.py VGG16, 3500 faces x 10 crops, bf16 and tf32 (goal < 3 s incl. loading)
#   train    120   bench_train.py VGG16 + GoogLeNet, batches 10/64/128, bf16 + tf32, MFU (goal >= 50% VGG16 bf16)
#   schedule 130   bench_train.py --schedule gender_imdbwiki_vgg16: 5 folds x 2400 it x batch 10 (goal < 120 s)
#   compile   60   only with GPU_RUN_COMPILE=1 (or compile in GPU_RUN_STEPS): the slow torch.compile tests (inductor, reduce-overhead)
#
# GPU_RUN_STEPS=env,train (say) runs only those steps, for a short rerun; GPU_RUN_BUDGET=SECONDS changes the budget.
#
# Outputs under $OUT (the device tool's folder; bench/_work/gpu_run_out when unset), 7 files at most (the tool
# returns 8): gpu_run.log (everything), summary.txt (one line per step, then the goals' figures), tests.xml,
# data.json, eval.json, train.json, schedule.json. The summary is printed last (the reply shows the tail).
set -u
cd "$(dirname "$0")/.." || exit 1
REPO=$(pwd)
DEVICE_DIR="$REPO/bench/_work/device"
PY=${PYTHON:-python3}

MODE=run
case "${1:-}" in
  --prepare) MODE=prepare ;;
  --dry-run) MODE=dry ;;
  "") ;;
  *) echo "usage: bash bench/gpu_run.sh [--prepare | --dry-run]" >&2; exit 2 ;;
esac
[ "${CPU_SMOKE:-0}" = "1" ] && [ "$MODE" = run ] && MODE=dry

# --- --prepare: what the device machine lacks ---------------------------------------------------------------
if [ "$MODE" = prepare ]; then
  SRC=${AGEGENDER_SHARED:-$REPO/../shared}
  [ -d "$SRC/adience/model_definitions" ] || { echo "no shared files at $SRC (set AGEGENDER_SHARED)" >&2; exit 1; }
  mkdir -p "$DEVICE_DIR/wheels" "$DEVICE_DIR/shared/adience/mean_images/mean_image" "$DEVICE_DIR/shared/faces"
  # the device image has torch, numpy, onnx, onnxruntime, cv2, typer, rich, safetensors, matplotlib, pytest: not lmdb
  if ! ls "$DEVICE_DIR"/wheels/lmdb-*cp312*.whl >/dev/null 2>&1; then
    $PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
      -d "$DEVICE_DIR/wheels" lmdb==3.0.0 || { echo "could not download the lmdb wheel" >&2; exit 1; }
  fi
  rsync -a --delete "$SRC/adience/model_definitions/" "$DEVICE_DIR/shared/adience/model_definitions/" 2>/dev/null \
    || { rm -rf "$DEVICE_DIR/shared/adience/model_definitions"; cp -r "$SRC/adience/model_definitions" "$DEVICE_DIR/shared/adience/"; }
  rm -rf "$DEVICE_DIR/shared/adience/mean_images/mean_image/Test_fold_is_0" "$DEVICE_DIR/shared/faces/utkface_full"
  cp -r "$SRC/adience/mean_images/mean_image/Test_fold_is_0" "$DEVICE_DIR/shared/adience/mean_images/mean_image/"
  cp -r "$SRC/faces/utkface_full" "$DEVICE_DIR/shared/faces/"
  echo "prepared $DEVICE_DIR: $(du -sh "$DEVICE_DIR" | cut -f1) (the tree that travels must stay under 64 MiB)"
  echo 'device run: command "bash bench/gpu_run.sh", carry ["bench/_work/device"], timeout_s 540'
  exit 0
fi

# --- where things are ---------------------------------------------------------------------------------------
OUT=${OUT:-$REPO/bench/_work/gpu_run_out}
mkdir -p "$OUT"
LOG="$OUT/gpu_run.log"
SUMMARY="$OUT/summary.txt"
: >"$LOG"
: >"$SUMMARY"
for candidate in "${AGEGENDER_SHARED:-}" "$REPO/shared" "$REPO/../shared" "$DEVICE_DIR/shared"; do
  if [ -n "$candidate" ] && [ -d "$candidate/adience/model_definitions" ]; then
    AGEGENDER_SHARED=$(cd "$candidate" && pwd)
    break
  fi
done
export AGEGENDER_SHARED=${AGEGENDER_SHARED:-$REPO/../shared}
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 MPLBACKEND=Agg

say() { echo "$*" | tee -a "$LOG"; }

# a missing package travels as a wheel (bench/_work/device/wheels), installed outside the image's site-packages
if ! $PY -c "import lmdb" 2>/dev/null; then
  if ls "$DEVICE_DIR"/wheels/*.whl >/dev/null 2>&1; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/agegender-site \
      "$DEVICE_DIR"/wheels/*.whl >>"$LOG" 2>&1 && export PYTHONPATH="$PYTHONPATH:/tmp/agegender-site"
  fi
  $PY -c "import lmdb" 2>/dev/null || say "WARNING: no lmdb module (run bash bench/gpu_run.sh --prepare here and carry bench/_work/device): the data and eval steps will fail"
fi

BUDGET=${GPU_RUN_BUDGET:-480}
STEPS=${GPU_RUN_STEPS:-env,tests,data,eval,train,schedule,compile}  # a rerun can take fewer: GPU_RUN_STEPS=env,train
START=$(date +%s)

# run_step NAME LIMIT COMMAND...: output to the log (and the terminal), rc and seconds to the summary
run_step() {
  local name=$1 limit=$2
  shift 2
  local now remaining began rc
  case ",$STEPS," in
    *",$name,"*) ;;
    *) printf '%-9s not selected (GPU_RUN_STEPS=%s)\n' "$name" "$STEPS" >>"$SUMMARY"; return ;;
  esac
  now=$(date +%s)
  remaining=$((BUDGET - (now - START)))
  if [ "$remaining" -lt "$limit" ]; then limit=$remaining; fi
  if [ "$limit" -lt 10 ]; then
    say "=== $name: SKIPPED (the ${BUDGET}s budget is spent)"
    printf '%-9s SKIPPED (budget spent)\n' "$name" >>"$SUMMARY"
    return
  fi
  say ""
  say "=== $name (limit ${limit}s): $*"
  began=$(date +%s)
  timeout --signal=TERM --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$LOG"
  rc=${PIPESTATUS[0]}
  local took=$(($(date +%s) - began))
  local verdict=ok
  [ "$rc" -ne 0 ] && verdict="FAILED rc=$rc"
  [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ] && verdict="TIMED OUT after ${limit}s"
  say "=== $name: $verdict in ${took}s"
  printf '%-9s %-22s %4ss (limit %ss)\n' "$name" "$verdict" "$took" "$limit" >>"$SUMMARY"
}

env_step() {
  if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm,power.limit --format=csv
  else
    echo "no nvidia-smi on this machine"
  fi
  uname -a
  echo "nproc: $(nproc); AGEGENDER_SHARED=$AGEGENDER_SHARED; OUT=$OUT; python: $(command -v $PY)"
  $PY - <<'EOF'
import importlib, platform, torch
print(f"python {platform.python_version()}, torch {torch.__version__}, CUDA {torch.version.cuda}, "
      f"cuDNN {torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None}, "
      f"NCCL {torch.cuda.nccl.version() if torch.cuda.is_available() else None}")
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f"GPU 0: {p.name}, {p.total_memory / 2**30:.0f} GiB, {p.multi_processor_count} SMs, "
          f"capability {p.major}.{p.minor}; bf16 supported {torch.cuda.is_bf16_supported()}")
for name in ("numpy", "lmdb", "cv2", "onnx", "onnxruntime", "google.protobuf", "typer", "rich", "safetensors",
             "matplotlib", "pytest", "triton", "agegender"):
    try:
        module = importlib.import_module(name)
        print(f"  {name} {getattr(module, '__version__', '')}")
    except Exception as exc:
        print(f"  {name}: MISSING ({type(exc).__name__}: {exc})")
import onnxruntime
print(f"  onnxruntime providers: {onnxruntime.get_available_providers()}")
EOF
}

if [ "$MODE" = dry ]; then
  say "gpu_run.sh --dry-run: every step at its tiniest size on the CPU (plumbing check), outputs in $OUT"
  DEV="--device cpu"
  TEST_FILES="tests/gpu_checks.py tests/test_training_gpu_paths.py"
  DATA_ARGS="--images 48 --repeats 1 --resident-batches 16 --crops 227"
  EVAL_ARGS="--archs adiencenet --images 8 --precision fp32 --repeats 1 --batch 20 --budget 5"
  TRAIN_ARGS="--archs adiencenet --batches 4 --precisions fp32 --warmup 2 --steps 2"
  SCHED_ARGS="--folds 1 --max-iter 2 --schedule-batch 2 --fold-images 8 --precisions fp32"
else
  say "gpu_run.sh: the GPU checks and figures, outputs in $OUT, budget ${BUDGET}s"
  DEV="--device cuda"
  TEST_FILES="tests/gpu_checks.py tests/test_training_gpu_paths.py"
  DATA_ARGS="--images 3000 --repeats 5 --resident-batches 64,256 --crops 227,224"
  EVAL_ARGS="--archs vgg16 --images 3500 --precision bf16,tf32 --repeats 2 --batch 500 --budget 50"
  TRAIN_ARGS="--archs vgg16,googlenet --batches 10,64,128 --precisions bf16,tf32 --warmup 10 --steps 30 --ceiling"
  SCHED_ARGS="--folds 5 --precisions bf16"
fi

export -f env_step
export PY OUT
run_step env 20 bash -c env_step
# shellcheck disable=SC2086
run_step tests 80 $PY -m pytest -q -p no:cacheprovider -m "not slow" --junitxml="$OUT/tests.xml" $TEST_FILES
# shellcheck disable=SC2086
run_step data 40 $PY bench/bench_data.py --resident-only $DEV $DATA_ARGS --json "$OUT/data.json"
# shellcheck disable=SC2086
run_step eval 90 $PY bench/bench_eval.py $DEV --onnx no $EVAL_ARGS --json "$OUT/eval.json"
# shellcheck disable=SC2086
run_step train 120 $PY bench/bench_train.py $DEV $TRAIN_ARGS --json "$OUT/train.json"
# shellcheck disable=SC2086
run_step schedule 130 $PY bench/bench_train.py $DEV --schedule gender_imdbwiki_vgg16 $SCHED_ARGS --json "$OUT/schedule.json"
if [ "${GPU_RUN_COMPILE:-0}" = "1" ] || case ",${GPU_RUN_STEPS:-}," in *,compile,*) true ;; *) false ;; esac; then
  run_step compile 60 $PY -m pytest -q -p no:cacheprovider -m slow tests/gpu_checks.py
fi

# --- the figures against the goals ---------------------------------------------------------------------------
$PY - "$OUT" >>"$SUMMARY" 2>&1 <<'EOF'
import json, sys
from pathlib import Path

out = Path(sys.argv[1])


def load(name):
    try:
        return json.loads((out / name).read_text())
    except (OSError, ValueError):
        return None


print()
data = load("data.json")
if data:
    for case in data["cases"]:
        if case["pipeline"].startswith("GPUResidentDataset"):
            rate = case["images_per_second"]
            print(f"data: {case['pipeline']} crop {case['crop']}: {rate:,.0f} img/s (goal >= 20,000: "
                  f"{'met' if rate >= 20000 else 'NOT met'})")
evaluation = load("eval.json")
if evaluation:
    for row in evaluation["rows"]:
        extra = f", with resident load {row['with_resident_load_s']} s" if row["with_resident_load_s"] else ""
        print(f"eval: {row['arch']} {row['case']}: {row['median_s']} s for {row['faces']} faces{extra}")
train = load("train.json")
if train:
    print(f"train: ceilings measured (8192^3 matmul TFLOP/s): {train.get('ceilings_tflops')}")
    for case in train["cases"]:
        if "error" in case:
            print(f"train: {case['arch']} batch {case['batch']} {case['precision']}: FAILED {case['error'][:200]}")
            continue
        mfu = f"{100 * case['mfu']:.1f}% MFU" if case["mfu"] is not None else f"{case['achieved_tflops']:.3f} TFLOP/s"
        print(f"train: {case['arch']} batch {case['batch']} {case['precision']}: {case['images_per_second']:,.0f} img/s, "
              f"{mfu} ({case['peak']}), graph {case['cuda_graph']}")
schedule = load("schedule.json")
if schedule:
    print(f"schedule: {schedule['schedule']} {schedule['folds']} fold(s) x {schedule['max_iter']} it x batch "
          f"{schedule['batch']} {schedule['precision']}: {schedule['total_s']:.1f} s (goal < {schedule['goal_s']:.0f} s "
          f"for 5 folds), per fold {[round(f['wall_s'], 1) for f in schedule['per_fold']]}")
EOF
say ""
say "=== summary ($(($(date +%s) - START)) s in all)"
tee -a "$LOG" <"$SUMMARY"
