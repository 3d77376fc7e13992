"""The size of MindSpore's CPU kernel thread pool, set once per process before the first graph.

MindSpore 2.9 starts its CPU kernel pool with 25 threads whatever the machine has
(`mindspore.device_context.cpu.op_tuning.threads_num`, documented default 25). On a 2-core machine
that is 25 threads contending for 2 cores in every kernel; under msrun every worker of the node
brings its own 25. The runner sizes the pool to the CPUs this process may use (its affinity mask),
shared among the msrun workers of the node when the launcher says how many there are
(benchmarks/README.md, "CPU threads", has the measurements). `context.runtime_num_threads`
(MindFormers' key) overrides it. MindSpore refuses a second setting in a process, so a second
job in the same process (tests, notebooks) keeps the first one's pool.
"""
import logging
import os

import mindspore as ms

logger = logging.getLogger(__name__)

_STATE = {}  # {"threads": int} once the pool was sized in this process


def available_cpus():
    """CPUs this process may run on (its affinity mask; os.cpu_count() where there is none)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def default_threads(environ=None):
    """Available CPUs divided by the workers msrun starts on this node (LOCAL_WORKER_NUM, exported by
    scripts/msrun_launcher.sh; msrun itself exports no local count), at least 1."""
    env = os.environ if environ is None else environ
    raw = env.get("LOCAL_WORKER_NUM", "").strip()
    local = int(raw) if raw.isdigit() and int(raw) > 0 else 1
    return max(1, available_cpus() // local)


def set_cpu_threads(requested=None):
    """Size MindSpore's CPU kernel pool: `requested` (context.runtime_num_threads), else
    :func:`default_threads`. Returns the pool size in force for this process."""
    threads = requested or default_threads()
    if "threads" in _STATE:
        if threads != _STATE["threads"]:
            logger.info("CPU kernel threads stay %d (MindSpore sets them once per process; %d asked)",
                        _STATE["threads"], threads)
        return _STATE["threads"]
    try:
        ms.device_context.cpu.op_tuning.threads_num(threads)
    except RuntimeError:  # set earlier in this process by someone else: theirs stands
        logger.info("CPU kernel threads were set before the runner (asked for %d): left as they are", threads)
        _STATE["threads"] = threads
        return threads
    _STATE["threads"] = threads
    logger.info("CPU kernel threads: %d (%s)", threads,
                "context.runtime_num_threads" if requested else f"{available_cpus()} CPUs available")
    return threads
