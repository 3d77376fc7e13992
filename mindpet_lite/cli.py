"""`mindpet-lite` command line: argparse only, each subcommand a thin call into the package.

Exit status (every subcommand, and ``python -m mindpet_lite.run``):
  0  success
  2  bad input: what you typed or pointed at is wrong (a bad value or key, a missing file or
     directory, an output that exists without --overwrite, an unsupported request); one line on
     stderr says which. Raised as ValueError, TypeError, KeyError, FileNotFoundError,
     IsADirectoryError, NotADirectoryError, FileExistsError or NotImplementedError.
  1  a failure while working (another OSError, RuntimeError, FloatingPointError, ...): one line on
     stderr, the traceback in the log.
Subcommands import their modules when they run, so that ``--help`` is quick.
"""
import argparse
import logging
import sys

from mindpet_lite import _checks

EXIT_STATUS_HELP = ("exit status: 0 success; 2 bad input (a bad value or key, a missing file, an output that "
                    "exists: the message says which); 1 a failure while working (I/O, runtime)")


def _command(name, work):
    """The subcommand's entry: run ``work(args)``; an exception becomes one line on stderr and the exit
    status of the module docstring (a failure while working also logs its traceback)."""
    def run(args):
        try:
            work(args)
        except Exception as err:  # pylint: disable=broad-except  # turned into the exit status
            status = _checks.exit_status(err)
            if status == 1:
                logging.getLogger("mindpet_lite.cli").error("mindpet-lite %s failed", name, exc_info=err)
            print(f"mindpet-lite {name}: error: {err}", file=sys.stderr)
            return status
        return 0
    return run


# ---- finetune / data (train, data) ------------------------------------------------------------
def _add_finetune(sub):
    """`mindpet-lite finetune ...`: the same flags as `python -m mindpet_lite.run`."""
    from mindpet_lite.train.run_config import add_run_arguments  # pylint: disable=import-outside-toplevel
    p = sub.add_parser("finetune", help="LoRA fine-tuning from a MindFormers run YAML (run_mindformer.py's flags)",
                       description="LoRA fine-tuning from a MindFormers run YAML; flags override the YAML, "
                                   "--section.key value (or --options KEY=VALUE) sets any other key. Same as "
                                   "python -m mindpet_lite.run.")
    add_run_arguments(p)

    def work(args):
        from mindpet_lite.train import finetune, load_run_config  # pylint: disable=import-outside-toplevel
        finetune(load_run_config(args, args.extra))

    p.set_defaults(func=_command("finetune", work))


def _add_data(sub):
    """`mindpet-lite data ...`: Alpaca JSON/JSONL -> MindRecord."""
    p = sub.add_parser("data", help="convert Alpaca-style JSON/JSONL to MindRecord (input_ids, labels)",
                       description="Alpaca records (instruction, input, output) -> MindRecord rows of seq_length+1 "
                                   "int32 input_ids and labels, prompt tokens masked with -100.")
    p.add_argument("--src", required=True, help="JSON list or JSONL file of {instruction, input, output}")
    p.add_argument("--dst", required=True, help="MindRecord file to write (its .db index goes beside it)")
    p.add_argument("--tokenizer", default="byte",
                   help="'byte' (built-in, no download) or the path of a SentencePiece tokenizer.model (Llama)")
    p.add_argument("--seq_length", "--seq-length", dest="seq_length", type=int, required=True,
                   help="the model's seq_length; rows hold seq_length + 1 tokens")
    p.add_argument("--template", default=None,
                   help="JSON file with 'prompt_input' and 'prompt_no_input' format strings "
                        "(default: the Alpaca prompt)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --dst")

    def work(args):
        from mindpet_lite.data import convert_alpaca  # pylint: disable=import-outside-toplevel
        template = _checks.load_mapping(args.template, "--template") if args.template else None
        stats = convert_alpaca(args.src, args.dst, args.tokenizer, args.seq_length, template=template,
                               overwrite=args.overwrite)
        print(f"wrote {stats['dst']}: {stats['written']} rows of {stats['seq_length'] + 1} tokens "
              f"({stats['skipped']} skipped, {stats['truncated']} truncated, {stats['label_tokens']} label tokens)")

    p.set_defaults(func=_command("data", work))


