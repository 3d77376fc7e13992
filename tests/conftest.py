"""Shared fixtures: CPU, both execution modes, and a scratch working directory.

Tests run from a temporary directory so that nothing (MindFormers' ./output/log, MindSpore's
kernel_meta, ...) is written into the repository; use REPO for paths inside the repository.

The tiny run's assets (tests/train/tiny.py) are session fixtures here, not in tests/train: the
shared msrun job (``msrun_shared``, see tests/msrun_jobs.py) builds the parts of tests/train and
tests/infer from them, before it launches.
"""
import os
import shutil
import tempfile

import mindspore as ms
import pytest

from mindpet_lite.run import main as run_main
from tests.modes import keep_mode
from tests.msrun_jobs import MSRUN_GROUP, REPO, run_shared  # noqa: F401  # REPO: tests import it from here
from tests.train import tiny

ms.set_device("CPU")

GRAPH, PYNATIVE = ms.GRAPH_MODE, ms.PYNATIVE_MODE


def pytest_configure(config):
    """Move to a scratch directory before collection: a test module that imports mindformers at
    import time would otherwise write ./output/log into the repository.

    Under pytest-xdist (`-n 2`) the controller stays where it is: it collects nothing, and its workers
    start in its working directory (test paths are relative to it), then each moves to a scratch
    directory of its own here."""
    config.addinivalue_line("markers", f"xdist_group(name): tests that run in one pytest-xdist worker "
                                       f"('{MSRUN_GROUP}': the modules that launch msrun jobs)")
    if getattr(config.option, "numprocesses", None) and not hasattr(config, "workerinput"):
        return
    config._mindpet_lite_old_cwd = os.getcwd()  # pylint: disable=protected-access
    config._mindpet_lite_scratch = tempfile.mkdtemp(prefix="mindpet_lite_tests_")  # pylint: disable=protected-access
    os.chdir(config._mindpet_lite_scratch)  # pylint: disable=protected-access


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups (its loadgroup suffix)
def pytest_collection_modifyitems(config, items):
    """Under pytest-xdist (`-n 2 --dist loadgroup`, README's command): one test module is one unit of
    work, so that its module fixtures are built once; the modules marked ``xdist_group(MSRUN_GROUP)``
    are one unit together, so that the session's msrun jobs (msrun_shared, failing_worker_job) and
    in-process references (tiny_uneven_batch4) are built once and the multi-process jobs never run
    beside each other. That unit is the largest (~1/3 of the suite): it goes first, and the other
    worker takes the in-process modules meanwhile. Serial runs keep the collection order."""
    if not hasattr(config, "workerinput"):
        return
    for item in items:
        if item.get_closest_marker("xdist_group") is None:
            item.add_marker(pytest.mark.xdist_group(item.nodeid.split("::")[0]))
    items.sort(key=lambda item: item.get_closest_marker("xdist_group").args[0] != MSRUN_GROUP)


def pytest_unconfigure(config):
    os.chdir(getattr(config, "_mindpet_lite_old_cwd", os.getcwd()))
    scratch = getattr(config, "_mindpet_lite_scratch", None)
    if scratch:
        shutil.rmtree(scratch, ignore_errors=True)


@pytest.fixture(scope="module", autouse=True)
def module_starts_in_pynative():
    """Every test module starts in MindSpore's default PYNATIVE_MODE, whatever the module before it
    left: the runner, which some tests run in this process, sets GRAPH_MODE and leaves it, and so do
    some tests. Without this a module's mode followed the order the modules ran in, and under
    pytest-xdist that order differs from the serial one: modules that ran in PYNATIVE_MODE serially
    compiled a graph per network there (one runner test, then tests/adapters/test_interop_dora.py:
    85.7 s with the runner's GRAPH_MODE left, 34.5 s with each module starting in PYNATIVE_MODE).
    A test that needs GRAPH_MODE sets it (the ``mode`` fixture, or ``ms.set_context``)."""
    ms.set_context(mode=PYNATIVE)


@pytest.fixture(params=[GRAPH, PYNATIVE], ids=["graph", "pynative"])
def mode(request):
    """Run the test in GRAPH_MODE and in PYNATIVE_MODE; the mode set before comes back after (a test
    that does not ask for a mode must not depend on which test ran before it)."""
    before = ms.get_context("mode")
    ms.set_context(mode=request.param)
    yield request.param
    ms.set_context(mode=before)


@pytest.fixture(scope="session")
def tiny_assets(tmp_path_factory):
    """(base checkpoint, train MindRecord, eval MindRecord) of the tiny run, built once."""
    folder = str(tmp_path_factory.mktemp("tiny_assets"))
    base = tiny.make_base(os.path.join(folder, "base.ckpt"))
    train = tiny.make_data(folder, rows=32, seed=0, name="train")
    held_out = tiny.make_data(folder, rows=8, seed=1, name="eval")
    return base, train, held_out


@pytest.fixture(scope="session")
def tiny_uneven(tiny_assets, tmp_path_factory):
    """(base checkpoint, train MindRecord) with 2 to 5 label tokens a row (tiny.make_data uneven)."""
    folder = str(tmp_path_factory.mktemp("tiny_uneven"))
    return tiny_assets[0], tiny.make_data(folder, rows=32, seed=2, name="train", uneven=True)


@pytest.fixture(scope="session")
def tiny_uneven_batch4(tiny_uneven, tmp_path_factory):
    """Output dir of one process, 3 steps of global batch 4 on tiny_uneven: the reference that
    gradient accumulation (test_trainer), 2 msrun workers (test_distributed) and 2 nodes x 1 worker
    (test_multinode) must equal; run once, in this process (the runner is the same code either way).
    Its adapter is also the second adapter of the msrun predict test (tests/infer/test_predict.py)."""
    base, train = tiny_uneven
    out = str(tmp_path_factory.mktemp("tiny_uneven_batch4") / "run")
    with keep_mode():
        assert run_main(tiny.flags(base, train, out, "--max_steps", "3", "--batch_size", "4")) == 0
    return out


@pytest.fixture(scope="session")
def predict_trained(tiny_assets, tmp_path_factory):
    """(base, adapter) after 3 steps of the tiny run on 16 rows: the model of tests/infer/test_predict.py
    (a session fixture: the shared msrun job predicts with it too)."""
    folder = str(tmp_path_factory.mktemp("predict"))
    base = tiny_assets[0]
    data = tiny.make_data(folder, rows=16)
    out = os.path.join(folder, "run")
    with keep_mode():
        assert run_main(tiny.flags(base, data, out, "--max_steps", "3")) == 0
    return base, os.path.join(out, "adapter.ckpt")


@pytest.fixture(scope="session")
def msrun_shared(request, tmp_path_factory):
    """The one 2-worker msrun job of every registered part (tests/msrun_jobs.py), launched when a test
    first asks for it; a SharedJob (each test checks its part with ``.check(name)``)."""
    return run_shared(request, str(tmp_path_factory.mktemp("msrun_shared")))
