"""Build the CPU demo: a synthetic corpus, a small pre-trained base Llama, and a task it has not seen.

    python scripts/make_tiny_base.py --data_only          # the demo data only (seconds)
    python scripts/make_tiny_base.py --export configs/tiny_llama/tiny_llama_base.ckpt   # + the base

Everything is generated here, deterministically (seed 0), for the built-in byte tokenizer:

* pre-training corpus (12,000 rows, plain text, every token trained on): short two-clause reviews,
  ``"the soup was tasty, but the staff was rude."``, from 20 nouns, 14 positive and 14 negative
  adjectives and 5 sentence patterns, sometimes with a neutral filler sentence. The words, their
  spelling and the grammar are learnt here; nothing says which adjectives are good or bad.
* the LoRA task, never seen in pre-training: label a review, ``"sentiment: <review> =positive"``
  (both adjectives positive), ``negative`` (both negative) or ``mixed``. 3,000 training and 240
  held-out reviews (distinct texts). The labels, the ``sentiment:`` prompt and the answer words do
  not occur in the pre-training corpus, so the base scores the held-out answers badly (loss ~8.6),
  and LoRA has to learn the polarity of each adjective and the answer format.

The base model's shape is read from the run YAML (``model.model_config``), so the checkpoint always fits
the config that fine-tunes it. Pre-training is full-parameter (``nn.TrainOneStepCell``, AdamWeightDecay,
warmup + cosine lr). Outputs (``--out``, default ``output/tiny_llama``)::

    data/{pretrain,task_train,task_eval}.json + .mindrecord   (Alpaca-style JSON and MindRecord)
    base/base.ckpt, base/base.json                            (the base, float32; how it was made)

``--export PATH`` also writes the base with float16 values (half the size; loading casts back): that
is how the committed ``configs/tiny_llama/tiny_llama_base.ckpt`` was made. Outputs made with the same
settings are reused (``--force`` rebuilds). The JSON files go through the same converter as
``mindpet-lite data --template configs/tiny_llama/template.json --tokenizer byte --seq_length 80``.
"""
import argparse
import json
import logging
import math
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

logger = logging.getLogger("make_tiny_base")

VERSION = 2  # bump when the generator changes: cached outputs are rebuilt
TEMPLATE = {"prompt_input": "{instruction}: {input} =", "prompt_no_input": "{instruction}"}
NOUNS = ("food", "staff", "room", "movie", "plot", "music", "service", "price", "view", "bed", "coffee",
         "ending", "soup", "hotel", "band", "actors", "book", "story", "waiter", "garden")
POSITIVE = ("great", "lovely", "superb", "tasty", "friendly", "clean", "charming", "excellent", "fresh",
            "cozy", "brilliant", "warm", "pleasant", "fine")
NEGATIVE = ("awful", "rude", "dirty", "bland", "noisy", "boring", "stale", "cold", "poor", "dull",
            "terrible", "slow", "bad", "sad")
PATTERNS = ("the {n1} was {a1} and the {n2} was {a2}.", "the {n1} was {a1}, but the {n2} was {a2}.",
            "{a1} {n1}, {a2} {n2}.", "we found the {n1} {a1} and the {n2} {a2}.",
            "the {n1} is {a1}; the {n2} is {a2}.")
FILLER = ("we came back on a {day}.", "we stayed {k} nights.", "it was our {k}th visit.",
          "we went there on a {day} with friends.", "the {n1} and the {n2} were there.")
DAYS = ("monday", "tuesday", "friday", "sunday", "rainy day", "weekend")


def _review(rng, label=None):
    """(text, label) of a two-clause review; label in positive / negative / mixed."""
    label = label or ("positive", "negative", "mixed")[rng.integers(3)]
    n1, n2 = rng.choice(NOUNS, 2, replace=False)
    pos, neg = list(POSITIVE), list(NEGATIVE)
    if label == "positive":
        a1, a2 = rng.choice(pos, 2, replace=False)
    elif label == "negative":
        a1, a2 = rng.choice(neg, 2, replace=False)
    else:
        a1, a2 = rng.choice(pos), rng.choice(neg)
        if rng.integers(2):
            a1, a2 = a2, a1
    text = PATTERNS[rng.integers(len(PATTERNS))].format(n1=n1, n2=n2, a1=a1, a2=a2)
    return text, label


