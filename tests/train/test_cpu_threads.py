"""context.runtime_num_threads sizes MindSpore's CPU kernel pool (once per process); not set, the
runner leaves MindSpore's default."""
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


def test_the_yaml_key_is_read_and_checked():
    assert RunConfig.from_dict(_tiny(runtime_num_threads=3)).runtime_num_threads == 3
    assert RunConfig.from_dict(_tiny()).runtime_num_threads is None
    assert "context.runtime_num_threads" not in RunConfig.from_dict(_tiny(runtime_num_threads=3)).ignored_keys
    for bad in (0, -2, 1.5, "many", True):
        with pytest.raises((ValueError, TypeError), match="runtime_num_threads"):
            RunConfig.from_dict(_tiny(runtime_num_threads=bad))


def test_not_set_leaves_mindspores_default(monkeypatch):
    calls = []
    monkeypatch.setattr(cpu_threads.ms.device_context.cpu.op_tuning, "threads_num", calls.append)
    monkeypatch.setattr(cpu_threads, "_STATE", {})
    assert cpu_threads.set_cpu_threads(None) is None
    assert not calls


def test_the_pool_is_sized_once_per_process(monkeypatch, caplog):
    calls = []
    monkeypatch.setattr(cpu_threads.ms.device_context.cpu.op_tuning, "threads_num", calls.append)
    monkeypatch.setattr(cpu_threads, "_STATE", {})
    assert cpu_threads.set_cpu_threads(6) == 6
    assert cpu_threads.set_cpu_threads(3) == 6  # MindSpore refuses a second setting: the first stands
    assert calls == [6]
    assert "runtime_num_threads=3 is not applied" in caplog.text


def test_a_pool_set_before_the_runner_is_left_alone(monkeypatch, caplog):
    def refuse(num):
        raise RuntimeError("The 'threads_num' can not be set repeatedly.")
    monkeypatch.setattr(cpu_threads.ms.device_context.cpu.op_tuning, "threads_num", refuse)
    monkeypatch.setattr(cpu_threads, "_STATE", {})
    assert cpu_threads.set_cpu_threads(4) is None
    assert "sized before the runner started" in caplog.text
