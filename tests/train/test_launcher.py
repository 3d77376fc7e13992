"""scripts/msrun_launcher.sh and mindpet_lite/train/parallel.py.

Argument forms are checked with MSRUN_LAUNCHER_DRY_RUN=1 (prints the command, runs nothing). The
real jobs run msrun on CPU with 2 workers from tmp_path, on a port chosen per run: a data-parallel
training step equal to one process over the whole batch, and failing jobs that must end quickly
and name the log to read.
"""
import os
import shlex
import socket
import subprocess
import time

import numpy as np
import pytest

from mindpet_lite.train import parallel
from tests import msrun_jobs
from tests.conftest import REPO

pytestmark = pytest.mark.xdist_group(msrun_jobs.MSRUN_GROUP)  # one worker for the msrun jobs (tests/conftest.py)

LAUNCHER = os.path.join(REPO, "scripts", "msrun_launcher.sh")

WORKER = r'''
import os, sys
import numpy as np
import mindspore as ms
from mindspore import Tensor, nn, ops
from mindpet_lite.train.parallel import init_parallel, is_distributed

import time
role, rank_env = os.environ.get("MS_ROLE"), os.environ.get("RANK_ID")


def failed_now():  # when it failed, so that the test times the launcher's reaction, not the start-up
    with open(os.environ["FAILED_AT"], "w", encoding="utf-8") as f:
        f.write(repr(time.time()))


if role == "MS_WORKER" and os.environ.get("FAIL_BEFORE_INIT") == rank_env:
    failed_now()
    raise RuntimeError("worker fails before init on purpose")
ms.set_context(mode=ms.GRAPH_MODE)
rank, size = init_parallel("CPU", use_parallel=True)  # once per process: the shared msrun job's part too
assert is_distributed() == (size > 1)

x = np.random.default_rng(0).standard_normal((8, 4)).astype(np.float32)
y = np.random.default_rng(1).standard_normal((8, 2)).astype(np.float32)
w0 = np.random.default_rng(2).standard_normal((2, 4)).astype(np.float32)
per = 8 // size
xs, ys = x[rank * per:(rank + 1) * per], y[rank * per:(rank + 1) * per]
net = nn.Dense(4, 2, weight_init=Tensor(w0), bias_init="zeros")
step = nn.TrainOneStepCell(nn.WithLossCell(net, nn.MSELoss()), nn.SGD(net.trainable_params(), 0.1))
for i in range(3):
    step(Tensor(xs), Tensor(ys))
one = Tensor(np.array([rank + 1.0], np.float32))
total = ops.AllReduce()(one).asnumpy() if size > 1 else one.asnumpy()
np.savez(os.path.join(sys.argv[1], f"rank{rank}_of{size}.npz"), w=net.weight.asnumpy(),
         b=net.bias.asnumpy(), total=total)
'''


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(**extra):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("MS_") and k not in ("RANK_ID", "RANK_SIZE", "DEVICE_ID")}
    env.pop("MSRUN_LAUNCHER_DRY_RUN", None)
    env.pop("MSRUN_LAUNCHER_SCHED_LOST_GRACE", None)
    env.pop("PYTHON", None)
    env.update(extra)
    return env


# A ceiling, not a measure: a job on a loaded machine may take 10x its idle time (~20 s) and pass.
CEILING = 600


def launch(*args, cwd, timeout=CEILING, **env):
    start = time.monotonic()
    proc = subprocess.run(["bash", LAUNCHER, *map(str, args)], cwd=cwd, env=_env(**env),
                          capture_output=True, text=True, timeout=timeout)
    return proc, time.monotonic() - start


def dry_run(*args, cwd):
    proc, _ = launch(*args, cwd=cwd, MSRUN_LAUNCHER_DRY_RUN="1")
    return proc


# ---- argument forms (dry run) -------------------------------------------------------------------

CMD = "python -m mindpet_lite.run --config 'my run.yaml' --max_steps 3"
TAIL = ["python", "-m", "mindpet_lite.run", "--config", "my run.yaml", "--max_steps", "3"]


