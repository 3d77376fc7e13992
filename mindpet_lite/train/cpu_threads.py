"""The size of MindSpore's CPU kernel thread pool: `context.runtime_num_threads` (MindFormers' key).

MindSpore 2.9 starts its CPU kernel pool with 25 threads whatever the machine has
(`mindspore.device_context.cpu.op_tuning.threads_num`). Measured on the main job on a 2-core machine
(benchmarks/README.md §10, `python benchmarks/bench_threads.py`): 25 and 2 threads are within the noise
of each other (207 vs 225 ms a step, per-round ratios 0.94-1.26), 1 thread is 1.4x slower. So the runner
keeps MindSpore's default and sets the pool only when the YAML asks. MindSpore refuses a second setting
in a process, so a second job in the same process (tests, notebooks) keeps the first one's pool.
"""
import logging

import mindspore as ms

logger = logging.getLogger(__name__)

_STATE = {}  # {"threads": int} once the pool was sized in this process


def set_cpu_threads(requested=None):
    """Size MindSpore's CPU kernel pool to `requested` threads (context.runtime_num_threads); None leaves
    MindSpore's default. Returns the size set in this process, or None."""
    if requested is None:
        return _STATE.get("threads")
    if "threads" in _STATE:
        if requested != _STATE["threads"]:
            logger.warning("context.runtime_num_threads=%d is not applied: MindSpore sets the CPU kernel pool once "
                           "per process, and this one already has %d threads", requested, _STATE["threads"])
        return _STATE["threads"]
    try:
        ms.device_context.cpu.op_tuning.threads_num(requested)
    except RuntimeError:  # set earlier in this process by someone else: theirs stands
        logger.warning("context.runtime_num_threads=%d is not applied: the CPU kernel pool was sized before the "
                       "runner started (MindSpore sets it once per process)", requested)
        return None
    _STATE["threads"] = requested
    logger.info("CPU kernel threads: %d (context.runtime_num_threads)", requested)
    return requested
