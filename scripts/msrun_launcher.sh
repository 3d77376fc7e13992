#!/bin/bash
# Launch a command on several workers with MindSpore's msrun (data parallel), MindFormers' way.
#
#   bash scripts/msrun_launcher.sh CMD
#   bash scripts/msrun_launcher.sh CMD WORKER_NUM
#   bash scripts/msrun_launcher.sh CMD WORKER_NUM MASTER_PORT LOG_DIR JOIN CLUSTER_TIME_OUT
#   bash scripts/msrun_launcher.sh CMD WORKER_NUM LOCAL_WORKER MASTER_ADDR MASTER_PORT NODE_RANK \
#                                      LOG_DIR JOIN CLUSTER_TIME_OUT
#
# CMD is one quoted string, e.g. "python -m mindpet_lite.run --config x.yaml" or
# "run_mindformer.py --config x.yaml": it must start with python, python3, pytest or a .py script
# (run with python), the programs msrun can launch. It is split
# like a shell command line (quotes group words). Defaults: 8 workers, 127.0.0.1:8118, LOG_DIR
# output/msrun_log, JOIN True, CLUSTER_TIME_OUT 7200 s.
#
# Differences from MindFormers' script:
# - JOIN defaults to True, so the exit code is the job's (msrun --join=False returns 0 at once).
# - WORKER_NUM 1 runs CMD directly, without msrun (no scheduler, no log files).
# - A wrong argument count or a non-numeric number prints the usage and exits 2.
# - Failure: msrun kills the other workers within a second when one exits non-zero, but then waits
#   for its scheduler, which only gives up on a dead worker after its heartbeat timeout (~30 s) or,
#   when the worker died before communication.init(), after CLUSTER_TIME_OUT (7200 s). This script
#   watches the job (msrun's own output, kept in LOG_DIR/msrun.log, and its processes) and, when a
#   worker has failed, stops the scheduler so msrun returns at once; when the scheduler dies while
#   workers still wait for it (e.g. MASTER_PORT taken), it stops the workers. It then prints the
#   failing worker's log (LOG_DIR/worker_N.log) and exits non-zero.
# - Several nodes: when the cluster does not form within CLUSTER_TIME_OUT, node 0's launcher names the
#   NODE_RANK(s) whose workers never registered, another node's says it did not reach MASTER_ADDR.
#   A worker failing on another node reaches this node through MindSpore's collectives: the peers'
#   next AllReduce gives up after about 30 s (CPU, MindSpore 2.9: MindSpore's MS_NODE_TIMEOUT, default
#   30), then the job stops as above.
#
# Environment:
#   MSRUN_LAUNCHER_DRY_RUN=1   print the command that would run and exit 0.
#   MSRUN_LAUNCHER_SCHED_LOST_GRACE=S   seconds the workers may outlive a dead scheduler before they
#                              are stopped (default 10; an integer >= 1).
# The repository root is put first on PYTHONPATH, as MindFormers' script does.

USAGE="Usage:
  bash msrun_launcher.sh CMD                     (8 workers on this machine)
  bash msrun_launcher.sh CMD WORKER_NUM          (WORKER_NUM workers on this machine; 1: no msrun)
  bash msrun_launcher.sh CMD WORKER_NUM MASTER_PORT LOG_DIR JOIN CLUSTER_TIME_OUT
  bash msrun_launcher.sh CMD WORKER_NUM LOCAL_WORKER MASTER_ADDR MASTER_PORT NODE_RANK LOG_DIR JOIN CLUSTER_TIME_OUT
CMD is one quoted string, e.g. \"python -m mindpet_lite.run --config configs/tiny_llama/lora_cpu.yaml\".
Defaults: WORKER_NUM 8, MASTER_ADDR 127.0.0.1, MASTER_PORT 8118, NODE_RANK 0,
LOG_DIR output/msrun_log, JOIN True, CLUSTER_TIME_OUT 7200 (seconds; negative waits forever).
Set MSRUN_LAUNCHER_DRY_RUN=1 to print the command without running it."

WORKER_NUM=8
LOCAL_WORKER=8
MASTER_ADDR="127.0.0.1"
MASTER_PORT=8118
NODE_RANK=0
LOG_DIR="output/msrun_log"
JOIN="True"
CLUSTER_TIME_OUT=7200

POLL_SECONDS=1         # how often the job is checked
SCHED_STOP_DELAY=1     # after a worker failed: seconds before the scheduler is stopped
SCHED_LOST_GRACE=${MSRUN_LAUNCHER_SCHED_LOST_GRACE:-10}  # scheduler gone, workers still running this long: stuck

