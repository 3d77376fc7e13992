"""`python -m mindpet_lite.run --config RUN.yaml [flags]`: LoRA fine-tuning with run_mindformer.py's flags.

    python -m mindpet_lite.run --config configs/tiny_llama/lora_cpu.yaml
    bash scripts/msrun_launcher.sh "python -m mindpet_lite.run --config RUN.yaml --use_parallel True" 2

Flags override the YAML (see ``mindpet_lite.train.run_config.add_run_arguments``). Supported:
--config, --run_mode finetune|train, --load_checkpoint, --train_dataset_dir, --eval_dataset_dir,
--use_parallel, --output_dir, --device_target, --device_id, --mode, --auto_trans_ckpt (accepted: this
backend trains data parallel, where every worker holds the whole model and there is nothing to
reshard), --resume [PATH] (alias --resume_training), --seed, --max_steps, --epochs, --batch_size,
--gradient_accumulation_steps, --sink_mode (accepted; steps are fed from Python). As in
run_mindformer.py, any other YAML key can be set with a trailing ``--section.key value`` pair
(``--lr_schedule.learning_rate 1e-3``).

Exit status: 0 on success, 2 for a bad input (config, dataset, checkpoint: the message says which),
1 for a failure during training.
"""
import argparse
import logging
import sys

from mindpet_lite.train.run_config import add_run_arguments, load_run_config


def build_parser(prog="python -m mindpet_lite.run"):
    parser = argparse.ArgumentParser(prog=prog, description="LoRA fine-tuning from a MindFormers run YAML.")
    return add_run_arguments(parser)


def run(args, extra=None):
    """Fine-tune as the parsed flags (and extra ``--section.key value`` pairs) say; returns the exit status."""
    from mindpet_lite.train import finetune  # pylint: disable=import-outside-toplevel
    try:
        config = load_run_config(args, extra)
        finetune(config)
    except (ValueError, TypeError, KeyError, FileNotFoundError, FileExistsError, NotImplementedError) as err:
        logging.getLogger("mindpet_lite.run").error("%s: %s", type(err).__name__, err)
        print(f"error: {err}", file=sys.stderr, flush=True)
        return 2
    return 0


def main(argv=None):
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args, extra = build_parser().parse_known_args(argv)
    return run(args, extra)


if __name__ == "__main__":
    sys.exit(main())