def _filler(rng):
    n1, n2 = rng.choice(NOUNS, 2, replace=False)
    return FILLER[rng.integers(len(FILLER))].format(day=DAYS[rng.integers(len(DAYS))], k=rng.integers(2, 9),
                                                     n1=n1, n2=n2)


def make_records(seed=0, n_pretrain=12000, n_train=3000, n_eval=240):
    """(pretrain, finetune train, finetune eval) lists of {instruction, input, output}.

    Pre-training rows are plain text (the whole row is trained on); the task rows ask for the label of
    a review: ``sentiment: <review> =positive`` (or negative / mixed). The held-out reviews are
    distinct texts from the training reviews.
    """
    rng = np.random.default_rng(seed)
    pretrain = []
    for _ in range(n_pretrain):
        parts = [_review(rng)[0]]
        if rng.integers(2):
            parts.insert(rng.integers(2), _filler(rng))
        pretrain.append({"instruction": "", "input": "", "output": " ".join(parts)})
    seen, train, held_out = set(), [], []
    while len(held_out) < n_eval:
        text, label = _review(rng)
        if text not in seen:
            seen.add(text)
            held_out.append({"instruction": "sentiment", "input": text, "output": label})
    while len(train) < n_train:
        text, label = _review(rng)
        if text not in seen:
            seen.add(text)
            train.append({"instruction": "sentiment", "input": text, "output": label})
    return pretrain, train, held_out


def _read_yaml(path):
    import yaml  # pylint: disable=import-outside-toplevel
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f)


def build_data(out_dir, seq_length, force=False, names=("pretrain", "task_train", "task_eval")):
    """Write the JSON files and MindRecord files of `names`; returns {name: mindrecord path}."""
    from mindpet_lite.data import convert_alpaca  # pylint: disable=import-outside-toplevel

    data_dir = os.path.join(out_dir, "data")
    os.makedirs(data_dir, exist_ok=True)
    stamp_path = os.path.join(data_dir, "stamp.json")
    stamp = {"version": VERSION, "seq_length": seq_length, "template": TEMPLATE}
    paths = {n: os.path.join(data_dir, f"{n}.mindrecord") for n in names}
    if not force and os.path.isfile(stamp_path) and all(os.path.isfile(p) for p in paths.values()):
        with open(stamp_path, encoding="utf-8") as f:
            if json.load(f) == stamp:
                logger.info("data: reusing %s", data_dir)
                return paths
    for name, records in zip(("pretrain", "task_train", "task_eval"), make_records()):
        if name not in names:
            continue
        src = os.path.join(data_dir, f"{name}.json")
        with open(src, "w", encoding="utf-8") as f:
            json.dump(records, f, indent=0)
        stats = convert_alpaca(src, paths[name], "byte", seq_length, template=TEMPLATE, overwrite=True)
        logger.info("data: %s: %d rows, %d skipped, %d truncated", paths[name], stats["written"],
                    stats["skipped"], stats["truncated"])
    with open(stamp_path, "w", encoding="utf-8") as f:
        json.dump(stamp, f)
    return paths


