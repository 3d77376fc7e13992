"""`python -m mindpet_lite.run`, `mindpet-lite finetune` and `mindpet-lite data` (the run entry points)."""
import json
import os
import subprocess
import sys

import numpy as np

from mindpet_lite.cli import main as cli_main
from mindpet_lite.run import main as run_main
from tests.conftest import REPO
from tests.train import tiny


def _env():
    env = {k: v for k, v in os.environ.items() if not k.startswith("MS_")}
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    return env


def test_data_subcommand(tmp_path, capsys):
    src = tmp_path / "a.jsonl"
    src.write_text("\n".join(json.dumps({"instruction": "say", "input": w, "output": w.upper()})
                             for w in ("hi", "yo", "ok")) + "\n")
    template = tmp_path / "t.json"
    template.write_text(json.dumps(tiny.TEMPLATE))
    dst = str(tmp_path / "a.mindrecord")
    argv = ["data", "--src", str(src), "--dst", dst, "--tokenizer", "byte", "--seq_length", "15",
            "--template", str(template)]
    assert cli_main(argv) == 0
    assert "wrote" in capsys.readouterr().out and os.path.isfile(dst + ".db")
    from mindpet_lite.data import create_dataset
    ids, labels = next(create_dataset(dst, 3, seq_length=15, shuffle=False).create_tuple_iterator(output_numpy=True))
    assert ids.shape == (3, 16) and (labels == -100).any() and (labels != -100).any()
    assert cli_main(argv) == 2  # exists, no --overwrite: bad input
    assert "already exists" in capsys.readouterr().err
    assert cli_main(argv + ["--overwrite"]) == 0
    assert cli_main(["data", "--src", str(tmp_path / "none.json"), "--dst", dst, "--seq_length", "15"]) == 2


def test_finetune_subcommand_and_run_module_agree(tmp_path, capsys):
    base = tiny.make_base(str(tmp_path / "base.ckpt"))
    data = tiny.make_data(str(tmp_path), rows=16)
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    assert cli_main(["finetune", *tiny.flags(base, data, a, "--max_steps", "2",
                                             "--options", "lr_schedule.learning_rate=5e-3")]) == 0
    assert run_main(tiny.flags(base, data, b, "--max_steps", "2", "--lr_schedule.learning_rate", "5e-3")) == 0
    assert "step 2/8" in capsys.readouterr().out
    from mindpet_lite._files import read_checkpoint
    x, y = (read_checkpoint(os.path.join(d, "adapter.ckpt"))[0] for d in (a, b))
    assert sorted(x) == sorted(y) and all(np.allclose(x[k], y[k], rtol=0, atol=1e-6) for k in x)
    with open(os.path.join(a, "summary.json"), encoding="utf-8") as f:
        assert json.load(f)["config"]["learning_rate"] == 5e-3
    assert cli_main(["finetune", "--config", tiny.TINY_YAML, "--options", "optimizer.weight_decy=1"]) == 2
    assert "did you mean 'weight_decay'" in capsys.readouterr().err


def test_run_module_exit_status_and_help(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "mindpet_lite.run", "--config", tiny.TINY_YAML,
                           "--optimizer.betas1", "0.8"], cwd=tmp_path, env=_env(), capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 2
    assert "unknown key 'betas1'; did you mean 'betas'" in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "mindpet_lite.run", "--help"], cwd=tmp_path, env=_env(),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0
    for flag in ("--config", "--run_mode", "--load_checkpoint", "--train_dataset_dir", "--use_parallel",
                 "--output_dir", "--device_target", "--auto_trans_ckpt", "--max_steps", "--resume", "--seed"):
        assert flag in proc.stdout
    assert not os.listdir(tmp_path) or set(os.listdir(tmp_path)) <= {"output", "kernel_meta"}


def test_run_finetune_script(tmp_path):
    script = os.path.join(REPO, "scripts", "run_finetune.sh")
    base = tiny.make_base(str(tmp_path / "base.ckpt"))
    data = tiny.make_data(str(tmp_path), rows=8)
    out = str(tmp_path / "out")
    proc = subprocess.run(["bash", script, tiny.TINY_YAML, "1", "--load_checkpoint", base,
                           "--train_dataset_dir", data, "--output_dir", out, "--max_steps", "1"],
                          cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert os.path.isfile(os.path.join(out, "adapter.ckpt"))
    proc = subprocess.run(["bash", script, str(tmp_path / "missing.yaml")], cwd=tmp_path, env=_env(),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "config not found" in proc.stderr


def test_demo_base_checkpoint_fits_the_demo_config():
    """configs/tiny_llama/tiny_llama_base.ckpt (committed, made by scripts/make_tiny_base.py) loads
    into the model configs/tiny_llama/lora_cpu.yaml describes, and LoRA trains < 2% of it."""
    from mindpet_lite.models.llama import LlamaForCausalLM
    from mindpet_lite.pet import get_pet_model
    from mindpet_lite.train.run_config import RunConfig
    from mindpet_lite.train import load_base_checkpoint
    cfg = RunConfig.from_yaml(os.path.join(REPO, "configs", "tiny_llama", "lora_cpu.yaml"))
    ckpt = os.path.join(REPO, "configs", "tiny_llama", "tiny_llama_base.ckpt")
    assert os.path.getsize(ckpt) < 4 * 2 ** 20
    net = LlamaForCausalLM(cfg.llama_config)
    info = load_base_checkpoint(net, ckpt)
    assert info["loaded"] == len(list(net.get_parameters())) and not info["unexpected"]
    get_pet_model(net, cfg.pet_config)
    assert 0 < net.pet_summary["percent"] < 2.0


def test_run_finetune_script_several_machines(tmp_path):
    """The multi-node form hands LOCAL_WORKER MASTER_ADDR MASTER_PORT NODE_RANK to the launcher's
    9-argument form (dry run); a short form and a NODE_RANK beyond the nodes are refused (exit 2)."""
    script = os.path.join(REPO, "scripts", "run_finetune.sh")
    env = dict(_env(), MSRUN_LAUNCHER_DRY_RUN="1")
    proc = subprocess.run(["bash", script, tiny.TINY_YAML, "16", "8", "10.0.0.1", "9123", "1", "--max_steps", "3"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    words = proc.stdout.split()
    assert words[:9] == ["msrun", "--worker_num=16", "--local_worker_num=8", "--master_addr=10.0.0.1",
                         "--master_port=9123", "--node_rank=1", "--log_dir=output/msrun_log", "--join=True",
                         "--cluster_time_out=7200"]
    assert words[-4:] == ["--parallel_config.data_parallel", "16", "--max_steps", "3"]
    for args, message in (([tiny.TINY_YAML, "16", "8", "10.0.0.1", "--max_steps", "3"], "several machines take"),
                          ([tiny.TINY_YAML, "16", "8", "10.0.0.1", "9123", "2"], "NODE_RANK must be in [0, 2)")):
        proc = subprocess.run(["bash", script, *args], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=60)
        assert proc.returncode == 2 and message in proc.stderr, proc.stderr
