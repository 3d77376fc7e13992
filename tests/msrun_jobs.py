"""Launching msrun jobs from the tests, and one 2-worker job that several tests share.

A 2-worker msrun launch costs ~15 s whatever it runs (python + MindSpore import, communication.init,
then the scheduler's and workers' finalisation), most of it the same for a tiny script and for a real
run. So the data-parallel equality tests do not launch a job each: every test module registers a
*part* (:func:`register`: a command of the runner, or a script), and the session fixture
``msrun_shared`` (tests/conftest.py) launches ONE job through scripts/msrun_launcher.sh whose workers
run the registered parts one after another in the same processes (:data:`WORKER`). Each test then
checks its own part: its output folder, and its own section of each worker's log (between the
markers the worker prints, :meth:`SharedJob.section`).

Only the parts of the test modules imported are registered, so running one test file launches a job
of that file's part alone. The job is launched the first time a test asks for it (a run without those
tests launches nothing). Parts that train come first, predict parts last: predict resets the
auto-parallel context (inference graphs), and init_parallel sets DATA_PARALLEL only once per process
(communication.init may run once), so a training part after a predict part would not average its
gradients.

A part whose job fails stops the workers there: its test and the tests of the parts after it fail,
with the launcher's output.
"""
import json
import os
import re
import shlex
import socket
import subprocess
import sys
import time

from tests.train import tiny

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCHER = os.path.join(REPO, "scripts", "msrun_launcher.sh")

# The pytest-xdist group of the test modules that launch msrun jobs or use the session's shared ones
# (tests/conftest.py): they run one after another in one worker.
MSRUN_GROUP = "msrun"

# Ceilings, not measures: on a loaded machine a job may take 10x its idle time and pass; the cluster
# (CLUSTER_TIME_OUT) and the subprocess get the same generous bound.
CEILING = 600

BEGIN, END = "=== msrun_jobs: begin {name} ===", "=== msrun_jobs: end {name} status {status} ==="
_END = re.compile(r"=== msrun_jobs: end (\S+) status (-?\d+) ===")

# The workers' script: python WORKER SPEC.json. A "run" part is mindpet_lite.run.main(argv) (the
# runner's entry point, as `python -m mindpet_lite.run ARGV`); a "script" part runs a file as __main__
# with sys.argv = [file, *argv]. The first non-zero status ends the process with it (msrun then stops
# the job): the other rank would otherwise wait in a collective of a part this one skipped.
WORKER = f"BEGIN, END = {BEGIN!r}, {END!r}\n" + r'''
import json, runpy, sys, traceback
from mindpet_lite.run import main
with open(sys.argv[1], encoding="utf-8") as f:
    parts = json.load(f)
for part in parts:
    print(BEGIN.format(name=part["name"]), flush=True)
    if part["kind"] == "run":
        status = main(part["argv"])
    else:
        sys.argv = [part["script"], *part["argv"]]
        try:
            runpy.run_path(part["script"], run_name="__main__")
            status = 0
        except SystemExit as stop:
            status = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
        except BaseException:  # pylint: disable=broad-except
            traceback.print_exc()
            status = 1
    print(END.format(name=part["name"], status=status), flush=True)
    sys.stdout.flush()
    if status:
        sys.exit(status)
'''


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_NOT_INHERITED = ("RANK_ID", "RANK_SIZE", "DEVICE_ID", "MSRUN_LAUNCHER_DRY_RUN", "MSRUN_LAUNCHER_SCHED_LOST_GRACE")


def launch_env():
    """This process's environment without msrun's variables (a test may run under msrun itself), the
    repository first on PYTHONPATH."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MS_") and k not in _NOT_INHERITED}
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    return env


def launch(cmd, workers, logs, cwd, timeout=CEILING, env=None):  # pylint: disable=too-many-arguments
    """scripts/msrun_launcher.sh CMD WORKERS [port logs True CEILING]: (CompletedProcess, seconds);
    ``env``: variables added to the launcher's environment."""
    args = ["bash", LAUNCHER, cmd, str(workers)]
    if workers > 1:
        args += [str(free_port()), str(logs), "True", str(CEILING)]
    start = time.monotonic()
    proc = subprocess.run(args, cwd=cwd, env={**launch_env(), **(env or {})}, capture_output=True, text=True,
                          timeout=timeout)
    return proc, time.monotonic() - start


def run_cmd(base, data, out, *extra, script="-m mindpet_lite.run"):
    """The command line of the tiny run (3 steps) for the launcher: python SCRIPT FLAGS."""
    argv = tiny.flags(base, data, out, "--max_steps", "3", *extra)
    return f"python {script} " + " ".join(shlex.quote(a) for a in argv)