@pytest.mark.parametrize("args, expected", [
    ((CMD,), ["msrun", "--worker_num=8", "--local_worker_num=8", "--master_port=8118",
              "--log_dir=output/msrun_log", "--join=True", "--cluster_time_out=7200"]),
    ((CMD, 2), ["msrun", "--worker_num=2", "--local_worker_num=2", "--master_port=8118",
                "--log_dir=output/msrun_log", "--join=True", "--cluster_time_out=7200"]),
    ((CMD, 4, 9123, "logs/a", "false", 60),
     ["msrun", "--worker_num=4", "--local_worker_num=4", "--master_port=9123", "--log_dir=logs/a",
      "--join=False", "--cluster_time_out=60"]),
    ((CMD, 16, 8, "10.0.0.1", 9123, 1, "logs/b", "True", -1),
     ["msrun", "--worker_num=16", "--local_worker_num=8", "--master_addr=10.0.0.1",
      "--master_port=9123", "--node_rank=1", "--log_dir=logs/b", "--join=True",
      "--cluster_time_out=-1"]),
    # all workers on this node: the single-node command, as in MindFormers' script
    ((CMD, 8, 8, "10.0.0.1", 9123, 0, "logs/c", "True", 60),
     ["msrun", "--worker_num=8", "--local_worker_num=8", "--master_port=9123", "--log_dir=logs/c",
      "--join=True", "--cluster_time_out=60"]),
], ids=["cmd", "workers", "six", "nine", "nine-single-node"])
def test_argument_forms(tmp_path, args, expected):
    proc = dry_run(*args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert shlex.split(proc.stdout.strip()) == expected + TAIL


def test_py_script_runs_with_python_and_one_worker_runs_directly(tmp_path):
    proc = dry_run("run_mindformer.py --config x.yaml --use_parallel True", 2, cwd=tmp_path)
    assert shlex.split(proc.stdout)[-6:] == ["python", "run_mindformer.py", "--config", "x.yaml",
                                             "--use_parallel", "True"]
    proc = dry_run("run_mindformer.py --config x.yaml", 1, cwd=tmp_path)
    assert shlex.split(proc.stdout) == ["python", "run_mindformer.py", "--config", "x.yaml"]
    proc = dry_run(CMD, 1, 9123, "logs", "True", 60, cwd=tmp_path)
    assert shlex.split(proc.stdout) == TAIL


@pytest.mark.parametrize("args, message", [
    ((), "expected 1, 2, 6 or 9 arguments, got 0"),
    ((CMD, 2, 3), "got 3"),
    ((CMD, 2, 9123, "logs", "True"), "got 5"),
    ((CMD, "two"), "WORKER_NUM must be an integer >= 1, got 'two'"),
    ((CMD, 0), "WORKER_NUM must be an integer >= 1, got '0'"),
    ((CMD, 2, "port", "logs", "True", 60), "MASTER_PORT must be an integer"),
    ((CMD, 2, 80, "logs", "True", 60), "MASTER_PORT must be an integer in [1024, 65535], got '80'"),
    ((CMD, 2, 9123, "logs", "maybe", 60), "JOIN must be True or False"),
    ((CMD, 2, 9123, "logs", "True", "1h"), "CLUSTER_TIME_OUT must be an integer"),
    ((CMD, 4, 8, "10.0.0.1", 9123, 0, "logs", "True", 60),
     "LOCAL_WORKER must be an integer in [1, WORKER_NUM=4]"),
    ((CMD, 16, 8, "10.0.0.1", 9123, "first", "logs", "True", 60), "NODE_RANK must be an integer"),
    ((CMD, 16, 8, "10.0.0.1", 9123, 2, "logs", "True", 60),
     "NODE_RANK must be in [0, 2) for 2 node(s) of 8 workers (WORKER_NUM 16), got 2"),
    ((CMD, 16, 6, "10.0.0.1", 9123, 0, "logs", "True", 60),
     "WORKER_NUM (16) must be LOCAL_WORKER (6) x the number of nodes"),
    (("", 2), "CMD is empty"),
    (("python 'unclosed.py", 2), "unbalanced quotes"),
    (("bash train.sh", 2), "CMD must start with python, python3, pytest or a .py script"),
])
def test_usage_errors_exit_2(tmp_path, args, message):
    proc = dry_run(*args, cwd=tmp_path)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "Usage:" in proc.stderr and proc.stdout == ""


@pytest.mark.parametrize("grace", ["0", "soon"])
def test_bad_sched_lost_grace_exits_2(tmp_path, grace):
    proc, _ = launch(CMD, 2, cwd=tmp_path, MSRUN_LAUNCHER_DRY_RUN="1", MSRUN_LAUNCHER_SCHED_LOST_GRACE=grace)
    assert proc.returncode == 2 and proc.stdout == ""
    assert f"MSRUN_LAUNCHER_SCHED_LOST_GRACE must be an integer >= 1 (seconds), got '{grace}'" in proc.stderr


# ---- parallel.py without msrun ---------------------------------------------------------------

MSRUN_ENV = {"MS_WORKER_NUM": "2", "MS_ROLE": "MS_WORKER", "MS_SCHED_HOST": "127.0.0.1",
             "MS_SCHED_PORT": "8118", "MS_TOPO_TIMEOUT": "7200", "RANK_ID": "1", "MS_NODE_ID": "1",
             "DEVICE_ID": "1", "RANK_SIZE": "2"}


def test_msrun_env():
    assert parallel.msrun_env({}) is None
    assert parallel.msrun_env({"MS_WORKER_NUM": "2"}) is None  # no role: not a cluster process
    env = parallel.msrun_env(MSRUN_ENV)
    assert env == parallel.MsrunEnv(worker_num=2, role="MS_WORKER", rank_id=1, device_id=1,
                                    sched_host="127.0.0.1", sched_port=8118, topo_timeout=7200)
    assert not env.is_scheduler
    sched = parallel.msrun_env({**MSRUN_ENV, "MS_ROLE": "MS_SCHED", "RANK_ID": "0"})
    assert sched.is_scheduler and sched.rank_id is None
    assert parallel.is_distributed(MSRUN_ENV)
    assert not parallel.is_distributed({**MSRUN_ENV, "MS_WORKER_NUM": "1"})
    assert not parallel.is_distributed({})
    with pytest.raises(ValueError, match="MS_WORKER_NUM must be an int > 0, got 'x'"):
        parallel.msrun_env({**MSRUN_ENV, "MS_WORKER_NUM": "x"})


def test_init_parallel_without_msrun(monkeypatch, caplog):
    for key in MSRUN_ENV:
        monkeypatch.delenv(key, raising=False)
    assert parallel.init_parallel(None, use_parallel=False) == (0, 1)
    with caplog.at_level("WARNING", logger=parallel.__name__):
        assert parallel.init_parallel(None, use_parallel=True, data_parallel=1) == (0, 1)
    assert "not launched by msrun" in caplog.text and "one process" in caplog.text
    with pytest.raises(ValueError, match=r"data_parallel must equal the number of workers \(1, "
                                         r"not launched by msrun\), got 2 \(int\)"):
        parallel.init_parallel(None, use_parallel=True, data_parallel=2)
    with pytest.raises(TypeError, match="use_parallel must be a bool, got 'True'"):
        parallel.init_parallel(None, use_parallel="True")


def test_init_parallel_checks_before_init_under_msrun(monkeypatch):
    """Both errors come before communication.init(), which would wait for a scheduler here."""
    for key, value in MSRUN_ENV.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ValueError, match="use_parallel is False but this process was launched by "
                                         "msrun"):
        parallel.init_parallel(None, use_parallel=False)
    with pytest.raises(ValueError, match=r"data_parallel must equal the number of workers \(2, "
                                         r"MS_WORKER_NUM\), got 8"):
        parallel.init_parallel(None, use_parallel=True, data_parallel=8)
    with pytest.raises(TypeError, match="data_parallel must be an int > 0"):
        parallel.init_parallel(None, use_parallel=True, data_parallel=2.0)


