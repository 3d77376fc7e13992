"""The command line's exit status: 2 for bad input, 1 for a failure while working (cli.py and run.py)."""
import json

import pytest

import mindpet_lite.data
import mindpet_lite.train
from mindpet_lite.cli import build_parser
from mindpet_lite.cli import main as cli_main
from mindpet_lite.run import build_parser as run_parser
from mindpet_lite.run import main as run_main
from tests.train.tiny import TINY_YAML


def _data_argv(tmp_path):
    src = tmp_path / "a.json"
    src.write_text(json.dumps([{"instruction": "say", "input": "hi", "output": "HI"}]))
    return ["data", "--src", str(src), "--dst", str(tmp_path / "a.mindrecord"), "--seq_length", "512"]


@pytest.mark.parametrize("error, status", [
    (ValueError("bad seq_length"), 2), (FileNotFoundError("no such file"), 2), (FileExistsError("exists"), 2),
    (IsADirectoryError("a directory"), 2), (KeyError("instruction"), 2),
    (OSError("No space left on device"), 1), (RuntimeError("the device failed"), 1),
    (FloatingPointError("loss is nan"), 1),
])
def test_subcommand_exit_status(tmp_path, monkeypatch, capsys, error, status):
    def fail(*args, **kwargs):
        raise error
    monkeypatch.setattr(mindpet_lite.data, "convert_alpaca", fail)
    assert cli_main(_data_argv(tmp_path)) == status
    err = capsys.readouterr().err
    assert err.startswith("mindpet-lite data: error: ") and str(error) in err


def test_subcommand_real_errors(tmp_path, capsys):
    argv = _data_argv(tmp_path)
    assert cli_main(argv) == 0
    assert cli_main(argv) == 2  # the output exists
    assert "already exists" in capsys.readouterr().err
    assert cli_main(["merge", "--base", str(tmp_path / "none.ckpt"), "--adapter", str(tmp_path / "none.ckpt"),
                     "--out", str(tmp_path / "m.ckpt")]) == 2
    assert cli_main(["finetune", "--config", str(tmp_path / "none.yaml")]) == 2
    assert cli_main([]) == 2


@pytest.mark.parametrize("error, status", [(ValueError("bad"), 2), (NotImplementedError("no"), 2),
                                           (RuntimeError("worker failed"), 1), (OSError("disk"), 1)])
def test_run_module_exit_status(monkeypatch, capsys, error, status):
    def fail(config, after_train=None):  # pylint: disable=unused-argument
        raise error
    monkeypatch.setattr(mindpet_lite.train, "finetune", fail)
    assert run_main(["--config", TINY_YAML]) == status
    assert cli_main(["finetune", "--config", TINY_YAML]) == status
    assert str(error) in capsys.readouterr().err


def test_help_states_the_exit_status():
    for parser in (build_parser(), run_parser()):
        text = " ".join(parser.format_help().split())
        assert "exit status: 0 success; 2 bad input" in text and "1 a failure while" in text
