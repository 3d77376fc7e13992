"""`python -m mindpet_lite.run --config RUN.yaml [flags]`: LoRA fine-tuning (or predict) with run_mindformer.py's flags.

    python -m mindpet_lite.run --config configs/tiny_llama/lora_cpu.yaml
    python -m mindpet_lite.run --config configs/tiny_llama/lora_cpu.yaml --run_mode predict \
        --predict_data "text" | FILE --load_checkpoint BASE --adapter ADAPTER
    bash scripts/msrun_launcher.sh "python -m mindpet_lite.run --config RUN.yaml --use_parallel True" 2

Flags override the YAML: ``python -m mindpet_lite.run --help`` lists them, each with the YAML key it
sets and its default (they are built from the tables of ``mindpet_lite.train.run_schema``). As in
run_mindformer.py, any other YAML key can be set with a trailing ``--section.key value`` pair
(``--lr_schedule.learning_rate 1e-3``), or with ``--options section.key=value``.

Exit status (as for ``mindpet-lite``, see ``mindpet_lite.cli``): 0 on success, 2 for a bad input
(config, flag, dataset, checkpoint: the message says which), 1 for a failure while training.
"""
import argparse
import logging
import sys

from mindpet_lite import _checks
from mindpet_lite.train.run_config import add_run_arguments, load_run_config

EXIT_STATUS_HELP = ("exit status: 0 success; 2 bad input (config, flag, dataset, checkpoint: the message says "
                    "which); 1 a failure while training")


def build_parser(prog="python -m mindpet_lite.run"):
    parser = argparse.ArgumentParser(prog=prog, description="LoRA fine-tuning from a MindFormers run YAML.",
                                     epilog=EXIT_STATUS_HELP)
    return add_run_arguments(parser)


def _predict(cfg):
    """run_mode predict: generate, write predictions.jsonl, print each prompt's output."""
    from mindpet_lite.infer import predict  # pylint: disable=import-outside-toplevel
    records, path = predict(cfg)
    for i, record in enumerate(records):
        print(f"[{i}] {record['prompt']}\n    -> {record['output']}", flush=True)
    print(f"wrote {path} ({len(records)} predictions)", flush=True)


def run(args, extra=None):
    """Fine-tune (or predict) as the parsed flags (and extra ``--section.key value`` pairs) say; returns
    the exit status."""
    from mindpet_lite.train import finetune  # pylint: disable=import-outside-toplevel
    try:
        cfg = load_run_config(args, extra)
        if cfg.run_mode == "predict":
            _predict(cfg)
        else:
            finetune(cfg)
    except Exception as err:  # pylint: disable=broad-except  # turned into the exit status
        status = _checks.exit_status(err)
        logging.getLogger("mindpet_lite.run").error("%s: %s", type(err).__name__, err,
                                                     exc_info=err if status == 1 else None)
        print(f"error: {err}", file=sys.stderr, flush=True)
        return status
    return 0


def main(argv=None):
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args, extra = build_parser().parse_known_args(argv)
    return run(args, extra)


if __name__ == "__main__":
    sys.exit(main())
