"""The runner sizes MindSpore's CPU kernel pool: context.runtime_num_threads, else the available CPUs
shared among the node's msrun workers (MindSpore's own default is 25 threads on any machine)."""
import pytest
import yaml

from mindpet_lite.train import cpu_threads
from mindpet_lite.train.run_config import RunConfig
from tests.train.tiny import TINY_YAML


def _tiny(**context):
    with open(TINY_YAML, encoding="utf-8") as f:
        data = yaml.safe_load(f)
    data.setdefault("context", {}).update(context)
    return data


def test_default_is_the_available_cpus_shared_among_local_workers(monkeypatch):
    monkeypatch.setattr(cpu_threads, "available_cpus", lambda: 8)
    assert cpu_threads.default_threads({}) == 8
    assert cpu_threads.default_threads({"LOCAL_WORKER_NUM": "2"}) == 4
    assert cpu_threads.default_threads({"LOCAL_WORKER_NUM": "16"}) == 1  # never 0
    assert cpu_threads.default_threads({"LOCAL_WORKER_NUM": "two"}) == 8  # not a count: ignored


def test_available_cpus_follows_the_affinity_mask():
    import os  # pylint: disable=import-outside-toplevel
    assert cpu_threads.available_cpus() == len(os.sched_getaffinity(0))


def test_the_yaml_key_is_read_and_checked():
    assert RunConfig.from_dict(_tiny(runtime_num_threads=3)).runtime_num_threads == 3
    assert RunConfig.from_dict(_tiny()).runtime_num_threads is None
    assert "context.runtime_num_threads" not in RunConfig.from_dict(_tiny(runtime_num_threads=3)).ignored_keys
    for bad in (0, -2, 1.5, "many", True):
        with pytest.raises((ValueError, TypeError), match="runtime_num_threads"):
            RunConfig.from_dict(_tiny(runtime_num_threads=bad))


def test_the_pool_is_sized_once_per_process(monkeypatch):
    calls = []
    monkeypatch.setattr(cpu_threads.ms.device_context.cpu.op_tuning, "threads_num", calls.append)
    monkeypatch.setattr(cpu_threads, "_STATE", {})
    monkeypatch.setattr(cpu_threads, "available_cpus", lambda: 6)
    monkeypatch.delenv("LOCAL_WORKER_NUM", raising=False)
    assert cpu_threads.set_cpu_threads() == 6
    assert cpu_threads.set_cpu_threads(3) == 6  # MindSpore refuses a second setting: the first stands
    assert calls == [6]


def test_a_pool_set_before_the_runner_is_left_alone(monkeypatch):
    def refuse(num):
        raise RuntimeError("The 'threads_num' can not be set repeatedly.")
    monkeypatch.setattr(cpu_threads.ms.device_context.cpu.op_tuning, "threads_num", refuse)
    monkeypatch.setattr(cpu_threads, "_STATE", {})
    assert cpu_threads.set_cpu_threads(4) == 4