# ---- real jobs -----------------------------------------------------------------------------------

@pytest.fixture
def worker(tmp_path):
    path = tmp_path / "worker.py"
    path.write_text(WORKER)
    return path


def _sgd_reference(steps=3, lr=0.1):
    """Dense(4, 2) + MSELoss + SGD over the whole batch of 8, in float64 numpy."""
    x = np.random.default_rng(0).standard_normal((8, 4))
    y = np.random.default_rng(1).standard_normal((8, 2))
    w = np.random.default_rng(2).standard_normal((2, 4)).astype(np.float32).astype(np.float64)
    b = np.zeros(2)
    for _ in range(steps):
        g = 2.0 * (x @ w.T + b - y) / y.size
        w, b = w - lr * g.T @ x, b - lr * g.sum(0)
    return w, b


def _data_parallel_part(request, folder):  # pylint: disable=unused-argument
    """The shared msrun job's part (tests/msrun_jobs.py): WORKER on 2 workers, writing to folder/out."""
    script, out = os.path.join(folder, "worker.py"), os.path.join(folder, "out")
    with open(script, "w", encoding="utf-8") as f:
        f.write(WORKER)
    os.makedirs(out)
    return script, [out]


msrun_jobs.register("launcher_data_parallel", _data_parallel_part, kind="script")