# The runner with rank 1 raising as training starts (Trainer.fit), writing the time it failed to
# $MPL_FAILED_AT first, for tests that time the launchers' reaction.
FAILING_RUN = '''
import sys
from mindpet_lite.train import loop
_fit = loop.Trainer.fit
def fit(self, *args, **kwargs):
    from mindspore.communication import get_rank
    if get_rank() == 1:
        import os, time
        if os.environ.get("MPL_FAILED_AT"):  # when it failed, for tests that time the launchers' reaction
            with open(os.environ["MPL_FAILED_AT"], "w", encoding="utf-8") as f:
                f.write(repr(time.time()))
        raise RuntimeError("worker 1 fails during training on purpose")
    return _fit(self, *args, **kwargs)
loop.Trainer.fit = fit
from mindpet_lite.run import main
sys.exit(main())
'''


# The runner with msrun's scheduler held back until this node's worker has imported MindSpore and the
# runner (it then writes $MPL_WORKER_READY): the scheduler's CLUSTER_TIME_OUT counts from its own start,
# and on a loaded machine a worker that started with it reached init() more than 8 s after it (CI, stop
# 26: "missing node(s) with NODE_RANK 0 1"). For tests of a node that never comes up, where node 0's
# worker should be in the cluster. The wait is bound by the file, with CEILING as its ceiling.
GATED_RUN = f'''
import os, sys, time
from mindpet_lite.run import main
ready = os.environ["MPL_WORKER_READY"]
if os.environ.get("MS_ROLE") == "MS_WORKER":
    open(ready, "w", encoding="utf-8").close()
elif os.environ.get("MS_ROLE") == "MS_SCHED":
    give_up = time.monotonic() + {CEILING}
    while not os.path.exists(ready):
        if time.monotonic() > give_up:
            sys.exit("the worker never wrote " + ready)
        time.sleep(0.1)
sys.exit(main())
'''

# ---- the shared job ------------------------------------------------------------------------------

_PARTS = {}  # name -> (order, kind, build)


def register(name, build, kind="run", order=0):
    """Add a part to the shared job. ``build(request, folder)`` runs in the test process before the
    launch (``request``: the session fixture's, for ``request.getfixturevalue`` of session fixtures;
    ``folder``: the part's own empty folder) and returns the runner's argv (``kind`` "run") or
    ``(script path, argv)`` (``kind`` "script"). Parts run by ``order``, then name: predict parts
    take order 1 (see the module docstring)."""
    if kind not in ("run", "script"):
        raise ValueError(f"kind must be 'run' or 'script', got {kind!r}")
    _PARTS[name] = (order, kind, build)


class SharedJob:
    """The shared job's result: the launcher's CompletedProcess, its seconds, the logs folder and each
    part's folder."""

    def __init__(self, proc, seconds, logs, folders):
        self.proc, self.seconds, self.logs, self.folders = proc, seconds, logs, folders

    def log(self, rank):
        with open(os.path.join(self.logs, f"worker_{rank}.log"), encoding="utf-8", errors="replace") as f:
            return f.read()

    def section(self, name, rank):
        """What worker ``rank`` printed while it ran part ``name`` (between its markers)."""
        text = self.log(rank)
        begin, end = BEGIN.format(name=name), END.format(name=name, status="").rstrip(" =")
        start = text.index(begin) + len(begin)
        return text[start:text.index(end, start)]

    def check(self, name, ranks=(0, 1)):
        """Assert that part ``name`` ran to status 0 on every rank; returns its folder."""
        for rank in ranks:
            text = self.log(rank) if os.path.isfile(os.path.join(self.logs, f"worker_{rank}.log")) else ""
            status = dict(_END.findall(text)).get(name)
            assert status == "0", (f"part {name} on rank {rank}: status {status} (None: not reached); job exit "
                                   f"{self.proc.returncode}\n" + self.proc.stdout[-3000:] + self.proc.stderr[-3000:])
        return self.folders[name]


def run_shared(request, folder):
    """Build every registered part, launch them as one 2-worker job from ``folder``: a SharedJob."""
    parts, folders = [], {}
    for name, (_, kind, build) in sorted(_PARTS.items(), key=lambda item: (item[1][0], item[0])):
        part_folder = os.path.join(folder, name)
        os.makedirs(part_folder)
        built = build(request, part_folder)
        if kind == "run":
            parts.append({"name": name, "kind": kind, "argv": list(built)})
        else:
            script, argv = built
            parts.append({"name": name, "kind": kind, "script": str(script), "argv": [str(a) for a in argv]})
        folders[name] = part_folder
    spec, worker = os.path.join(folder, "parts.json"), os.path.join(folder, "shared_worker.py")
    with open(spec, "w", encoding="utf-8") as f:
        json.dump(parts, f, indent=1)
    with open(worker, "w", encoding="utf-8") as f:
        f.write(WORKER)
    logs = os.path.join(folder, "logs")
    cmd = " ".join(shlex.quote(a) for a in ("python", worker, spec))
    proc, seconds = launch(cmd, 2, logs, folder)
    print(f"shared msrun job ({', '.join(p['name'] for p in parts)}): {seconds:.1f} s", file=sys.stderr)
    return SharedJob(proc, seconds, logs, folders)
