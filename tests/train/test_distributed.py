"""The runner under msrun (scripts/msrun_launcher.sh, 2 CPU workers, MindSpore's own collectives).

* data parallel: both ranks end with identical adapters, equal (<= 1e-5) to one process over the
  same global batch (2 workers x batch 2 vs 1 process x batch 4), on rows with 2 to 5 label tokens
  (the loss of a step is the mean over the global batch's tokens, not a mean of per-worker means);
* a worker that raises during training: the job exits non-zero within 60 s and names its log (the
  session's failing_worker_job).

Everything runs from tmp_path (never with cwd in the repository).
"""
import json
import os

import numpy as np
import pytest

from tests import msrun_jobs
from tests.train import tiny

pytestmark = pytest.mark.xdist_group(msrun_jobs.MSRUN_GROUP)  # one worker for the msrun jobs (tests/conftest.py)


def _adapter(path):
    from mindpet_lite._files import read_checkpoint
    return read_checkpoint(path)[0]


def _two_workers_part(request, folder):
    """The shared msrun job's part: 2 workers x batch 2, 3 steps, on tiny_uneven."""
    base, train = request.getfixturevalue("tiny_uneven")
    return tiny.flags(base, train, os.path.join(folder, "dist"), "--max_steps", "3", "--batch_size", "2",
                      "--use_parallel", "True", "--parallel_config.data_parallel", "2")


msrun_jobs.register("lora_data_parallel", _two_workers_part)


def test_two_workers_equal_one_process(tiny_uneven_batch4, msrun_shared):
    """Against one process over batch 4 (the session's tiny_uneven_batch4 run); the 2 workers are the
    shared msrun job's part lora_data_parallel."""
    single = tiny_uneven_batch4
    dist = os.path.join(msrun_shared.check("lora_data_parallel"), "dist")
    print(f"2 workers (shared job): {msrun_shared.seconds:.1f} s")

    ranks = []
    for r in (0, 1):
        with open(os.path.join(dist, "ranks", f"rank_{r}.json"), encoding="utf-8") as f:
            ranks.append(json.load(f))
    assert [x["rank_size"] for x in ranks] == [2, 2] and [x["steps"] for x in ranks] == [3, 3]
    assert ranks[0]["adapter_sha256"] == ranks[1]["adapter_sha256"]  # identical adapters on both ranks
    one, two = _adapter(os.path.join(single, "adapter.ckpt")), _adapter(os.path.join(dist, "adapter.ckpt"))
    assert sorted(one) == sorted(two)
    assert max(float(np.abs(one[k] - two[k]).max()) for k in one) <= 1e-5
    with open(os.path.join(dist, "summary.json"), encoding="utf-8") as f:
        assert json.load(f)["rank_size"] == 2
    with open(os.path.join(single, "summary.json"), encoding="utf-8") as f:
        final_loss = json.load(f)["final_loss"]
    assert abs(ranks[0]["final_loss"] - final_loss) <= 1e-5 * abs(final_loss)  # the global per-token mean
    assert ranks[1]["final_loss"] == ranks[0]["final_loss"]
    worker0 = msrun_shared.section("lora_data_parallel", 0)
    worker1 = msrun_shared.section("lora_data_parallel", 1)  # what rank 1 printed during this run
    assert "step 3/8" in worker0 and "step 3/8" not in worker1  # only rank 0 prints progress
    assert not os.path.exists(os.path.join(dist, "checkpoint", "rank_1"))


def test_a_failing_worker_fails_the_job(failing_worker_job):
    """The session's failing_worker_job (tests/train/conftest.py; test_launcher checks it too)."""
    proc, took, after, logs = failing_worker_job
    print(f"launcher: {took:.1f} s in all, {after:.1f} s after the failure")
    assert proc.returncode != 0
    assert after < 60, after  # the job stops within 60 s of the failure (start-up time is load-dependent)
    assert f"{logs}/worker_1.log" in proc.stderr
    assert "on purpose" in (logs / "worker_1.log").read_text()
