"""Shared fixtures: CPU, both execution modes, and a scratch working directory.

Tests run from a temporary directory so that nothing (MindFormers' ./output/log, MindSpore's
kernel_meta, ...) is written into the repository; use REPO for paths inside the repository.
"""
import os

import mindspore as ms
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

ms.set_device("CPU")

GRAPH, PYNATIVE = ms.GRAPH_MODE, ms.PYNATIVE_MODE


@pytest.fixture(autouse=True, scope="session")
def _scratch_cwd(tmp_path_factory):
    old = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("cwd"))
    yield
    os.chdir(old)


@pytest.fixture(params=[GRAPH, PYNATIVE], ids=["graph", "pynative"])
def mode(request):
    """Run the test in GRAPH_MODE and in PYNATIVE_MODE."""
    ms.set_context(mode=request.param)
    yield request.param
    ms.set_context(mode=GRAPH)
