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


def _after_train(cfg):
    """predict_after_train (with eval_dataset): a hook answering the held-out prompts with the trained
    network, printing three and the share of exact answers; else None."""
    if not cfg.predict_after_train:
        return None
    from mindpet_lite.infer import answer_held_out, check_held_out_run  # pylint: disable=import-outside-toplevel
    check_held_out_run(cfg)

    def hook(net):
        result = answer_held_out(cfg, net)
        records = result.pop("records")
        print("held-out reviews, answered by the trained model (greedy):", flush=True)
        for record in records[:3]:
            mark = "ok" if record["exact"] else "WRONG"
            print(f"  {record['prompt']}{record['output']}    [reference: {record['reference']}, {mark}]", flush=True)
        exact = sum(r["exact"] for r in records)
        print(f"  generated answers exact: {exact}/{len(records)} ({result['exact_match']:.1%}) in "
              f"{result['seconds']:.1f} s; all in {result['predictions']}", flush=True)
        return result
    return hook


def run(args, extra=None):
    """Fine-tune (or predict) as the parsed flags (and extra ``--section.key value`` pairs) say; returns
    the exit status."""
    from mindpet_lite.train import finetune  # pylint: disable=import-outside-toplevel
    try:
        cfg = load_run_config(args, extra)
        if cfg.run_mode == "predict":
            _predict(cfg)
        else:
            finetune(cfg, _after_train(cfg))
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