# ---- adapters (merge, export-peft, import-peft, convert-base) ----------------------------------
def _add_merge(sub):
    """`mindpet-lite merge ...` (and unmerge)."""
    p = sub.add_parser("merge", help="merge an adapter into a base checkpoint: W' = W + s*B*A",
                       description="Merge (or --unmerge) a LoRA adapter into a base checkpoint, in float32, "
                                   "cast back to the base dtype. Without --adapter, --base is a MindFormers "
                                   "checkpoint holding base and LoRA weights, merged into a plain base.")
    p.add_argument("--base", required=True, help="base checkpoint (.ckpt or .safetensors), or a directory of rank_<N>/ "
                   "parts with --base-strategy")
    p.add_argument("--base-strategy", default=None,
                   help="strategy file of a tensor-parallel base saved as rank_<N>/ parts: mindspore."
                        "transform_checkpoints puts the full base together first")
    p.add_argument("--adapter", help="adapter file or HF PEFT directory (omit for a MindFormers full LoRA checkpoint)")
    p.add_argument("--out", required=True, help="output checkpoint (.ckpt or .safetensors); written atomically")
    p.add_argument("--format", choices=["ckpt", "safetensors"], help="must agree with the suffix of --out")
    p.add_argument("--scaling", type=float, help="s to use instead of the adapter's alpha/r (or alpha/sqrt(r))")
    p.add_argument("--lora-alpha", type=float, help="alpha for files without metadata: s = alpha / r per pair")
    p.add_argument("--use-rslora", action="store_true", help="with --lora-alpha: s = alpha / sqrt(r)")
    p.add_argument("--layout", choices=["auto", "out_in", "in_out"], default="auto",
                   help="base weight layout: [out,in] (nn.Dense, HF) or [in,out] (transpose_b=False); auto reads shapes")
    p.add_argument("--unmerge", action="store_true", help="subtract the adapter instead (W = W' - s*B*A)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output (never one of the inputs)")

    def work(args):
        from mindpet_lite.adapters import merge  # pylint: disable=import-outside-toplevel
        if args.adapter is None:
            if args.unmerge:
                raise ValueError("--unmerge needs --adapter")
            if args.base_strategy:
                raise ValueError("--base-strategy needs --adapter (gather a full LoRA checkpoint's parts first)")
            merged = merge.merge_full_checkpoint(args.base, args.out, args.format, args.scaling,
                                                 _alpha(args.lora_alpha), args.use_rslora, args.layout,
                                                 overwrite=args.overwrite)
        else:
            merged = merge.merge_checkpoint(args.base, args.adapter, args.out, args.format, args.scaling,
                                            args.layout, args.unmerge, _alpha(args.lora_alpha), args.use_rslora,
                                            overwrite=args.overwrite, base_strategy=args.base_strategy)
        print(f"{'unmerged' if args.unmerge else 'merged'}: {args.out} ({len(merged)} tensors)")

    p.set_defaults(func=_command("merge", work))


def _add_peft(sub):
    """`mindpet-lite export-peft ...` / `import-peft ...`."""
    exp = sub.add_parser("export-peft", help="write a Hugging Face PEFT LoRA directory from an adapter",
                         description="Write adapter_config.json and adapter_model.safetensors that "
                                     "peft.PeftModel.from_pretrained loads onto a Hugging Face LlamaForCausalLM.")
    exp.add_argument("--adapter", required=True, help="adapter file (.ckpt or .safetensors)")
    exp.add_argument("--out", required=True, help="output directory")
    exp.add_argument("--base-model", default=None, help="base_model_name_or_path to record in the config")
    exp.add_argument("--lora-alpha", type=float, help="alpha, for adapters saved without metadata (an adapter "
                     "with metadata keeps its own; a different value is an error)")
    exp.add_argument("--model-config", default=None,
                     help="MindFormers mcore adapters: the model's config (HF config.json, a MindFormers run YAML or "
                          "model_config) telling how linear_qkv / linear_fc1 fuse q/k/v and gate/up; default: the "
                          "adapter's metadata")
    exp.add_argument("--overwrite", action="store_true", help="replace an existing output (never one of the inputs)")
    imp = sub.add_parser("import-peft", help="convert a Hugging Face PEFT LoRA / PREFIX_TUNING directory to an "
                                             "adapter file")
    imp.add_argument("--peft-dir", required=True, help="directory with adapter_config.json and adapter_model.safetensors")
    imp.add_argument("--out", required=True, help="adapter file to write (.ckpt or .safetensors)")
    imp.add_argument("--format", choices=["ckpt", "safetensors"], help="must agree with the suffix of --out")
    imp.add_argument("--target", choices=["llama", "mcore"], default="llama",
                     help="names of the adapter written: the built-in Llama's (default) or a MindFormers mcore "
                          "model's (q/k/v and gate/up fused; needs --model-config)")
    imp.add_argument("--model-config", default=None,
                     help="with --target mcore: the model's config (HF config.json, a MindFormers run YAML or model_config)")
    imp.add_argument("--overwrite", action="store_true", help="replace an existing output (never one of the inputs)")

    def work_export(args):
        from mindpet_lite.adapters import peft  # pylint: disable=import-outside-toplevel
        model_config = _checks.load_mapping(args.model_config, "--model-config") if args.model_config else None
        config = peft.export_peft(args.adapter, args.out, args.base_model, lora_alpha=_alpha(args.lora_alpha),
                                  overwrite=args.overwrite, model_config=model_config)
        if config["peft_type"] == "PREFIX_TUNING":
            print(f"exported: {args.out} (PREFIX_TUNING, {config['num_virtual_tokens']} virtual tokens, "
                  f"prefix_projection={config['prefix_projection']})")
            return
        print(f"exported: {args.out} (r={config['r']}, lora_alpha={config['lora_alpha']}, "
              f"target_modules={config['target_modules']})")

    def work_import(args):
        from mindpet_lite.adapters import peft  # pylint: disable=import-outside-toplevel
        model_config = _checks.load_mapping(args.model_config, "--model-config") if args.model_config else None
        tensors, meta = peft.import_peft(args.peft_dir, args.out, args.format, overwrite=args.overwrite,
                                         target=args.target, model_config=model_config)
        cfg = meta["pet_config"]
        if cfg["pet_type"] != "lora":
            print(f"imported: {args.out} ({cfg['pet_type']}, pre_seq_len {cfg['pre_seq_len']})")
            return
        print(f"imported: {args.out} ({len(tensors)} tensors, rank {cfg['lora_rank']}, "
              f"alpha {cfg['lora_alpha']}, target_modules {cfg['target_modules']})")

    exp.set_defaults(func=_command("export-peft", work_export))
    imp.set_defaults(func=_command("import-peft", work_import))