def test_data_parallel_equals_one_process(tmp_path, worker, msrun_shared):
    """WORKER as one process (the launcher's WORKER_NUM 1: run directly) and on 2 msrun workers (the
    shared msrun job's part launcher_data_parallel, run by the same script in the workers)."""
    out = tmp_path / "out"
    out.mkdir()
    single, t1 = launch(f"python {worker} {out}", 1, cwd=tmp_path)
    assert single.returncode == 0, single.stdout + single.stderr
    assert not (tmp_path / "output").exists()  # no msrun, no msrun_log

    dist = os.path.join(msrun_shared.check("launcher_data_parallel"), "out")
    print(f"1 process: {t1:.1f} s, 2 workers under msrun (shared job): {msrun_shared.seconds:.1f} s")
    assert set(os.listdir(msrun_shared.logs)) >= {"scheduler.log", "worker_0.log", "worker_1.log", "msrun.log"}

    ref = np.load(out / "rank0_of1.npz")
    ranks = [np.load(os.path.join(dist, f"rank{r}_of2.npz")) for r in (0, 1)]
    for r in ranks:
        np.testing.assert_array_equal(r["total"], [3.0])  # all-reduce (sum) of rank + 1
        for key in ("w", "b"):
            np.testing.assert_allclose(r[key], ref[key], rtol=0, atol=1e-5)
    np.testing.assert_array_equal(ranks[0]["w"], ranks[1]["w"])
    w, b = _sgd_reference()
    np.testing.assert_allclose(ref["w"], w, rtol=0, atol=1e-5)
    np.testing.assert_allclose(ref["b"], b, rtol=0, atol=1e-5)
    assert np.abs(ref["w"] - np.random.default_rng(2).standard_normal((2, 4))).max() > 1e-3


@pytest.mark.parametrize("when", ["during_training", "before_init"])
def test_failing_worker_stops_the_job_and_names_its_log(request, tmp_path, worker, when):
    """msrun alone: ~30 s more (scheduler heartbeat timeout) during training, CLUSTER_TIME_OUT
    (here 7200 s) before init. Timed from the failure (the worker writes when it raised), so that a
    slow start-up on a loaded machine does not count; the subprocess ceiling is generous.

    During training: the session's failing_worker_job (tests/train/conftest.py: the runner on 2
    workers, rank 1 raising as training starts, CLUSTER_TIME_OUT 600 s), which test_distributed checks
    too; one job for both. Before init: WORKER with rank 1 raising before communication.init()."""
    if when == "during_training":
        proc, took, after, logs = request.getfixturevalue("failing_worker_job")
    else:
        logs, failed_at = tmp_path / "logs", tmp_path / "failed_at"
        proc, took = launch(f"python {worker} {tmp_path}", 2, _free_port(), logs, "True", 7200,
                            cwd=tmp_path, timeout=CEILING, FAILED_AT=str(failed_at), FAIL_BEFORE_INIT="1")
        after = time.time() - float(failed_at.read_text())
    print(f"{when}: exit {proc.returncode} after {took:.1f} s, {after:.1f} s after the failure")
    assert proc.returncode != 0
    assert after < 60, after
    assert f"failing worker log: {logs}/worker_1.log" in proc.stderr
    assert "fails" in (logs / "worker_1.log").read_text()
    assert "on purpose" in proc.stdout  # the worker logs are followed on the console


def test_dead_scheduler_stops_the_workers(tmp_path):
    """The scheduler dies first: msrun alone would let the workers wait CLUSTER_TIME_OUT. Timed from
    the scheduler's exit (it writes when)."""
    script = tmp_path / "bad_scheduler.py"
    failed_at = tmp_path / "failed_at"
    script.write_text("import os, sys, time\n"
                      "if os.environ['MS_ROLE'] == 'MS_SCHED':\n"
                      f"    open({str(failed_at)!r}, 'w').write(repr(time.time()))\n"
                      "    sys.exit('scheduler fails on purpose')\n"
                      "from mindpet_lite.train.parallel import init_parallel\n"
                      "init_parallel('CPU', use_parallel=True)\n")
    logs = tmp_path / "logs"
    # the launcher's grace for workers outliving their scheduler: 2 s here (default 10), the test's
    # workers wait for it forever anyway
    proc, took = launch(f"python {script}", 2, _free_port(), logs, "True", 7200, cwd=tmp_path,
                        timeout=CEILING, MSRUN_LAUNCHER_SCHED_LOST_GRACE="2")
    after = time.time() - float(failed_at.read_text())
    print(f"dead scheduler: exit {proc.returncode} after {took:.1f} s, {after:.1f} s after the scheduler's exit")
    assert proc.returncode != 0 and after < 60, after
    assert f"failing scheduler log: {logs}/scheduler.log" in proc.stderr


def test_port_in_use_is_refused(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        proc, _ = launch("python -c pass", 2, port, tmp_path / "logs", "True", 60, cwd=tmp_path,
                         timeout=CEILING)
    assert proc.returncode == 1
    assert f"MASTER_PORT {port} is in use" in proc.stderr
    assert not (tmp_path / "logs").exists()  # refused before msrun started (no wait for CLUSTER_TIME_OUT)