usage_error() {
  echo "msrun_launcher.sh: error: $1" >&2
  echo "$USAGE" >&2
  exit 2
}

is_int() { [[ $1 =~ ^[0-9]+$ ]]; }

case $# in
  1) ;;
  2) WORKER_NUM=$2 ;;
  6) WORKER_NUM=$2; MASTER_PORT=$3; LOG_DIR=$4; JOIN=$5; CLUSTER_TIME_OUT=$6 ;;
  9) WORKER_NUM=$2; LOCAL_WORKER=$3; MASTER_ADDR=$4; MASTER_PORT=$5; NODE_RANK=$6; LOG_DIR=$7
     JOIN=$8; CLUSTER_TIME_OUT=$9 ;;
  *) usage_error "expected 1, 2, 6 or 9 arguments, got $#" ;;
esac
[ $# -ne 9 ] && LOCAL_WORKER=$WORKER_NUM

is_int "$WORKER_NUM" && [ "$WORKER_NUM" -ge 1 ] \
  || usage_error "WORKER_NUM must be an integer >= 1, got '$WORKER_NUM'"
is_int "$LOCAL_WORKER" && [ "$LOCAL_WORKER" -ge 1 ] && [ "$LOCAL_WORKER" -le "$WORKER_NUM" ] \
  || usage_error "LOCAL_WORKER must be an integer in [1, WORKER_NUM=$WORKER_NUM], got '$LOCAL_WORKER'"
is_int "$MASTER_PORT" && [ "$MASTER_PORT" -ge 1024 ] && [ "$MASTER_PORT" -le 65535 ] \
  || usage_error "MASTER_PORT must be an integer in [1024, 65535], got '$MASTER_PORT'"
is_int "$NODE_RANK" || usage_error "NODE_RANK must be an integer >= 0, got '$NODE_RANK'"
# every node runs LOCAL_WORKER workers: the nodes are WORKER_NUM / LOCAL_WORKER, numbered from 0
[ $((WORKER_NUM % LOCAL_WORKER)) -eq 0 ] \
  || usage_error "WORKER_NUM ($WORKER_NUM) must be LOCAL_WORKER ($LOCAL_WORKER) x the number of nodes"
NODES=$((WORKER_NUM / LOCAL_WORKER))
[ "$NODE_RANK" -lt "$NODES" ] \
  || usage_error "NODE_RANK must be in [0, $NODES) for $NODES node(s) of $LOCAL_WORKER workers (WORKER_NUM $WORKER_NUM), got $NODE_RANK"
[[ $CLUSTER_TIME_OUT =~ ^-?[0-9]+$ ]] \
  || usage_error "CLUSTER_TIME_OUT must be an integer (seconds), got '$CLUSTER_TIME_OUT'"
case ${JOIN,,} in
  true) JOIN=True ;;
  false) JOIN=False ;;
  *) usage_error "JOIN must be True or False, got '$JOIN'" ;;
esac
[ -n "$MASTER_ADDR" ] || usage_error "MASTER_ADDR must not be empty"
[ -n "$LOG_DIR" ] || usage_error "LOG_DIR must not be empty"
is_int "$SCHED_LOST_GRACE" && [ "$SCHED_LOST_GRACE" -ge 1 ] \
  || usage_error "MSRUN_LAUNCHER_SCHED_LOST_GRACE must be an integer >= 1 (seconds), got '$SCHED_LOST_GRACE'"

# CMD -> words, with the shell's quoting rules (as MindFormers' `eval`), no expansion of $ or `.
CMD=$1
SPLIT='import shlex, sys; sys.stdout.write("".join(w + "\0" for w in shlex.split(sys.argv[1])))'
python3 -c "$SPLIT" "$CMD" >/dev/null 2>&1 \
  || usage_error "CMD is not a valid command line (unbalanced quotes?): $CMD"
mapfile -d '' -t CMD_ARGS < <(python3 -c "$SPLIT" "$CMD")
[ ${#CMD_ARGS[@]} -gt 0 ] || usage_error "CMD is empty or not a valid command line: '$CMD'"

# msrun itself puts `python` before anything but python, python3 or pytest; say so explicitly.
PYTHON=python
command -v python >/dev/null 2>&1 || PYTHON=python3
case ${CMD_ARGS[0]} in
  *.py) CMD_ARGS=("$PYTHON" "${CMD_ARGS[@]}") ;;
  python|python3|pytest) ;;
  *) usage_error "CMD must start with python, python3, pytest or a .py script (msrun runs only \
these), got '${CMD_ARGS[0]}'" ;;
esac

