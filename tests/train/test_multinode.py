"""Two msrun "nodes" on one machine (2 nodes x 1 CPU worker) through scripts/msrun_launcher.sh's
9-argument form, each node in a network namespace of its own.

Why namespaces: msrun starts a scheduler on every node whose MASTER_ADDR is one of its local addresses.
Two launchers on one network stack with MASTER_ADDR 127.0.0.1 both start one (the second cannot bind
the port and the job stops, or they race); giving node 1 another loopback address (127.0.0.2, not
"local" to msrun) left the job hanging until its timeout. A namespace per node, joined by a veth pair,
gives each node its own address (10.231.x.1 and .2) and its own ports: node 0's MASTER_ADDR is local
there and remote for node 1, exactly as on two machines. The test creates both namespaces and removes
them (with the veth pair) afterwards; it is skipped when they cannot be created (not root, no iproute2).

* data parallel across the nodes on rows with 2 to 5 label tokens: every rank ends with the same
  adapter, equal (<= 1e-5) to one process over the same global batch;
* node 1's worker fails during training: both launchers exit non-zero, node 1's names its worker log
  (node 0's worker learns of it when its AllReduce gives up: after MS_NODE_TIMEOUT, 30 s by default,
  10 s in this test);
* node 1 never comes up: node 0's launcher exits non-zero after CLUSTER_TIME_OUT (20 s here) and says
  that the node with NODE_RANK 1 is missing (and node 0 too when, on a loaded machine, its own worker
  did not join in that time).
"""
import json
import os
import re
import shlex
import shutil
import subprocess
import time

import numpy as np
import pytest

from mindpet_lite.run import main as run_main
from tests import msrun_jobs
from tests.train import test_distributed as dist
from tests.train import tiny

pytestmark = pytest.mark.xdist_group(msrun_jobs.MSRUN_GROUP)  # one worker for the msrun jobs (tests/conftest.py)

ADDR = "10.231.{}.{}"
NODE_TIMEOUT = 10  # MS_NODE_TIMEOUT of the failing-node test (seconds)
CLUSTER_TIME_OUT = 20  # of the node-never-comes-up test (seconds): the scheduler's wait for node 1


def _ip(*args):
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)


@pytest.fixture
def two_nodes():
    """[(namespace, address)] for node 0 and node 1, joined by a veth pair; removed afterwards."""
    if shutil.which("ip") is None:
        pytest.skip("iproute2 (`ip`) is not installed: cannot create network namespaces")
    if os.geteuid() != 0:
        pytest.skip("creating network namespaces needs root (ip netns add)")
    tag = os.getpid() % 10000
    subnet = os.getpid() % 250 + 2
    names = [f"mpl{tag}n{i}" for i in (0, 1)]
    veths = [f"mpl{tag}v{i}" for i in (0, 1)]
    nodes = [(names[i], ADDR.format(subnet, i + 1)) for i in (0, 1)]
    made = []
    try:
        for name in names:
            proc = _ip("netns", "add", name)
            if proc.returncode:
                pytest.skip(f"cannot create a network namespace: {proc.stderr.strip()}")
            made.append(name)
        steps = [("link", "add", veths[0], "type", "veth", "peer", "name", veths[1])]
        for i in (0, 1):
            steps += [("link", "set", veths[i], "netns", names[i]),
                      ("-n", names[i], "addr", "add", nodes[i][1] + "/24", "dev", veths[i]),
                      ("-n", names[i], "link", "set", "lo", "up"),
                      ("-n", names[i], "link", "set", veths[i], "up")]
        for step in steps:
            proc = _ip(*step)
            assert proc.returncode == 0, f"ip {' '.join(step)}: {proc.stderr}"
        yield nodes
    finally:
        for name in made:  # deleting a namespace deletes its end of the veth pair, and so the pair
            _ip("netns", "del", name)


def _start_node(namespace, cmd, node_rank, master, logs, cwd, timeout_s=msrun_jobs.CEILING, local=1,  # pylint: disable=too-many-arguments
                env=None):
    """One node's launcher (9-argument form) in its namespace; ``env``: variables added to the
    launcher's environment (msrun's own are stripped from this process's).

    Its stdout and stderr go to files in ``cwd`` (:func:`_output` reads them), not to pipes: the launcher
    follows every worker log on its stdout, and on a loaded machine node 1's workers log a retry line a
    second until node 0's scheduler is up. Past a pipe's 64 KiB, with nobody reading until the launcher
    exits, its `tail` blocked on the write and the launcher waited for that `tail` for ever (seen once:
    2 x 2 workers beside the suite and a training job, 63 KB of node 1 output, the job done in 50 s, the
    test's 1,200 s ceiling reached)."""
    args = ["ip", "netns", "exec", namespace, "bash", msrun_jobs.LAUNCHER, cmd, str(2 * local), str(local), master, "8118",
            str(node_rank), str(logs), "True", str(timeout_s)]
    with open(os.path.join(cwd, f"node{node_rank}.out"), "w", encoding="utf-8") as out, \
            open(os.path.join(cwd, f"node{node_rank}.err"), "w", encoding="utf-8") as err:
        return subprocess.Popen(args, cwd=cwd, env={**msrun_jobs.launch_env(), **(env or {})}, stdout=out, stderr=err)


