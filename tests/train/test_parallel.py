"""init_parallel's device_id (context.device_id / --device_id): used without msrun, msrun's DEVICE_ID wins."""
import argparse
import logging

import pytest

from mindpet_lite.train import parallel
from mindpet_lite.train.run_config import add_run_arguments, load_run_config
from tests.train.tiny import TINY_YAML

MSRUN_ENV = {"MS_WORKER_NUM": "2", "MS_ROLE": "MS_WORKER", "MS_SCHED_HOST": "127.0.0.1", "MS_SCHED_PORT": "8118",
             "RANK_ID": "1", "MS_NODE_ID": "1", "DEVICE_ID": "1", "RANK_SIZE": "2"}


@pytest.fixture
def set_device_calls(monkeypatch):
    """The calls of mindspore.set_device (not made: this machine has no Ascend or GPU)."""
    calls = []
    monkeypatch.setattr(parallel.ms, "set_device", lambda *args: calls.append(args))
    monkeypatch.setattr(parallel.ms.hal, "is_available", lambda target: True)  # pretend the device is there
    return calls


def test_a_device_the_build_lacks_is_refused_naming_it(monkeypatch, no_msrun):
    calls = []
    monkeypatch.setattr(parallel.ms, "set_device", lambda *args: calls.append(args))
    with pytest.raises(ValueError, match="device_target 'Ascend' is not available to this MindSpore build"):
        parallel.init_parallel("Ascend", use_parallel=False, device_id=0)
    assert not calls


@pytest.fixture
def no_msrun(monkeypatch):
    for key in MSRUN_ENV:
        monkeypatch.delenv(key, raising=False)


@pytest.fixture
def fake_msrun(monkeypatch):
    """This process looks like msrun's worker 1 (DEVICE_ID 1); the collective set-up is faked."""
    for key, value in MSRUN_ENV.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(parallel, "_STATE", {})
    monkeypatch.setattr(parallel, "init", lambda: None)
    monkeypatch.setattr(parallel, "get_rank", lambda: 1)
    monkeypatch.setattr(parallel, "get_group_size", lambda: 2)
    monkeypatch.setattr(parallel.ms, "set_auto_parallel_context", lambda **kwargs: None)


def test_device_id_flag_reaches_set_device(no_msrun, set_device_calls):
    args, extra = add_run_arguments(argparse.ArgumentParser()).parse_known_args(
        ["--config", TINY_YAML, "--device_target", "Ascend", "--device_id", "3"])
    cfg = load_run_config(args, extra)
    assert parallel.init_parallel(cfg.device_target, cfg.use_parallel, device_id=cfg.device_id) == (0, 1)
    assert set_device_calls == [("Ascend", 3)]


def test_device_id_without_msrun(no_msrun, set_device_calls):
    parallel.init_parallel("GPU", device_id=0)
    parallel.init_parallel("Ascend")  # not set: MindSpore's default device
    parallel.init_parallel("CPU", device_id=5)  # a CPU has one device
    parallel.init_parallel(None, device_id=5)  # the device stays as already set
    assert set_device_calls == [("GPU", 0), ("Ascend",), ("CPU",)]


@pytest.mark.parametrize("device_id", [-1, 1.0, "1", True])
def test_bad_device_id(no_msrun, set_device_calls, device_id):
    with pytest.raises((TypeError, ValueError), match="device_id must be an int >= 0"):
        parallel.init_parallel("Ascend", device_id=device_id)
    assert not set_device_calls


def test_under_msrun_device_id_of_msrun_wins_with_a_warning(fake_msrun, set_device_calls, caplog):
    with caplog.at_level(logging.WARNING, logger=parallel.__name__):
        assert parallel.init_parallel("Ascend", use_parallel=True, device_id=5) == (1, 2)
    assert set_device_calls == [("Ascend", 1)]
    warning = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert "device_id 5" in warning and "DEVICE_ID 1" in warning


def test_under_msrun_the_same_device_id_is_quiet(fake_msrun, set_device_calls, caplog):
    with caplog.at_level(logging.WARNING, logger=parallel.__name__):
        parallel.init_parallel("Ascend", use_parallel=True, device_id=1)
    assert set_device_calls == [("Ascend", 1)]
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]


def test_a_second_call_sets_data_parallel_again_after_a_reset(fake_msrun, monkeypatch):
    """init() runs once per process, but the context is set on every call: predict resets it for its
    inference graphs, and a training run after that in the same process must still average gradients."""
    contexts, inits = [], []
    monkeypatch.setattr(parallel.ms, "set_auto_parallel_context", lambda **kwargs: contexts.append(kwargs))
    monkeypatch.setattr(parallel, "init", lambda: inits.append(1))
    assert parallel.init_parallel("CPU", use_parallel=True) == (1, 2)
    parallel.ms.reset_auto_parallel_context()  # what predict does after init_parallel
    assert parallel.init_parallel("CPU", use_parallel=True) == (1, 2)
    assert len(inits) == 1
    expected = {"parallel_mode": parallel.ms.ParallelMode.DATA_PARALLEL, "gradients_mean": True, "device_num": 2}
    assert contexts == [expected, expected]
