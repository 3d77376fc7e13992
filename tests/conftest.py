"""Shared fixtures: CPU, both execution modes, and a scratch working directory.

Tests run from a temporary directory so that nothing (MindFormers' ./output/log, MindSpore's
kernel_meta, ...) is written into the repository; use REPO for paths inside the repository.
"""
import os
import shutil
import tempfile

import mindspore as ms
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

ms.set_device("CPU")

GRAPH, PYNATIVE = ms.GRAPH_MODE, ms.PYNATIVE_MODE


def pytest_configure(config):
    """Move to a scratch directory before collection: a test module that imports mindformers at
    import time would otherwise write ./output/log into the repository.

    Under pytest-xdist (`-n 2`) the controller stays where it is: it collects nothing, and its workers
    start in its working directory (test paths are relative to it), then each moves to a scratch
    directory of its own here."""
    if getattr(config.option, "numprocesses", None) and not hasattr(config, "workerinput"):
        return
    config._mindpet_lite_old_cwd = os.getcwd()  # pylint: disable=protected-access
    config._mindpet_lite_scratch = tempfile.mkdtemp(prefix="mindpet_lite_tests_")  # pylint: disable=protected-access
    os.chdir(config._mindpet_lite_scratch)  # pylint: disable=protected-access


def pytest_unconfigure(config):
    os.chdir(getattr(config, "_mindpet_lite_old_cwd", os.getcwd()))
    scratch = getattr(config, "_mindpet_lite_scratch", None)
    if scratch:
        shutil.rmtree(scratch, ignore_errors=True)


@pytest.fixture(params=[GRAPH, PYNATIVE], ids=["graph", "pynative"])
def mode(request):
    """Run the test in GRAPH_MODE and in PYNATIVE_MODE; the mode set before comes back after (a test
    that does not ask for a mode must not depend on which test ran before it)."""
    before = ms.get_context("mode")
    ms.set_context(mode=request.param)
    yield request.param
    ms.set_context(mode=before)