# The repository root first on PYTHONPATH, so `python -m mindpet_lite...` works from any directory.
REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export PYTHONPATH="$REPO_ROOT${PYTHONPATH:+:$PYTHONPATH}"

if [ "$WORKER_NUM" -eq 1 ]; then
  RUN=("${CMD_ARGS[@]}")
elif [ "$WORKER_NUM" -eq "$LOCAL_WORKER" ]; then
  RUN=(msrun "--worker_num=$WORKER_NUM" "--local_worker_num=$LOCAL_WORKER"
       "--master_port=$MASTER_PORT" "--log_dir=$LOG_DIR" "--join=$JOIN"
       "--cluster_time_out=$CLUSTER_TIME_OUT" "${CMD_ARGS[@]}")
else
  RUN=(msrun "--worker_num=$WORKER_NUM" "--local_worker_num=$LOCAL_WORKER"
       "--master_addr=$MASTER_ADDR" "--master_port=$MASTER_PORT" "--node_rank=$NODE_RANK"
       "--log_dir=$LOG_DIR" "--join=$JOIN" "--cluster_time_out=$CLUSTER_TIME_OUT" "${CMD_ARGS[@]}")
fi

printf -v RUN_TEXT '%q ' "${RUN[@]}"
RUN_TEXT=${RUN_TEXT% }
if [ -n "$MSRUN_LAUNCHER_DRY_RUN" ] && [ "$MSRUN_LAUNCHER_DRY_RUN" != 0 ]; then
  echo "$RUN_TEXT"
  exit 0
fi

echo "Running Command: $RUN_TEXT"
if [ "$WORKER_NUM" -eq 1 ]; then
  exec "${RUN[@]}"
fi

command -v msrun >/dev/null 2>&1 || { echo "msrun_launcher.sh: msrun not found on PATH (it comes \
with MindSpore >= 2.3)" >&2; exit 127; }

echo "Logs: $LOG_DIR (worker_N.log, scheduler.log, msrun.log)"
if [ "$JOIN" = False ]; then
  echo "JOIN False: msrun returns once the processes are started; this exit code does not report \
the job's result. Follow the logs in $LOG_DIR."
  exec "${RUN[@]}"
fi

# A scheduler on this machine (the single-node forms, or the master node) needs MASTER_PORT free:
# if it is taken, the scheduler dies and the workers would wait CLUSTER_TIME_OUT seconds for it.
if [ "$WORKER_NUM" -eq "$LOCAL_WORKER" ] || [[ $MASTER_ADDR =~ ^(127\.|localhost$) ]]; then
  if (exec 3<>"/dev/tcp/127.0.0.1/$MASTER_PORT") 2>/dev/null; then
    echo "msrun_launcher.sh: error: MASTER_PORT $MASTER_PORT is in use on this machine (another \
job?); pass another port (6-argument form) or stop that job" >&2
    exit 1
  fi
fi

# ---- run msrun, watch the job ----------------------------------------------------------------
mkdir -p "$LOG_DIR" || exit 1
MSRUN_LOG="$LOG_DIR/msrun.log"
: > "$MSRUN_LOG" || exit 1
"${RUN[@]}" >"$MSRUN_LOG" 2>&1 &
MSRUN_PID=$!
tail -n +1 -s 0.2 -f --pid="$MSRUN_PID" "$MSRUN_LOG" &
TAIL_PID=$!

declare -A WORKER_RANK=()    # worker pid -> rank (the N of worker_N.log)
SCHED_PID=""
FAILED_PID=""                # a worker msrun reported as failed
SCHED_LOST=""                # the scheduler died before the workers
INTERRUPTED=""

on_signal() {
  INTERRUPTED=$1
  kill -INT "$MSRUN_PID" 2>/dev/null   # msrun's own handler kills the scheduler and the workers
}
trap 'on_signal 130' INT
trap 'on_signal 143' TERM

# Process facts from /proc only (no procps on slim images): P_STATE, P_PPID, P_SID of a pid.
proc_stat() {
  local s
  { s=$(< "/proc/$1/stat"); } 2>/dev/null || return 1
  read -r P_STATE P_PPID _ P_SID _ <<< "${s##*) }"
}

