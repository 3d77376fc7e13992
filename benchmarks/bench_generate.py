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

``--many-adapters`` measures several adapters in one model instead (the "many adapters" issue): four
adapters (r=8, alpha=16, q/k/v/o, each its own random A and B) held by one network; `mixed`: one call of
``--batch`` rows (default 8 here), the rows spread over the 4 adapters in turn (``adapter_names=``);
`by adapter`: the same rows run adapter by adapter, each group on a network holding only that adapter
(4 calls, no recompilation, the best a single-adapter model can do); `one adapter, all rows`: the 8
rows on the network holding only "b" (what mixing costs over one adapter); `one among 4` (the multi-adapter
network with adapter "b" active, no mixing) against `alone` (a network holding only "b") at batch 1;
and the bytes each extra adapter adds to the network (its parameters: the network's parameter bytes
after adding it minus before).

With torch, transformers and peft installed (``--no-torch`` leaves it out) a fourth variant, `torch`,
runs in the same rounds: the same weights converted to Hugging Face Llama (``mindspore_to_hf``) with the
adapter exported to PEFT (``export_peft``, unmerged), transformers' ``generate`` with its KV cache, greedy,
the same prompts and token count, ``--threads`` torch threads; its first token and decode rate are timed
by the same kind of streamer (transformers calls ``put`` with the prompt first, then each new token).
"""
import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402  pylint: disable=wrong-import-position

MODEL = dict(hidden_size=512, num_layers=4, num_heads=8, intermediate_size=1376, vocab_size=4096, seq_length=256)
LORA = {"pet_type": "lora", "lora_rank": 8, "lora_alpha": 16, "lora_dropout": 0.0,
        "target_modules": ".*wq|.*wk|.*wv|.*wo"}


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


class _TorchClock(_Clock):
    """A transformers streamer: its first put() is the prompt, not a new token."""

    def __init__(self):
        super().__init__()
        self.prompt_seen = False

    def put(self, tokens):
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        super().put(tokens)


def torch_variant(net, threads, folder):
    """(call(prompts, new) -> clock, sequences) running transformers + PEFT generate on ``net``'s weights."""
    # pylint: disable=import-outside-toplevel
    import torch
    import transformers
    import peft
    from mindpet_lite.adapters import export_peft, mindspore_to_hf, save_adapter

    torch.set_num_threads(threads)
    adapter = os.path.join(folder, "adapter.safetensors")
    save_adapter(net, adapter)
    export_peft(adapter, os.path.join(folder, "peft"))
    base = {k: p.asnumpy() for k, p in net.parameters_and_names() if "mindpet_delta_lora" not in k}
    mindspore_to_hf(base, os.path.join(folder, "hf"), config=net.config)
    hf = transformers.LlamaForCausalLM.from_pretrained(os.path.join(folder, "hf"), dtype=torch.float32)
    hf.generation_config.eos_token_id = None
    model = peft.PeftModel.from_pretrained(hf, os.path.join(folder, "peft")).eval()

    def call(prompts, new):
        clock = _TorchClock()
        c0 = time.process_time()
        ids = torch.tensor(prompts, dtype=torch.long)
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new,
                                 min_new_tokens=new, do_sample=False, pad_token_id=0, streamer=clock)
        clock.cpu = time.process_time() - c0
        return clock, out.tolist()
    return call


ADAPTER_NAMES = ("default", "b", "c", "d")


def many_adapters_nets():
    """(multi, {name: single}): one network holding 4 adapters, and one network per adapter holding
    only it (the same base weights and factors)."""
    # pylint: disable=import-outside-toplevel
    import numpy as np
    from mindspore import Tensor
    from mindpet_lite.graph.freeze import lora_cells

    multi = build()
    rng = np.random.default_rng(7)
    before = sum(p.size * p.itemsize for _, p in multi.parameters_and_names())
    added = []
    for name in ADAPTER_NAMES[1:]:
        for cell in lora_cells(multi).values():
            b_init = Tensor(0.02 * rng.standard_normal((cell.out_channels, 8)).astype(np.float32))
            cell.add_adapter(name, 8, 16, lora_b_init=b_init)
        after = sum(p.size * p.itemsize for _, p in multi.parameters_and_names())
        added.append(after - before)
        before = after
    singles = {}
    for name in ADAPTER_NAMES:
        net = build()
        cells = lora_cells(net)
        for path, cell in lora_cells(multi).items():
            for leaf, param in cell.named_adapter_parameters(name).items():
                getattr(cells[path], leaf).set_data(Tensor(param.asnumpy()))
        singles[name] = net
    return multi, singles, added


