"""`mindpet-lite` command line: argparse only, each subcommand a thin call into the package."""
import argparse
import logging
import sys


# ---- finetune / data (train, data) ------------------------------------------------------------
def _add_finetune(sub):
    """`mindpet-lite finetune ...`: the same flags as `python -m mindpet_lite.run`."""


def _add_data(sub):
    """`mindpet-lite data ...`: Alpaca JSON/JSONL -> MindRecord."""


# ---- adapters (merge, export-peft, import-peft, convert-base) ----------------------------------
def _add_merge(sub):
    """`mindpet-lite merge ...` (and unmerge)."""


def _add_peft(sub):
    """`mindpet-lite export-peft ...` / `import-peft ...`."""


def _add_convert_base(sub):
    """`mindpet-lite convert-base ...`."""


def build_parser():
    parser = argparse.ArgumentParser(prog="mindpet-lite", description=__doc__)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in (_add_finetune, _add_data, _add_merge, _add_peft, _add_convert_base):
        add(sub)
    return parser


def main(argv=None):
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return args.func(args) or 0


if __name__ == "__main__":
    sys.exit(main())
