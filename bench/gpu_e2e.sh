#!/usr/bin/env bash
# The GPU end-to-end check (issue 23), for a lent device: starts the embedded service (`lethe up`) with one
# GPU worker per device (`--gpus 0`), runs train -> retrain -> ft -> evaluate -> audit through the HTTP API on
# CUDA and again on the CPU, and prints the metrics side by side with their tolerances, each job's wall time
# and the device it recorded (bench/gpu_e2e.py). Exit 0 when every metric is within tolerance.
#
# Without CUDA (no device, or the CPU build of torch) it says so and runs the same chain twice on the CPU,
# which must agree exactly; tests/bench/test_gpu_e2e.py runs that with --size tiny.
#
#   bench/gpu_e2e.sh [--size tiny|small] [--json FILE] [--gpu INDEX]
#   PYTHON=... to use another interpreter than .venv/bin/python (it needs a CUDA build of torch for the GPU).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
SIZE=small
JSON_ARGS=()
GPU=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --size) SIZE="$2"; shift 2 ;;
    --json) JSON_ARGS=(--json "$(realpath -m "$2")"); shift 2 ;;
    --gpu) GPU="$2"; shift 2 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done

# Asked in a process of its own: the service's worker parents must never touch CUDA (workers/cuda_guard.py).
read -r COUNT TORCH CUDA_VERSION < <(PYTORCH_NVML_BASED_CUDA_CHECK=1 "$PYTHON" -c \
  'import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0, torch.__version__, torch.version.cuda)')
# The worker layout is the same either way (`lethe up --gpus $GPU`: CUDA_VISIBLE_DEVICES=$GPU, which a CPU
# build ignores), so the CPU-only run exercises the process layout the GPU run uses.
if [[ "$COUNT" -gt 0 ]]; then
  DEVICES=cuda,cpu
  echo "CUDA present: $COUNT device(s), torch $TORCH (CUDA $CUDA_VERSION); GPU worker on device $GPU; cuda vs cpu"
else
  DEVICES=cpu,cpu
  echo "CUDA absent (torch $TORCH, CUDA build: $CUDA_VERSION): running the CPU-vs-CPU check instead"
fi

HOME_DIR="$(mktemp -d -t lethe-gpu-e2e.XXXXXX)"
PORT="$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
export LETHE_HOME="$HOME_DIR" LETHE_PROFILE=embedded
unset LETHE_DATABASE_URL LETHE_BROKER_URL
cd "$ROOT"
STARTED=$(date +%s.%N)
"$PYTHON" -m app.cli up --port "$PORT" --gpus "$GPU" >"$HOME_DIR/up.log" 2>&1 &
UP_PID=$!
cleanup() {
  kill -TERM "$UP_PID" 2>/dev/null || true
  wait "$UP_PID" 2>/dev/null || true
  rm -rf "$HOME_DIR"
}
trap cleanup EXIT

for _ in $(seq 1 600); do
  grep -q "Lethe is up" "$HOME_DIR/up.log" && break
  if ! kill -0 "$UP_PID" 2>/dev/null; then
    echo "the service did not start:" >&2; cat "$HOME_DIR/up.log" >&2; exit 1
  fi
  sleep 0.5
done
grep -q "Lethe is up" "$HOME_DIR/up.log" || { echo "the service did not start in 300 s" >&2; exit 1; }
echo "service up in $(printf '%.1f' "$(echo "$(date +%s.%N) - $STARTED" | bc)") s on port $PORT"

# One tenant per chain (bench/gpu_e2e.py says why).
KEY_A="$("$PYTHON" -m app.cli create-key --tenant e2e-a --scope submit --scope read)"
KEY_B="$("$PYTHON" -m app.cli create-key --tenant e2e-b --scope submit --scope read)"
"$PYTHON" bench/gpu_e2e.py --url "http://127.0.0.1:$PORT" --keys "$KEY_A,$KEY_B" --devices "$DEVICES" \
  --size "$SIZE" "${JSON_ARGS[@]}"
