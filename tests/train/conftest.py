"""The tiny run's fixtures (tiny_assets, tiny_uneven, tiny_uneven_batch4) are in tests/conftest.py:
the shared msrun job of tests/msrun_jobs.py uses them for parts of tests/train and tests/infer.

failing_worker_job: one 2-worker runner job whose rank 1 raises as training starts, launched once for
the two tests that check how it ends (test_distributed: the runner's job fails; test_launcher: the
launcher stops it and names the log); a failing job cannot be a part of the shared job.
"""
import shlex
import time
from typing import NamedTuple

import pytest

from tests import msrun_jobs


class FailedJob(NamedTuple):
    proc: object  # the launcher's CompletedProcess
    seconds: float  # launch to exit
    after: float  # seconds from the failure (the worker wrote when) to the launcher's exit
    logs: object  # the job's LOG_DIR (a pathlib.Path)


@pytest.fixture(scope="session")
def failing_worker_job(tiny_assets, tmp_path_factory):
    """msrun_jobs.FAILING_RUN on 2 workers (batch 2, data parallel 2) through the launcher: a FailedJob."""
    base, train, _ = tiny_assets
    folder = tmp_path_factory.mktemp("failing_worker_job")
    failed_at, script, logs = folder / "failed_at", folder / "failing_run.py", folder / "logs"
    script.write_text(msrun_jobs.FAILING_RUN)
    cmd = msrun_jobs.run_cmd(base, train, str(folder / "o"), "--batch_size", "2", "--use_parallel", "True",
                             "--parallel_config.data_parallel", "2", script=shlex.quote(str(script)))
    proc, took = msrun_jobs.launch(cmd, 2, logs, folder, env={"MPL_FAILED_AT": str(failed_at)})
    return FailedJob(proc, took, time.time() - float(failed_at.read_text()), logs)