def _output(cwd, node_rank):
    """(stdout, stderr) of node ``node_rank``'s launcher (see :func:`_start_node`)."""
    texts = []
    for stream in ("out", "err"):
        with open(os.path.join(cwd, f"node{node_rank}.{stream}"), encoding="utf-8", errors="replace") as f:
            texts.append(f.read())
    return tuple(texts)


def _run_nodes(nodes, cmd, tmp_path, timeout=msrun_jobs.CEILING, local=1, env=None):  # pylint: disable=too-many-arguments
    """Both launchers at once; [(returncode, stdout, stderr, seconds, exit epoch time)] of node 0 and 1.
    `timeout` is a ceiling (10x the idle time and more), the wait itself is on the processes' exits."""
    master = nodes[0][1]
    start = time.monotonic()
    procs = [_start_node(ns, cmd, rank, master, tmp_path / f"logs{rank}", tmp_path, local=local, env=env)
             for rank, (ns, _) in enumerate(nodes)]
    results = [None, None]
    try:
        while any(r is None for r in results):
            for i, proc in enumerate(procs):
                if results[i] is None and proc.poll() is not None:
                    results[i] = (proc.returncode, *_output(tmp_path, i), time.monotonic() - start, time.time())
            assert time.monotonic() - start < timeout, "the launchers did not finish"
            time.sleep(0.2)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return results


@pytest.mark.parametrize("local", [1, 2], ids=["2x1", "2x2"])
def test_two_nodes_equal_one_process(two_nodes, tiny_uneven, tiny_uneven_batch4, tmp_path, local):
    """2 nodes x `local` workers, batch 2 each, against one process with the global batch (for 2 x 1,
    batch 4: the session's tiny_uneven_batch4 run)."""
    base, train = tiny_uneven
    workers = 2 * local
    single, multi = str(tmp_path / "single"), str(tmp_path / "multi")
    if workers == 2:
        single = tiny_uneven_batch4
    else:  # in this process, as tiny_uneven_batch4
        assert run_main(tiny.flags(base, train, single, "--max_steps", "3", "--batch_size", str(2 * workers))) == 0
    cmd = msrun_jobs.run_cmd(base, train, multi, "--batch_size", "2", "--use_parallel", "True",
                             "--parallel_config.data_parallel", str(workers))
    results = _run_nodes(two_nodes, cmd, tmp_path, timeout=msrun_jobs.CEILING * local, local=local)
    for rank, (code, out, err, took, _) in enumerate(results):
        assert code == 0, f"node {rank}: {out[-2000:]}{err[-2000:]}"
        print(f"node {rank}: {took:.1f} s")
    assert (tmp_path / "logs0" / "scheduler.log").exists()  # the scheduler runs on node 0 only
    assert not (tmp_path / "logs1" / "scheduler.log").exists()
    assert (tmp_path / "logs1" / f"worker_{workers - 1}.log").exists()  # node 1 runs the last ranks

    ranks = []
    for r in range(workers):
        with open(os.path.join(multi, "ranks", f"rank_{r}.json"), encoding="utf-8") as f:
            ranks.append(json.load(f))
    assert [x["rank_size"] for x in ranks] == [workers] * workers and [x["steps"] for x in ranks] == [3] * workers
    assert len({x["adapter_sha256"] for x in ranks}) == 1  # the same adapter on every rank
    one = dist._adapter(os.path.join(single, "adapter.ckpt"))  # pylint: disable=protected-access
    two = dist._adapter(os.path.join(multi, "adapter.ckpt"))  # pylint: disable=protected-access
    assert sorted(one) == sorted(two)
    assert max(float(np.abs(one[k] - two[k]).max()) for k in one) <= 1e-5