def decode_steps(args, among, alone, reps=40, inner=10):
    """One decode step (batch 1) of each network, called back to back in interleaved rounds: the
    tokens/s ratio among / alone as wall-time and CPU-time medians of per-round ratios, "m [q1, q3]"."""
    # pylint: disable=import-outside-toplevel
    import mindspore as ms
    import numpy as np
    from mindspore import Tensor
    from mindpet_lite.models.generation import graph_cells

    def step(net):
        decode = graph_cells(net)[1]
        caches = ms.mutable(net.new_cache(1, args.prompt + args.new))
        ids, pos = Tensor(np.ones((1, 1), np.int32)), Tensor(np.array([args.prompt], np.int32))
        return lambda: decode(ids, pos, caches)[0].asnumpy()

    wall, cpu = C.interleaved({"among": step(among), "alone": step(alone)}, reps=reps, warmup=3, inner=inner)
    text = lambda t: "{:.3g} [{:.3g}, {:.3g}]".format(*C.ratio_stats(t["alone"], t["among"]))  # noqa: E731
    return text(wall), text(cpu)


def many_adapters(args):
    """The --many-adapters section (module docstring)."""
    # pylint: disable=import-outside-toplevel
    import numpy as np
    from mindpet_lite.graph.adapters import adapter_params, set_adapter
    from mindpet_lite.models.generation import generate

    batch = args.batch if args.batch > 1 else 8
    print(f"# bench_generate --many-adapters: {cpu_model()}, {os.cpu_count()} CPUs visible, {args.threads} threads, "
          f"load average {os.getloadavg()[0]:.2f}; tiny Llama {MODEL}; 4 adapters r=8 q/k/v/o; mixed batch {batch}; "
          f"{args.prompt} prompt + {args.new} new tokens, greedy, float32, GRAPH_MODE")
    multi, singles, added = many_adapters_nets()
    set_adapter(multi, "b")  # the active adapter of `one among 4` (the mixed calls override it per row)
    rng = np.random.default_rng(1)
    prompts = rng.integers(3, MODEL["vocab_size"], (batch, args.prompt)).tolist()
    names = [ADAPTER_NAMES[i % 4] for i in range(batch)]

    def timed(net, rows, **kw):
        clock = _Clock()
        seqs = generate(net, rows, args.new, use_past=True, streamer=clock, **kw)
        return clock, seqs

    def mixed():
        return timed(multi, prompts, adapter_names=names)

    def by_adapter():
        total, seqs = 0.0, [None] * batch
        for name in ADAPTER_NAMES:
            idx = [i for i, n in enumerate(names) if n == name]
            clock, out = timed(singles[name], [prompts[i] for i in idx])
            total += clock.total
            for i, seq in zip(idx, out):
                seqs[i] = seq
        clock = _Clock()
        clock.total, clock.first = total, 0.0
        return clock, seqs

    variants = {"mixed": mixed, "by adapter": by_adapter, "one adapter, all rows": lambda: timed(singles["b"], prompts),
                "one among 4": lambda: timed(multi, prompts[:1]), "alone": lambda: timed(singles["b"], prompts[:1])}
    outputs = {name: fn()[1] for name, fn in variants.items()}  # first calls compile
    runs = {name: [] for name in variants}
    order = list(variants)
    for rnd in range(args.rounds):
        k = rnd % len(order)
        for name in order[k:] + order[:k]:
            runs[name].append(variants[name]()[0])
    decode_rate = lambda c: (args.new - 1) / (c.total - c.first)  # noqa: E731  (batch 1 variants)
    rows = [[name, C.med([c.total for c in runs[name]]),
             (1 if name in ("one among 4", "alone") else batch) * args.new / C.med([c.total for c in runs[name]]),
             C.med([decode_rate(c) for c in runs[name]]) if name in ("one among 4", "alone") else "-"]
            for name in order]
    print()
    print(C.table(["variant", "call s (median)", "tokens/s whole call", "decode tokens/s"], rows))
    total = lambda c: c.total  # noqa: E731
    ratios = [["by adapter / mixed call time (= mixed throughput gain)",
               *C.ratio_stats([total(c) for c in runs["by adapter"]], [total(c) for c in runs["mixed"]])],
              ["mixed / one adapter on all rows, call time (the cost of mixing)",
               *C.ratio_stats([total(c) for c in runs["mixed"]], [total(c) for c in runs["one adapter, all rows"]])],
              ["one among 4 / alone decode tokens/s",
               *C.ratio_stats([decode_rate(c) for c in runs["one among 4"]], [decode_rate(c) for c in runs["alone"]])]]
    print()
    print(C.table(["ratio (median of per-round ratios)", "median", "q1", "q3"], ratios))
    print()
    print(C.table(["decode step only, batch 1, 40 rounds x 10 steps", "wall median [q1, q3]", "CPU median [q1, q3]"],
                  [["one among 4 / alone tokens/s", *decode_steps(args, multi, singles["b"])]]))
    per = {name: sum(p.size * p.itemsize for p in adapter_params(multi, name).values()) for name in ADAPTER_NAMES[1:]}
    print()
    print(f"bytes per extra adapter: network parameter bytes added {added}, the adapter's own parameter bytes "
          f"{list(per.values())} ({sum(p.size for p in adapter_params(multi, 'b').values())} float32 values)")
    print(f"same greedy tokens: mixed == by adapter {outputs['mixed'] == outputs['by adapter']}, "
          f"one among 4 == alone {outputs['one among 4'] == outputs['alone']}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompt", type=int, default=64)
    parser.add_argument("--new", type=int, default=128)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-torch", dest="torch", action="store_false",
                        help="leave out the transformers + PEFT generate comparison")
    parser.add_argument("--many-adapters", action="store_true",
                        help="measure 4 adapters in one model instead: a mixed batch (--batch, default 8) vs the "
                             "same rows adapter by adapter, one adapter among 4 vs alone, bytes per extra adapter")
    args = parser.parse_args()
    C.setup(args.threads)
    if args.many_adapters:
        many_adapters(args)
        return
    import numpy as np  # pylint: disable=import-outside-toplevel
    from mindpet_lite.models.generation import generate  # pylint: disable=import-outside-toplevel

    print(f"# bench_generate: {C.cpu_model()}, {os.cpu_count()} CPUs visible, {args.threads} threads, load average "
          f"{os.getloadavg()[0]:.2f}; tiny Llama {MODEL}; LoRA r=8 q/k/v/o; batch {args.batch}, "
          f"{args.prompt} prompt + {args.new} new tokens, greedy, float32, GRAPH_MODE")
    nets = {"cache": build(), "cache merged": build(), "recompute": build()}
    for _, cell in nets["cache merged"].cells_and_names():
        if hasattr(cell, "merge"):
            cell.merge()
    use_past = {"cache": True, "cache merged": True, "recompute": False}
    rng = np.random.default_rng(1)
    prompts = rng.integers(3, MODEL["vocab_size"], (args.batch, args.prompt)).tolist()

    if args.torch:
        try:
            folder = tempfile.mkdtemp(prefix="bench_generate_")
            nets["torch"] = torch_variant(nets["cache"], args.threads, folder)
        except ImportError as err:
            print(f"# no torch comparison: {err}")

    def call(name):
        if name == "torch":
            clock, seqs = nets["torch"](prompts, args.new)
            assert all(len(s) == args.prompt + args.new for s in seqs)
            return clock, seqs
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
    same_torch = outputs.get("torch") == outputs["cache"]

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
    if "torch" in nets:
        first_token = lambda c: c.first  # noqa: E731
        ratios += [
            ["torch / cache decode time (= mindpet_lite / torch decode tokens/s)", *ratio("torch", "cache", decode_time)],
            ["torch / cache first token (= mindpet_lite / torch prefill tokens/s)",
             *ratio("torch", "cache", first_token)],
            ["torch / cache, whole call (CPU time)", *ratio("torch", "cache", cpu_time)],
        ]
    print()
    print(C.table(["ratio (median of per-round ratios)", "median", "q1", "q3"], ratios))
    print()
    print(f"same greedy tokens: cache == recompute {same}, cache == cache merged {same_merged}"
          + (f", cache == torch {same_torch}" if "torch" in nets else ""))


if __name__ == "__main__":
    main()