def _add_gather(sub):
    """`mindpet-lite gather ...`: per-rank adapter parts -> one adapter file."""
    p = sub.add_parser("gather", help="combine the per-rank adapter files of a parallel run into one adapter",
                       description="Combine rank_<N>/ adapter saves into one file: replicas checked equal, "
                                   "tensor-parallel slices put together by mindspore.merge_sliced_parameter with "
                                   "the run's strategy file or Megatron's split of the projections.")
    p.add_argument("--src", required=True, help="directory holding rank_<N>/ folders (the newest matching file of each)")
    p.add_argument("--out", required=True, help="adapter file to write (.ckpt or .safetensors)")
    p.add_argument("--format", choices=["ckpt", "safetensors"], help="must agree with the suffix of --out")
    p.add_argument("--pattern", default="*", help="file name pattern inside each rank folder (default: any)")
    p.add_argument("--tensor-parallel", type=int, default=None,
                   help="the run's tensor_model_parallel_size: column layers hold rows of B, row layers columns of A")
    p.add_argument("--strategy-file", default=None, help="the run's strategy file (strategy_ckpt_save_file)")
    p.add_argument("--atol", type=float, default=0.0, help="largest difference between replicas (default 0)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output (never one of the inputs)")

    def work(args):
        from mindpet_lite.adapters import gather_sharded_adapter  # pylint: disable=import-outside-toplevel
        _checks.check_number("--atol", args.atol, minimum=0)
        meta = gather_sharded_adapter(args.src, args.out, args.format, args.pattern, args.atol, args.overwrite,
                                      tensor_parallel=args.tensor_parallel, strategy_file=args.strategy_file)
        print(f"gathered: {args.out}" + (f" ({meta['gathered_from']['ranks']} ranks)" if "gathered_from" in meta else ""))

    p.set_defaults(func=_command("gather", work))


def _add_convert_base(sub):
    """`mindpet-lite convert-base ...`."""
    p = sub.add_parser("convert-base", help="convert a Llama base checkpoint between Hugging Face and the built-in Llama",
                       description="--from hf: a HF Llama safetensors file or model directory (sharded with an "
                                   "index json or not) -> a .ckpt / .safetensors with built-in names. "
                                   "--from mindspore: a built-in Llama checkpoint -> a HF model directory.")
    p.add_argument("--from", dest="source", required=True, choices=["hf", "mindspore"], help="the format of --src")
    p.add_argument("--src", required=True, help="source file or directory")
    p.add_argument("--out", required=True, help="output file (from hf) or directory (from mindspore)")
    p.add_argument("--format", choices=["ckpt", "safetensors"], help="from hf: must agree with the suffix of --out")
    p.add_argument("--model-config", help="from mindspore: YAML/JSON model_config (or run YAML) to write config.json")
    p.add_argument("--max-shard-size", type=int, help="from mindspore: bytes per safetensors shard")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output (never one of the inputs)")

    def work(args):
        from mindpet_lite.adapters import convert  # pylint: disable=import-outside-toplevel
        if args.source == "hf":
            tensors = convert.hf_to_mindspore(args.src, args.out, args.format, overwrite=args.overwrite)
        else:
            config = None
            if args.model_config:
                from mindpet_lite.models import LlamaConfig  # pylint: disable=import-outside-toplevel
                data = _checks.load_mapping(args.model_config, "--model-config")
                if isinstance(data.get("model"), dict):
                    data = data["model"].get("model_config", data)
                config = LlamaConfig.from_dict(data)
            tensors = convert.mindspore_to_hf(args.src, args.out, config, args.max_shard_size,
                                              overwrite=args.overwrite)
        print(f"converted: {args.src} -> {args.out} ({len(tensors)} tensors)")

    p.set_defaults(func=_command("convert-base", work))