def test_a_failing_node_fails_both_launchers(two_nodes, tiny_assets, tmp_path, monkeypatch):
    base, train, _ = tiny_assets
    failed_at = tmp_path / "failed_at"
    monkeypatch.setenv("MPL_FAILED_AT", str(failed_at))  # the failing worker writes when it raised
    script = tmp_path / "failing_run.py"
    script.write_text(msrun_jobs.FAILING_RUN)
    cmd = msrun_jobs.run_cmd(base, train, str(tmp_path / "o"), "--batch_size", "2", "--use_parallel", "True",
                             "--parallel_config.data_parallel", "2", script=shlex.quote(str(script)))
    # MindSpore's node timeout (its heartbeat, and how long a CPU collective waits for a peer): node 0's
    # AllReduce gives up on node 1's dead worker after it. 10 s, not the default 30, to end the test
    # sooner; not less, so that a heartbeat on a loaded machine is not taken for a dead node.
    results = _run_nodes(two_nodes, cmd, tmp_path, env={"MS_NODE_TIMEOUT": str(NODE_TIMEOUT)})
    after = [r[4] - float(failed_at.read_text()) for r in results]
    print("node 0: %.1f s in all, %.1f s after the failure; node 1: %.1f s, %.1f s"
          % (results[0][3], after[0], results[1][3], after[1]))
    assert results[0][0] != 0 and results[1][0] != 0
    assert f"{tmp_path}/logs1/worker_1.log" in results[1][2]
    assert "on purpose" in (tmp_path / "logs1" / "worker_1.log").read_text()
    assert max(after) < 60, after  # both launchers stop within 60 s of the failure (start-up not counted)


def _scheduler_started(log):
    """Epoch time of the scheduler's "Begin to Initialize MetaServerNode" line: CLUSTER_TIME_OUT counts
    from there (MindSpore stamps its log lines in local time, 2026-12-04-18:14:30.102.044)."""
    with open(log, encoding="utf-8", errors="replace") as f:
        for line in f:
            if "Begin to Initialize MetaServerNode" in line:
                stamp = re.search(r"\):(\d{4}-\d\d-\d\d-\d\d:\d\d:\d\d)\.(\d{3})", line)
                return time.mktime(time.strptime(stamp.group(1), "%Y-%m-%d-%H:%M:%S")) + int(stamp.group(2)) / 1e3
    raise AssertionError(f"no scheduler start in {log}")


def test_a_node_that_never_comes_up(two_nodes, tiny_assets, tmp_path):
    """Timed from the scheduler's start (its log line), not from the launch: the start-up of python
    and MindSpore on a loaded machine does not count against CLUSTER_TIME_OUT. Node 0's scheduler
    starts once node 0's worker has imported MindSpore (msrun_jobs.GATED_RUN): without that gate, in
    CI beside the other pytest worker, node 0's own worker missed the then 8 s CLUSTER_TIME_OUT and the
    launcher rightly named nodes 0 and 1. Even with it, beside the suite and a training job, node 0's
    worker failed to register for the 6 s that were left (its connections to the running scheduler
    failed one after another) and gave up with it. So node 0's worker may miss the cluster on a loaded
    machine: the launcher must then name node 0 as well, and the scheduler's log says which ranks
    joined. Idle, node 0's rank joins within a second and only node 1 is named."""
    base, train, _ = tiny_assets
    script = tmp_path / "gated_run.py"
    script.write_text(msrun_jobs.GATED_RUN)
    cmd = msrun_jobs.run_cmd(base, train, str(tmp_path / "o"), "--batch_size", "2", "--use_parallel", "True",
                             "--parallel_config.data_parallel", "2", script=shlex.quote(str(script)))
    start = time.monotonic()
    proc = _start_node(two_nodes[0][0], cmd, 0, two_nodes[0][1], tmp_path / "logs0", tmp_path,
                       timeout_s=CLUSTER_TIME_OUT, env={"MPL_WORKER_READY": str(tmp_path / "worker_ready")})
    proc.wait(timeout=msrun_jobs.CEILING)
    took, ended = time.monotonic() - start, time.time()
    out, err = _output(tmp_path, 0)
    waited = ended - _scheduler_started(tmp_path / "logs0" / "scheduler.log")
    print(f"node 0 alone: {took:.1f} s, {waited:.1f} s after its scheduler started")
    assert proc.returncode != 0, out[-2000:]
    assert CLUSTER_TIME_OUT <= waited < 90, waited
    joined = re.findall(r"The new node: \d+\(role: MS_WORKER\), rank id: (\d+)",
                        (tmp_path / "logs0" / "scheduler.log").read_text(errors="replace"))
    assert joined in ([], ["0"]), joined  # rank 1 (node 1) never started
    missing = "1" if joined else "0 1"
    if not joined:
        print("node 0's worker did not join either (a loaded machine)")
    assert f"missing node(s) with NODE_RANK {missing} (" in err, err[-3000:]
