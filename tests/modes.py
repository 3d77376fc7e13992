"""Execution-mode helpers for the tests."""
import contextlib

import mindspore as ms


@contextlib.contextmanager
def keep_mode():
    """Restore the mode set before once the block ends: for session fixtures that run the runner in
    this process (it sets GRAPH_MODE, `context.mode`, and leaves it, as MindFormers' runner does), so
    that the mode of the test that first asked for the fixture does not change under it."""
    before = ms.get_context("mode")
    try:
        yield
    finally:
        ms.set_context(mode=before)


@contextlib.contextmanager
def pynative():
    """Run the block in PYNATIVE_MODE, then restore the mode set before.

    For references the network itself computes (a single-adapter run, one prompt alone, a full forward)
    beside a GRAPH_MODE run under test: on the tests' tiny networks each new network or input shape
    costs a GRAPH_MODE compile of 1-2 s, a PyNative run a fraction of that, and on CPU both run the same
    kernels (the same numbers). What a test checks in GRAPH_MODE stays in GRAPH_MODE; switching the mode
    keeps the compiled graphs of the networks for the next GRAPH_MODE call."""
    with keep_mode():
        ms.set_context(mode=ms.PYNATIVE_MODE)
        yield