children_of() {
  local f pid
  if [ -r "/proc/$1/task/$1/children" ]; then
    for f in /proc/"$1"/task/*/children; do { echo $(< "$f"); } 2>/dev/null; done
    return
  fi
  for f in /proc/[0-9]*; do
    pid=${f#/proc/}
    proc_stat "$pid" && [ "$P_PPID" = "$1" ] && echo "$pid"
  done
}

env_of() { { tr '\0' '\n' < "/proc/$1/environ"; } 2>/dev/null; }

# The scheduler and workers msrun started: workers run in their own session (msrun calls setsid),
# the scheduler has MS_ROLE=MS_SCHED; msrun's `tail -f` helpers are neither and are skipped.
scan_processes() {
  local queue=("$MSRUN_PID") pid child role sid rank env
  while [ ${#queue[@]} -gt 0 ]; do
    pid=${queue[0]}; queue=("${queue[@]:1}")
    for child in $(children_of "$pid"); do
      [ -n "${WORKER_RANK[$child]}" ] && continue
      [ "$child" = "$SCHED_PID" ] && continue
      env=$(env_of "$child")
      role=$(sed -n 's/^MS_ROLE=//p' <<< "$env")
      proc_stat "$child" || continue
      sid=$P_SID
      if [ "$role" = MS_SCHED ]; then
        SCHED_PID=$child
      elif [ "$role" = MS_WORKER ] && [ "$sid" = "$child" ]; then
        rank=$(sed -n 's/^RANK_ID=//p' <<< "$env")
        [ -z "$rank" ] && rank=$(sed -n 's/^DEVICE_ID=//p' <<< "$env")
        WORKER_RANK[$child]=$rank
      elif [ -z "$role" ]; then
        queue+=("$child")   # msrun behind a wrapper that forks: look one level further down
      fi
    done
  done
}

alive() {   # running, not a zombie waiting for msrun to reap it
  [ -n "$1" ] && proc_stat "$1" && [ "$P_STATE" != Z ]
}

live_workers() {
  local pid n=0
  for pid in "${!WORKER_RANK[@]}"; do alive "$pid" && n=$((n + 1)); done
  echo $n
}

# msrun's report of a failed worker: "Worker process <pid> exit with exception. Error code: <n>."
failed_worker_pid() {   # [byte offset to start from]
  tail -c +"$(( ${1:-0} + 1 ))" "$MSRUN_LOG" 2>/dev/null \
    | grep -oE 'Worker process [0-9]+ exit with exception' | head -n 1 | grep -oE '[0-9]+'
}

stop_pid() {   # TERM, then KILL after 5 s
  local pid=$1 i
  alive "$pid" || return 0
  kill -TERM "$pid" 2>/dev/null
  for i in $(seq 1 25); do alive "$pid" || return 0; sleep 0.2; done
  kill -KILL "$pid" 2>/dev/null
}

FAIL_SEEN_AT=""
SCHED_GONE_SINCE=""
LOG_SEEN=0
while alive "$MSRUN_PID"; do
  [ -n "$INTERRUPTED" ] && { sleep "$POLL_SECONDS"; continue; }
  if [ -z "$FAILED_PID$SCHED_LOST" ] && { [ ${#WORKER_RANK[@]} -lt "$LOCAL_WORKER" ] \
      || [ -z "$SCHED_PID" ]; }; then
    scan_processes
  fi
  now=$SECONDS
  if [ -z "$FAILED_PID" ]; then   # read only what msrun.log gained (it carries all worker logs)
    size=$(stat -c %s "$MSRUN_LOG" 2>/dev/null || echo 0)
    FAILED_PID=$(failed_worker_pid $(( LOG_SEEN > 512 ? LOG_SEEN - 512 : 0 )))
    LOG_SEEN=$size
    [ -n "$FAILED_PID" ] && FAIL_SEEN_AT=$now
  fi
  if [ -n "$FAILED_PID" ] && [ $((now - FAIL_SEEN_AT)) -ge "$SCHED_STOP_DELAY" ]; then
    # msrun has killed the other workers; its scheduler would wait for the dead one's heartbeat.
    if alive "$SCHED_PID"; then
      echo "msrun_launcher.sh: worker process $FAILED_PID failed; stopping the scheduler \
(pid $SCHED_PID) so that msrun returns" >&2
      stop_pid "$SCHED_PID"
    elif [ $((now - FAIL_SEEN_AT)) -ge 30 ]; then
      kill -TERM "$MSRUN_PID" 2>/dev/null
    fi
  fi
  # msrun notices a dead scheduler only once all workers have ended, and they wait for it.
  if [ -z "$FAILED_PID" ] && [ -z "$SCHED_LOST" ] && ! alive "$SCHED_PID" \
      && grep -q "Start scheduler process" "$MSRUN_LOG" && [ "$(live_workers)" -gt 0 ]; then
    [ -z "$SCHED_GONE_SINCE" ] && SCHED_GONE_SINCE=$now
    if [ $((now - SCHED_GONE_SINCE)) -ge "$SCHED_LOST_GRACE" ]; then
      SCHED_LOST=1
      echo "msrun_launcher.sh: the scheduler exited while workers still wait for it; stopping \
the workers (see $LOG_DIR/scheduler.log)" >&2
      for pid in "${!WORKER_RANK[@]}"; do kill -KILL -- "-$pid" 2>/dev/null; done
    fi
  else
    SCHED_GONE_SINCE=""
  fi
  sleep "$POLL_SECONDS"
done
wait "$MSRUN_PID"
RC=$?
wait "$TAIL_PID" 2>/dev/null

if [ -n "$INTERRUPTED" ]; then
  echo "msrun_launcher.sh: interrupted; logs in $LOG_DIR" >&2
  exit "$INTERRUPTED"
fi
[ -z "$FAILED_PID" ] && FAILED_PID=$(failed_worker_pid)
if [ "$RC" -eq 0 ] && [ -z "$FAILED_PID" ] && [ -z "$SCHED_LOST" ]; then
  exit 0
fi

# ---- name the log to read --------------------------------------------------------------------
FAILED_LOGS=()
KIND=worker
if [ -n "$SCHED_LOST" ]; then   # the workers' non-zero exits are this script's doing
  FAILED_LOGS=("$LOG_DIR/scheduler.log"); KIND=scheduler
elif [ -n "$FAILED_PID" ]; then
  if [ -n "${WORKER_RANK[$FAILED_PID]}" ]; then
    FAILED_LOGS=("$LOG_DIR/worker_${WORKER_RANK[$FAILED_PID]}.log")
  else  # not seen alive: MindSpore's log lines carry the pid, "NAME(pid,thread,..."
    mapfile -t FAILED_LOGS < <(grep -lE "\(${FAILED_PID}[,:]" "$LOG_DIR"/worker_*.log 2>/dev/null)
  fi
fi
if [ ${#FAILED_LOGS[@]} -eq 0 ]; then
  mapfile -t FAILED_LOGS < <(grep -lE 'Traceback|Error' "$LOG_DIR"/worker_*.log 2>/dev/null \
    | sort -V)
fi
[ "$RC" -eq 0 ] && RC=1
echo "" >&2
echo "msrun_launcher.sh: the distributed job failed (exit code $RC)." >&2
# A node that never came up: the scheduler (node 0) gave up building the cluster after CLUSTER_TIME_OUT.
# Ranks are NODE_RANK x LOCAL_WORKER + local index, so the ranks that never registered name their node.
SCHED_LOG="$LOG_DIR/scheduler.log"
if [ -f "$SCHED_LOG" ] && grep -q "Topology build timed out" "$SCHED_LOG"; then
  JOINED=" $(grep -oE 'The new node: [0-9]+\(role: MS_WORKER\), rank id: [0-9]+' "$SCHED_LOG" \
    | grep -oE '[0-9]+$' | sort -un | tr '\n' ' ')"
  MISSING=()
  for ((n = 0; n < NODES; n++)); do
    for ((r = n * LOCAL_WORKER; r < (n + 1) * LOCAL_WORKER; r++)); do
      [[ $JOINED == *" $r "* ]] || { MISSING+=("$n"); break; }
    done
  done
  if [ ${#MISSING[@]} -gt 0 ]; then
    echo "msrun_launcher.sh: the cluster did not form within CLUSTER_TIME_OUT ($CLUSTER_TIME_OUT s): \
missing node(s) with NODE_RANK ${MISSING[*]} (their workers never reached the scheduler at \
$MASTER_ADDR:$MASTER_PORT; was the launcher started there?)" >&2
  fi
elif [ ! -f "$SCHED_LOG" ] && grep -qs "Failed to connect to the meta server" "$LOG_DIR"/worker_*.log; then
  echo "msrun_launcher.sh: this node's workers did not reach the scheduler at $MASTER_ADDR:$MASTER_PORT \
(node 0) within CLUSTER_TIME_OUT ($CLUSTER_TIME_OUT s): is node 0 started, and MASTER_ADDR reachable from here?" >&2
fi
if [ ${#FAILED_LOGS[@]} -gt 0 ]; then
  for f in "${FAILED_LOGS[@]}"; do echo "msrun_launcher.sh: failing $KIND log: $f" >&2; done
else
  echo "msrun_launcher.sh: see the logs in $LOG_DIR" >&2
fi
exit "$RC"
