#!/usr/bin/env bash
# Every GPU measurement of evo1-0.77b in one run of at most ~9 minutes, JSON into OUT_DIR:
#
#   bash benchmarks/gpu_all.sh OUT_DIR              # on the GPU machine (bf16, 2 views, 32 steps)
#   bash benchmarks/gpu_all.sh OUT_DIR --cpu-smoke  # here: every step at evo1-tiny on CPU, a dry run
#
# Steps are cut to end within GPU_ALL_BUDGET_S seconds of the start (default 560; 1500 for the
# CPU smoke).
# Steps, each under its own time limit so the run always ends (a step that runs out is recorded
# with rc 124 and the next one starts):
#   inference.json  benchmarks/inference.py: naive reference path, engine (eager, CUDA graph,
#                   compiled, fused Triton head, both), LeRobot's Evo1Policy when importable
#   stages.json     benchmarks/gpu_stages.py: ViT / context / head, torch vs fused head, kernels per
#                   Euler step, the fused head's equivalence at full size
#   train.json      benchmarks/train_throughput.py: stage 1 and 2, with and without checkpointing
#   (log.txt)       the CUDA equivalence tests (fused head; engine graph / compile / triton in fp32
#                   and bf16 against the eager fp32 model)
#   parity_lerobot.json  ours vs LeRobot 0.6.1 on the GPU, fp32, when importable
#   summary.json    each step's exit code and seconds;  log.txt  everything printed;  digest.txt  its key lines
# At most 8 files: what the device tool brings back. LeRobot comes from wheels carried in
# out/lerobot-wheels and its probe as out/lerobot_evo1_probe.py (benchmarks/README.md says how).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?usage: gpu_all.sh OUT_DIR [--cpu-smoke]}
SMOKE=${2:-}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if [ -d out/lerobot-wheels ] && ! "$PY" -c "import lerobot" 2>/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --target /tmp/lerobot-site out/lerobot-wheels/*.whl \
    && export PYTHONPATH="$PYTHONPATH:/tmp/lerobot-site"
fi
LOG="$OUT/log.txt"
: > "$LOG"
SUMMARY=()

BUDGET=${GPU_ALL_BUDGET_S:-560}  # the device tool allows 600 s a command
[ "$SMOKE" = "--cpu-smoke" ] && BUDGET=${GPU_ALL_BUDGET_S:-1500}
DEADLINE=$(( $(date +%s) + BUDGET ))
step() {  # step NAME SECONDS COMMAND...: run with a time limit (cut to what is left), output to the log
  local name=$1 limit=$2 start rc
  shift 2
  start=$(date +%s)
  (( limit > DEADLINE - start - 10 )) && limit=$(( DEADLINE - start - 10 ))
  if (( limit < 20 )); then
    echo "=== $name: skipped, the run's budget is spent" | tee -a "$LOG"
    SUMMARY+=("\"$name\": {\"rc\": null, \"seconds\": 0}")
    return
  fi
  echo "=== $name (limit ${limit}s): $*" | tee -a "$LOG"
  timeout --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$LOG"
  rc=${PIPESTATUS[0]}
  echo "=== $name: rc $rc, $(( $(date +%s) - start )) s" | tee -a "$LOG"
  SUMMARY+=("\"$name\": {\"rc\": $rc, \"seconds\": $(( $(date +%s) - start ))}")
}

if [ "$SMOKE" = "--cpu-smoke" ]; then
  export TRITON_INTERPRET=1  # the fused head on Triton's CPU interpreter
  step inference 300 "$PY" benchmarks/inference.py --presets evo1-tiny --views 1 --steps 2 --iters 1 --threads 1 \
    --no-lerobot --json "$OUT/inference.json"
  step stages 300 "$PY" benchmarks/gpu_stages.py --cpu-smoke --views 1 --steps 2 --no-compile --json "$OUT/stages.json"
  step train 300 "$PY" benchmarks/train_throughput.py --preset evo1-tiny --device cpu --batch-size 2 --warmup 1 \
    --steps 1 --image-size 112 --json "$OUT/train.json"
  step tests 300 "$PY" -m pytest -q -p no:cacheprovider test/test_head_kernels.py -k "all-keys or engine"
elif [ -n "$SMOKE" ]; then
  echo "unknown option $SMOKE (only --cpu-smoke)" >&2
  exit 2
else
  nvidia-smi -L 2>&1 | tee -a "$LOG"
  PROBE=()  # the LeRobot probe travels as a carried copy: shared/ beside the repo does not
  [ -f out/lerobot_evo1_probe.py ] && PROBE=(--lerobot-probe out/lerobot_evo1_probe.py)
  step inference 230 "$PY" benchmarks/inference.py --presets evo1-0.77b --views 2 --steps 32 --iters 20 \
    "${PROBE[@]}" --json "$OUT/inference.json"
  step stages 100 "$PY" benchmarks/gpu_stages.py --views 2 --steps 32 --json "$OUT/stages.json"
  step train 90 "$PY" benchmarks/train_throughput.py --preset evo1-0.77b --batch-size 16 --views 2 --warmup 3 \
    --steps 8 --budget-s 70 --json "$OUT/train.json"
  step tests 80 "$PY" -m pytest -q -p no:cacheprovider test/test_head_kernels.py \
    test/test_engine.py -k "cuda or resizes"
  if "$PY" -c "import lerobot" 2>/dev/null; then
    step parity_lerobot 50 "$PY" benchmarks/parity_lerobot.py --device cuda --views 2 --seeds 0 \
      --json "$OUT/parity_lerobot.json"
  else
    echo "=== parity_lerobot: skipped, lerobot not importable (carry out/lerobot-wheels)" | tee -a "$LOG"
  fi
fi
grep -E "^(=== |[0-9] views|compiled|kernels|fused|stage|evo1)|passed|failed" "$LOG" > "$OUT/digest.txt"
(IFS=,; echo "{${SUMMARY[*]}}") > "$OUT/summary.json"
echo "wrote $(ls "$OUT" | tr '\n' ' ')"