def pretrain(model_config, data_path, out_path, steps, batch_size, lr, seed=0):
    """Full-parameter pre-training of the built-in Llama on ``data_path``; saves ``out_path``."""
    import mindspore as ms  # pylint: disable=import-outside-toplevel
    from mindspore import Tensor, nn  # pylint: disable=import-outside-toplevel
    from mindpet_lite.data import create_dataset  # pylint: disable=import-outside-toplevel
    from mindpet_lite.models.llama import LlamaConfig, LlamaForCausalLM  # pylint: disable=import-outside-toplevel

    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_seed(seed)
    config = LlamaConfig.from_dict(model_config)
    net = LlamaForCausalLM(config)
    data = create_dataset(data_path, batch_size, seq_length=config.seq_length, shuffle=True, seed=seed,
                          repeat=max(1, math.ceil(steps * batch_size / 12000) + 1))
    warmup = max(1, steps // 20)
    table = np.array([lr * t / warmup if t <= warmup else
                      lr * 0.1 + lr * 0.9 * 0.5 * (1 + math.cos(math.pi * (t - 1 - warmup) / (steps - warmup)))
                      for t in range(1, steps + 1)], np.float32)
    opt = nn.AdamWeightDecay(net.trainable_params(), learning_rate=Tensor(table), weight_decay=0.01)
    step_cell = nn.TrainOneStepCell(net, opt)
    step_cell.set_train(True)
    start, losses = time.perf_counter(), []
    for step, (input_ids, labels) in enumerate(data.create_tuple_iterator(num_epochs=1), start=1):
        loss = float(step_cell(input_ids, labels).asnumpy())
        losses.append(loss)
        if step % 50 == 0 or step == steps:
            print(f"pre-train step {step}/{steps} | loss {np.mean(losses[-50:]):.4f} | "
                  f"{time.perf_counter() - start:.0f}s", flush=True)
        if step >= steps:
            break
    os.makedirs(os.path.dirname(out_path), exist_ok=True)
    tmp = out_path + ".tmp.ckpt"
    ms.save_checkpoint(net, tmp)
    os.chmod(tmp, 0o644)  # mindspore leaves checkpoints read-only
    os.replace(tmp, out_path)
    return {"steps": steps, "final_loss": float(np.mean(losses[-50:])), "seconds": round(time.perf_counter() - start, 1)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=os.path.join(ROOT, "configs", "tiny_llama", "lora_cpu.yaml"),
                        help="run YAML whose model.model_config gives the base model's shape")
    parser.add_argument("--out", default=os.path.join("output", "tiny_llama"), help="output folder")
    parser.add_argument("--steps", type=int, default=2000, help="pre-training steps")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-3, help="peak learning rate")
    parser.add_argument("--force", action="store_true", help="rebuild even if cached outputs exist")
    parser.add_argument("--data_only", action="store_true", help="build the data, not the base model")
    parser.add_argument("--export", default=None, help="also write the base as a float16 checkpoint here "
                        "(how configs/tiny_llama/tiny_llama_base.ckpt was made)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    model_config = {k: v for k, v in _read_yaml(args.config)["model"]["model_config"].items() if k != "pet_config"}
    names = ("task_train", "task_eval") if args.data_only else ("pretrain", "task_train", "task_eval")
    paths = build_data(args.out, model_config["seq_length"], args.force, names)
    if args.data_only:
        print(f"data: {os.path.join(args.out, 'data')}", flush=True)
        return 0
    ckpt = os.path.join(args.out, "base", "base.ckpt")
    stamp_path = os.path.join(args.out, "base", "base.json")
    stamp = {"version": VERSION, "model_config": model_config, "steps": args.steps, "batch_size": args.batch_size,
             "lr": args.lr}
    if not args.force and os.path.isfile(ckpt) and os.path.isfile(stamp_path):
        with open(stamp_path, encoding="utf-8") as f:
            saved = json.load(f)
        if {k: saved.get(k) for k in stamp} == stamp:
            print(f"base model: reusing {ckpt}", flush=True)
            return 0
    print(f"base model: pre-training {args.steps} steps on {paths['pretrain']} (first run only)", flush=True)
    result = pretrain(model_config, paths["pretrain"], ckpt, args.steps, args.batch_size, args.lr)
    with open(stamp_path, "w", encoding="utf-8") as f:
        json.dump({**stamp, **result}, f, indent=2)
    print(f"base model: {ckpt} (loss {result['final_loss']:.4f}, {result['seconds']}s)", flush=True)
    if args.export:
        export_fp16(ckpt, args.export)
        print(f"base model: float16 copy {args.export}", flush=True)
    return 0


def export_fp16(src, dst):
    """Write the checkpoint ``src`` with float16 values (half the size; loading casts them back)."""
    import mindspore as ms  # pylint: disable=import-outside-toplevel
    weights = ms.load_checkpoint(src)
    items = [{"name": n, "data": ms.Tensor(p.asnumpy().astype(np.float16))} for n, p in weights.items()]
    tmp = dst + ".tmp.ckpt"
    ms.save_checkpoint(items, tmp)
    os.chmod(tmp, 0o644)
    os.replace(tmp, dst)


if __name__ == "__main__":
    sys.exit(main())
