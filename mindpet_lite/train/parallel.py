"""Data-parallel set-up under `msrun`: read what msrun exported, call `communication.init()`.

`msrun` (and `scripts/msrun_launcher.sh`, which wraps it) starts one *scheduler* process and
WORKER_NUM *worker* processes, all running the same command line, with these variables set
(checked on MindSpore 2.9.0 by printing ``os.environ`` in each process)::

    MS_WORKER_NUM   total number of workers in the job           every process
    MS_ROLE         MS_SCHED (scheduler) or MS_WORKER              every process
    MS_SCHED_HOST   scheduler address (--master_addr)              every process
    MS_SCHED_PORT   scheduler port (--master_port)                 every process
    MS_TOPO_TIMEOUT seconds to wait for the cluster (--cluster_time_out)
    RANK_SIZE       = MS_WORKER_NUM                                 every process
    RANK_ID         the worker's rank (0 in the scheduler)          unless ranks are auto-assigned
    MS_NODE_ID      the worker's rank                               workers, idem
    DEVICE_ID       the worker's local index on its node            workers

In the scheduler, ``mindspore.communication.init()`` runs the scheduler and ends the process when
the job ends: it never returns. So call :func:`init_parallel` first, before reading data or
building the model, or the scheduler process does that work too.

Choice for ``use_parallel=True`` without msrun (a plain ``python ...`` or the launcher's
WORKER_NUM 1, which runs the command directly): train in one process with a warning, so the
same run YAML works with 1 and N workers. The reverse, ``use_parallel=False`` under msrun, is an
error: every process (the scheduler too) would train the whole job on its own.
"""
import logging
import os
from typing import NamedTuple, Optional

import mindspore as ms
from mindspore.communication import get_group_size, get_rank, init

from mindpet_lite._checks import check_int, check_positive_int, check_str, describe

logger = logging.getLogger(__name__)

__all__ = ["MsrunEnv", "msrun_env", "is_distributed", "init_parallel"]

_ROLES = ("MS_WORKER", "MS_SCHED")
_STATE = {}  # after init(): {"initialised": True, "rank_id": int, "rank_size": int}


class MsrunEnv(NamedTuple):
    """What msrun exported to this process (None for what it did not set)."""
    worker_num: int
    role: str
    rank_id: Optional[int]
    device_id: Optional[int]
    sched_host: Optional[str]
    sched_port: Optional[int]
    topo_timeout: Optional[int]

    @property
    def is_scheduler(self):
        return self.role == "MS_SCHED"


def _int_env(env, *names):
    for name in names:
        value = env.get(name, "").strip()
        if value:
            try:
                return int(value)
            except ValueError:
                raise ValueError(f"environment variable {name} must be an int, "
                                 f"got {describe(value)}") from None
    return None


def msrun_env(environ=None):
    """The msrun variables of this process as an :class:`MsrunEnv`, or None when not under msrun.

    A process counts as launched by msrun when MS_ROLE is MS_WORKER or MS_SCHED and MS_WORKER_NUM
    is set. ``rank_id`` comes from RANK_ID, else MS_NODE_ID; both are absent when msrun assigns
    ranks after the cluster is built (several nodes without --node_rank).
    """
    env = os.environ if environ is None else environ
    role = env.get("MS_ROLE", "")
    if role not in _ROLES or not env.get("MS_WORKER_NUM", "").strip():
        return None
    raw = env["MS_WORKER_NUM"].strip()
    if not raw.isdigit() or int(raw) <= 0:
        raise ValueError(f"environment variable MS_WORKER_NUM must be an int > 0, "
                         f"got {describe(raw)}")
    worker_num = int(raw)
    return MsrunEnv(
        worker_num=worker_num,
        role=role,
        rank_id=_int_env(env, "RANK_ID", "MS_NODE_ID") if role == "MS_WORKER" else None,
        device_id=_int_env(env, "DEVICE_ID"),
        sched_host=env.get("MS_SCHED_HOST") or None,
        sched_port=_int_env(env, "MS_SCHED_PORT"),
        topo_timeout=_int_env(env, "MS_TOPO_TIMEOUT"),
    )


def is_distributed(environ=None):
    """True when this process belongs to an msrun job of more than one worker."""
    env = msrun_env(environ)
    return env is not None and env.worker_num > 1


def _check_data_parallel(data_parallel, workers, how):
    if data_parallel is None:
        return
    check_positive_int("parallel_config.data_parallel", data_parallel)
    if data_parallel != workers:
        raise ValueError(
            f"parallel_config.data_parallel must equal the number of workers ({workers}, {how}), "
            f"got {describe(data_parallel)}; launch with WORKER_NUM {data_parallel} or set "
            f"data_parallel: {workers} (only data parallel is supported)")