# ---- generate ----------------------------------------------------------------------------------
def _add_generate(sub):
    """`mindpet-lite generate --config X --adapter A [--adapter NAME=B ...] [--adapter-name NAME] --prompt "..."`."""
    p = sub.add_parser("generate", help="stream a generation from the model of a run YAML (and an adapter)",
                       description="Generate from one prompt with the run YAML's model, its base checkpoint and an "
                                   "adapter, printing the tokens as they come, then prompt and generation tokens/s. "
                                   "Sampling settings come from model.model_config (do_sample, top_k, top_p, "
                                   "temperature, repetition_penalty, max_decode_length, use_past).")
    p.add_argument("--config", required=True, help="run YAML (MindFormers format)")
    p.add_argument("--prompt", required=True, help="the prompt text")
    p.add_argument("--adapter", action="append", default=None, metavar="[NAME=]PATH",
                   help="adapter file or HF PEFT directory; repeat with NAME=PATH for named adapters loaded side by "
                        "side (a bare PATH is 'default'; omit: the base model alone)")
    p.add_argument("--adapter_name", "--adapter-name", dest="adapter_name", default=None,
                   help="the adapter the prompt runs: a NAME given to --adapter, 'default', or '__base__' for the "
                        "base model (default: 'default', else the first NAME=PATH)")
    p.add_argument("--load_checkpoint", "--load-checkpoint", dest="load_checkpoint", default=None,
                   help="base checkpoint (default: the YAML's load_checkpoint)")
    p.add_argument("--max_new_tokens", "--max-new-tokens", dest="max_new_tokens", type=int, default=None,
                   help="at most this many new tokens (default: up to max_decode_length / the model's length)")
    p.add_argument("--use_past", "--use-past", dest="use_past", type=_checks.bool_arg, default=True,
                   metavar="{True,False}", help="decode with the KV cache (default True)")

    def work(args):
        from mindpet_lite.infer import adapter_rows, stream_generate  # pylint: disable=import-outside-toplevel
        from mindpet_lite.train import RunConfig  # pylint: disable=import-outside-toplevel
        overrides = {"model.model_config.use_past": args.use_past, "run_mode": "predict"}
        for key in ("load_checkpoint", "adapter"):
            if getattr(args, key):
                overrides[key] = getattr(args, key)
        cfg = RunConfig.from_yaml(args.config, overrides)
        adapter_rows(cfg.adapters, [args.adapter_name], "--adapter-name")  # an unknown --adapter-name: refused before any work
        sys.stdout.write(args.prompt)
        stats = stream_generate(cfg, args.prompt, sys.stdout, args.max_new_tokens, args.adapter_name)
        print(f"prompt: {stats['prompt_tokens']} tokens, {stats['prompt_tokens_per_s']:.1f} tokens/s "
              f"(first token after {stats['first_token_seconds']:.2f} s); generation: {stats['new_tokens']} tokens, "
              f"{stats['generation_tokens_per_s']:.1f} tokens/s; compile (warm-up call) {stats['compile_seconds']:.2f} s")

    p.set_defaults(func=_command("generate", work))


def _alpha(value):
    """A --lora-alpha read as float, as int when whole (16.0 -> 16, as the YAML would have it)."""
    return int(value) if value is not None and float(value).is_integer() else value


def build_parser():
    parser = argparse.ArgumentParser(prog="mindpet-lite", epilog=EXIT_STATUS_HELP,
                                     description="LoRA fine-tuning with MindFormers run YAMLs, and the tools "
                                                 "around it: data conversion, merge, Hugging Face PEFT export "
                                                 "and import, base checkpoint conversion.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in (_add_finetune, _add_data, _add_merge, _add_peft, _add_gather, _add_convert_base, _add_generate):
        add(sub)
    for subparser in sub.choices.values():
        subparser.epilog = EXIT_STATUS_HELP
    return parser


def main(argv=None):
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    if extra and args.command != "finetune":  # only finetune takes run_mindformer.py's --section.key pairs
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.extra = extra
    return args.func(args) or 0


if __name__ == "__main__":
    sys.exit(main())
