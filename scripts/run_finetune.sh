#!/bin/bash
# LoRA fine-tuning, the common case.
#
#   bash scripts/run_finetune.sh                                   # the CPU demo (configs/tiny_llama/lora_cpu.yaml)
#   bash scripts/run_finetune.sh CONFIG [WORKER_NUM] [FLAGS...]    # any run YAML; WORKER_NUM > 1 uses msrun
#   bash scripts/run_finetune.sh CONFIG WORKER_NUM LOCAL_WORKER MASTER_ADDR MASTER_PORT NODE_RANK [FLAGS...]
#                                                                  # several machines: the same line on each,
#                                                                  # with its NODE_RANK (0 on MASTER_ADDR's)
#
# e.g.  bash scripts/run_finetune.sh configs/llama2/lora_llama2_7b.yaml 8 \
#         --train_dataset_dir /data/alpaca4096.mindrecord --load_checkpoint /ckpt/llama2_7b.ckpt
#
# Other configs run in the current directory (their relative paths are relative to it, as with
# run_mindformer.py). The demo config runs from the repository root (its paths are relative to it;
# outputs go to ./output/tiny_llama), and first builds the demo data (seconds) with scripts/make_tiny_base.py, and the
# small base model too if configs/tiny_llama/tiny_llama_base.ckpt is missing. WORKER_NUM > 1 launches
# `python -m mindpet_lite.run ... --use_parallel True --parallel_config.data_parallel WORKER_NUM` with
# scripts/msrun_launcher.sh (logs in output/msrun_log of the directory it runs in, on every node); FLAGS
# are passed to the runner. The multi-node form passes LOCAL_WORKER MASTER_ADDR MASTER_PORT NODE_RANK to
# the launcher's 9-argument form (JOIN True, CLUSTER_TIME_OUT 7200 s, or MSRUN_CLUSTER_TIME_OUT).
set -e
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEMO="configs/tiny_llama/lora_cpu.yaml"

CONFIG="${1:-$DEMO}"
[ $# -gt 0 ] && shift
WORKERS=1
if [ $# -gt 0 ] && [[ "$1" =~ ^[0-9]+$ ]]; then WORKERS="$1"; shift; fi
if [ "$WORKERS" -lt 1 ]; then echo "run_finetune.sh: WORKER_NUM must be >= 1, got $WORKERS" >&2; exit 2; fi
NODE_ARGS=()   # LOCAL_WORKER MASTER_ADDR MASTER_PORT NODE_RANK (several machines)
if [ $# -gt 0 ] && [[ "$1" =~ ^[0-9]+$ ]]; then
  if [ $# -lt 4 ] || [[ "$2" == --* ]] || [[ "$3" == --* ]] || [[ "$4" == --* ]]; then
    echo "run_finetune.sh: several machines take CONFIG WORKER_NUM LOCAL_WORKER MASTER_ADDR MASTER_PORT NODE_RANK [FLAGS...], got: $*" >&2
    exit 2
  fi
  NODE_ARGS=("$1" "$2" "$3" "$4"); shift 4
fi

case "$CONFIG" in /*) ;; *) [ -f "$CONFIG" ] && CONFIG="$(cd "$(dirname "$CONFIG")" && pwd)/$(basename "$CONFIG")" ;; esac
if [ ! -f "$CONFIG" ] && [ -f "$ROOT/$CONFIG" ]; then CONFIG="$ROOT/$CONFIG"; fi
if [ ! -f "$CONFIG" ]; then echo "run_finetune.sh: config not found: $CONFIG" >&2; exit 2; fi
PY="${PYTHON:-python}"
command -v "$PY" >/dev/null 2>&1 || PY=python3
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"

if [ "$CONFIG" = "$ROOT/$DEMO" ]; then
  cd "$ROOT"   # the demo config's paths are relative to the repository root
  START=$(date +%s)
  if [ -f configs/tiny_llama/tiny_llama_base.ckpt ]; then
    "$PY" scripts/make_tiny_base.py --config "$CONFIG" --data_only
  else
    "$PY" scripts/make_tiny_base.py --config "$CONFIG" --export configs/tiny_llama/tiny_llama_base.ckpt
  fi
  echo "demo data ready in $(( $(date +%s) - START )) s"
fi

if [ "$WORKERS" -eq 1 ]; then
  exec "$PY" -m mindpet_lite.run --config "$CONFIG" "$@"
fi
FLAGS=""
[ $# -gt 0 ] && printf -v FLAGS ' %q' "$@"
RUN_CMD="python -m mindpet_lite.run --config $(printf %q "$CONFIG") --use_parallel True --parallel_config.data_parallel $WORKERS$FLAGS"
if [ ${#NODE_ARGS[@]} -gt 0 ]; then   # the launcher checks the node arguments and names the rule a mistake breaks
  exec bash "$ROOT/scripts/msrun_launcher.sh" "$RUN_CMD" "$WORKERS" "${NODE_ARGS[@]}" output/msrun_log True \
    "${MSRUN_CLUSTER_TIME_OUT:-7200}"
fi
exec bash "$ROOT/scripts/msrun_launcher.sh" "$RUN_CMD" "$WORKERS"
