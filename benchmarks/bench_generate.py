"""Generation benchmark: KV-cache decoding vs recomputing the sequence, LoRA unmerged vs merged.

Run (from anywhere; ~2 min with the defaults):

    python benchmarks/bench_generate.py                       # 64 prompt + 128 new tokens, batch 1
    python benchmarks/bench_generate.py --batch 4 --rounds 5

One process builds the benchmark's tiny Llama (bench_model.py's "tiny": hidden 512, 4 layers, vocab
4096) three times with the same weights and the same LoRA adapter (r=8, alpha=16, q/k/v/o, B random so
the branch does real work): `cache` (use_past, LoRA unmerged), `cache merged` (use_past, after
`merge()`), `recompute` (no cache: the whole right-padded sequence through the full forward for every
token, LoRA unmerged). Greedy decoding with no eos, so every call makes exactly `--new` tokens. The
first call of each variant compiles its graphs (reported as compile time: first call minus a steady
call); then `--rounds` rounds call each variant once, in a rotated order (benchmarks/_common.py), and
a ratio is the median of per-round ratios [inter-quartile range]. A streamer times the first token
(prefill + first choice) and the decode rate over the tokens after it.
"""
import argparse
import os
import platform
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402  pylint: disable=wrong-import-position

MODEL = dict(hidden_size=512, num_layers=4, num_heads=8, intermediate_size=1376, vocab_size=4096, seq_length=256)
LORA = {"pet_type": "lora", "lora_rank": 8, "lora_alpha": 16, "lora_dropout": 0.0,
        "target_modules": ".*wq|.*wk|.*wv|.*wo"}


def cpu_model():
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    except OSError:
        return platform.processor() or "unknown"
    names = [line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")]
    return names[0] if names else "unknown"


class _Clock:
    """generate() streamer: time of the first token and of the end."""

    def __init__(self):
        self.start = time.perf_counter()
        self.first = None
        self.count = 0

    def put(self, tokens):  # pylint: disable=unused-argument
        if self.first is None:
            self.first = time.perf_counter() - self.start
        self.count += 1

    def end(self):
        self.total = time.perf_counter() - self.start  # pylint: disable=attribute-defined-outside-init


def build(seed=0):
    # pylint: disable=import-outside-toplevel
    import mindspore as ms
    import numpy as np
    from mindspore import Tensor
    from mindpet_lite.models import LlamaForCausalLM
    from mindpet_lite.pet import get_pet_model

    ms.set_seed(seed)
    net = LlamaForCausalLM(dict(MODEL))
    get_pet_model(net, LORA)
    rng = np.random.default_rng(seed)
    for name, p in net.parameters_and_names():
        if "lora_b" in name:
            p.set_data(Tensor(0.02 * rng.standard_normal(p.shape).astype(np.float32)))
    net.set_train(False)
    return net


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompt", type=int, default=64)
    parser.add_argument("--new", type=int, default=128)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    C.setup(args.threads)
    import numpy as np  # pylint: disable=import-outside-toplevel
    from mindpet_lite.models.generation import generate  # pylint: disable=import-outside-toplevel

    print(f"# bench_generate: {cpu_model()}, {os.cpu_count()} CPUs visible, {args.threads} threads, load average "
          f"{os.getloadavg()[0]:.2f}; tiny Llama {MODEL}; LoRA r=8 q/k/v/o; batch {args.batch}, "
          f"{args.prompt} prompt + {args.new} new tokens, greedy, float32, GRAPH_MODE")
    nets = {"cache": build(), "cache merged": build(), "recompute": build()}
    for _, cell in nets["cache merged"].cells_and_names():
        if hasattr(cell, "merge"):
            cell.merge()
    use_past = {"cache": True, "cache merged": True, "recompute": False}
    rng = np.random.default_rng(1)
    prompts = rng.integers(3, MODEL["vocab_size"], (args.batch, args.prompt)).tolist()

    def call(name):
        clock = _Clock()
        c0 = time.process_time()
        seqs = generate(nets[name], prompts, args.new, use_past=use_past[name], streamer=clock)
        clock.cpu = time.process_time() - c0
        assert all(len(s) == args.prompt + args.new for s in seqs)
        return clock, seqs

    first, outputs = {}, {}
    for name in nets:
        clock, outputs[name] = call(name)
        first[name] = clock.total
    same = outputs["cache"] == outputs["recompute"]
    same_merged = outputs["cache"] == outputs["cache merged"]

    runs = {name: [] for name in nets}
    names = list(nets)
    for rnd in range(args.rounds):
        k = rnd % len(names)
        for name in names[k:] + names[:k]:
            runs[name].append(call(name)[0])

    decode_steps = args.new - 1
    rows = []
    for name in names:
        totals = [c.total for c in runs[name]]
        firsts = [c.first for c in runs[name]]
        decode_rate = [args.batch * decode_steps / (c.total - c.first) for c in runs[name]]
        rows.append([name, C.med(totals), C.med(firsts) * 1000, C.med(decode_rate),
                     args.batch * args.new / C.med(totals), first[name] - C.med(totals)])
    print()
    print(C.table(["variant", "call s (median)", "first token ms", "decode tokens/s", "tokens/s whole call",
                   "compile s (first call - steady)"], rows))

    def ratio(num, den, key):
        return C.ratio_stats([key(c) for c in runs[num]], [key(c) for c in runs[den]])

    decode_time = lambda c: c.total - c.first  # noqa: E731
    cpu_time = lambda c: c.cpu  # noqa: E731
    ratios = [
        ["recompute / cache, decode time (wall)", *ratio("recompute", "cache", decode_time)],
        ["recompute / cache, whole call (CPU time)", *ratio("recompute", "cache", cpu_time)],
        ["merged / unmerged decode time (= unmerged / merged tokens/s)", *ratio("cache merged", "cache", decode_time)],
        ["merged / unmerged, whole call (CPU time)", *ratio("cache merged", "cache", cpu_time)],
    ]
    print()
    print(C.table(["ratio (median of per-round ratios)", "median", "q1", "q3"], ratios))
    print()
    print(f"same greedy tokens: cache == recompute {same}, cache == cache merged {same_merged}")


if __name__ == "__main__":
    main()