def init_parallel(device_target="CPU", use_parallel=False, data_parallel=None, device_id=None):
    """Set up this process for training; return ``(rank_id, rank_size)``.

    Under msrun with ``use_parallel=True``: sets the device (with DEVICE_ID as the device id on
    Ascend / GPU), calls ``mindspore.communication.init()`` (a real collective library: HCCL on
    Ascend, MindSpore's own on CPU) and sets DATA_PARALLEL with ``gradients_mean=True`` over the
    whole group. In the scheduler process ``init()`` does not return (see the module docstring).

    Without msrun: one process, ``(0, 1)``; with ``use_parallel=True`` a warning says so.

    Args:
        device_target (str): "CPU", "Ascend" or "GPU"; None leaves the device as already set.
        use_parallel (bool): the run YAML's ``use_parallel``.
        data_parallel (int): ``parallel_config.data_parallel`` when the YAML gives it; it must
            equal the number of workers (1 without msrun). None: not checked.
        device_id (int): the run YAML's ``context.device_id`` (flag ``--device_id``). Without msrun,
            on Ascend / GPU, the device this process uses (None: MindSpore's default, 0); on CPU it
            has no effect. Under msrun each worker uses msrun's DEVICE_ID: on Ascend / GPU a
            different device_id is overridden, with a warning naming both.

    Raises:
        ValueError: ``use_parallel`` is False under msrun; ``data_parallel`` differs from the
            worker count. Both are raised before ``init()``, in every process of the job.
        TypeError: ``use_parallel`` is not a bool, or ``device_id`` not an int (ValueError if < 0).
    """
    if not isinstance(use_parallel, bool):
        raise TypeError(f"use_parallel must be a bool, got {describe(use_parallel)}")
    if device_target is not None:
        check_str("device_target", device_target)
    if device_id is not None:
        check_int("device_id", device_id, minimum=0)
    env = msrun_env()
    if env is None:
        _check_data_parallel(data_parallel, 1, "not launched by msrun")
        if use_parallel:
            logger.warning("use_parallel is True but this process was not launched by msrun "
                           "(MS_ROLE / MS_WORKER_NUM unset): training in one process. Launch with "
                           "`bash scripts/msrun_launcher.sh \"<command>\" <WORKER_NUM>` to use "
                           "several workers.")
        _set_device(device_target, device_id)
        return 0, 1

    if not use_parallel:
        raise ValueError(
            f"use_parallel is False but this process was launched by msrun "
            f"(MS_WORKER_NUM={env.worker_num}, MS_ROLE={env.role}): set use_parallel: True (or "
            f"--use_parallel True), or run one process without msrun (launcher WORKER_NUM 1)")
    _check_data_parallel(data_parallel, env.worker_num, "MS_WORKER_NUM")
    if _STATE.get("initialised"):  # init() may run once per process
        rank_id, rank_size = _STATE["rank_id"], _STATE["rank_size"]
        # The context is set again: a caller in between (predict) may have reset it, and a training
        # run after that in this process must still average its gradients over the group.
        _set_data_parallel(rank_size)
        return rank_id, rank_size

    on_device = device_target is not None and device_target.upper() != "CPU"
    if on_device and device_id is not None and env.device_id is not None and device_id != env.device_id:
        logger.warning("device_id %d (context.device_id / --device_id) is overridden by msrun's DEVICE_ID %d: "
                       "under msrun each worker uses the device msrun gives it", device_id, env.device_id)
    _set_device(device_target, env.device_id if env.device_id is not None else device_id)
    init()  # the scheduler stays in here until the job ends, then exits
    rank_id, rank_size = get_rank(), get_group_size()
    _set_data_parallel(rank_size)
    _STATE.update(rank_id=rank_id, rank_size=rank_size, initialised=True)
    logger.info("data parallel: rank %d of %d", rank_id, rank_size)
    return rank_id, rank_size


def _set_data_parallel(rank_size):
    """DATA_PARALLEL with the mean of the gradients over all ``rank_size`` workers."""
    ms.set_auto_parallel_context(parallel_mode=ms.ParallelMode.DATA_PARALLEL, gradients_mean=True,
                                 device_num=rank_size)


def _set_device(device_target, device_id):
    """``ms.set_device``; the device id only on Ascend / GPU (a CPU has one device)."""
    if device_target is None:
        return
    if not ms.hal.is_available(device_target):  # else the first graph fails with a raw RuntimeError
        raise ValueError(f"device_target {device_target!r} is not available to this MindSpore build "
                         f"({ms.__version__}, it has no {device_target} backend or the device is not set up): "
                         "use --device_target CPU, or run on a machine with that device and its MindSpore package")
    if device_target.upper() != "CPU" and device_id is not None:
        ms.set_device(device_target, device_id)
    else:
        ms.set_device(device_target)
