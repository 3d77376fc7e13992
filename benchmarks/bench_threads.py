"""The main job's training speed against the size of MindSpore's CPU kernel pool.

Run (from anywhere; ~1 min per process, so ~9 min with the defaults; nothing else running):

    python benchmarks/bench_threads.py                       # threads 25 (MindSpore's default), 1, 2
    python benchmarks/bench_threads.py --threads 25 2 4 --pairs 2 --steps 200

Each process runs the real runner on the demo config (configs/tiny_llama/lora_cpu.yaml, from the
repository's data in output/tiny_llama/data, built by `bash scripts/run_finetune.sh` or
scripts/make_tiny_base.py) for `--steps` steps with `context.runtime_num_threads` set, and the step
time is read from its loss.csv (elapsed between step 20 and the last step: compile and the first
steps excluded). Processes run in rounds, one per thread count, in a rotated order, so the load of a
shared machine falls on all alike; a ratio is the median over rounds of the per-round ratio to the
first thread count. CPU seconds are the child's user + system time (all its threads).
"""
import argparse
import csv
import os
import resource
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402  pylint: disable=wrong-import-position

DEMO = os.path.join(C.REPO, "configs", "tiny_llama", "lora_cpu.yaml")
FIRST_TIMED_STEP = 20


def _child_cpu():
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_once(threads, steps, out_root):
    """(seconds per step after warm-up, CPU seconds of the whole process) for one runner process."""
    out = tempfile.mkdtemp(prefix=f"t{threads}_", dir=out_root)
    cmd = [sys.executable, "-m", "mindpet_lite.run", "--config", DEMO, "--max_steps", str(steps),
           "--output_dir", os.path.join(out, "run"),
           "--options", "predict_after_train=False", f"context.runtime_num_threads={threads}"]
    env = dict(os.environ, PYTHONPATH=C.REPO + os.pathsep + os.environ.get("PYTHONPATH", ""), GLOG_v="3")
    cpu0 = _child_cpu()
    subprocess.run(cmd, cwd=C.REPO, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    cpu = _child_cpu() - cpu0
    with open(os.path.join(out, "run", "loss.csv"), encoding="utf-8") as f:
        elapsed = {int(row["step"]): float(row["elapsed_s"]) for row in csv.DictReader(f)}
    last = max(elapsed)
    return (elapsed[last] - elapsed[FIRST_TIMED_STEP]) / (last - FIRST_TIMED_STEP), cpu


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[25, 1, 2],
                        help="pool sizes to compare; the first is the reference of the ratios")
    parser.add_argument("--pairs", type=int, default=3, help="rounds (one process per thread count each)")
    parser.add_argument("--steps", type=int, default=150, help="training steps per process (> 20)")
    args = parser.parse_args()
    if args.steps <= FIRST_TIMED_STEP:
        parser.error(f"--steps must be > {FIRST_TIMED_STEP}, got {args.steps}")
    if not os.path.exists(os.path.join(C.REPO, "output", "tiny_llama", "data", "task_train.mindrecord")):
        parser.error("the demo data is missing: run `bash scripts/run_finetune.sh` (or scripts/make_tiny_base.py) first")
    print(f"# bench_threads: {C.cpu_model()}, {os.cpu_count()} CPUs visible, load average "
          f"{os.getloadavg()[0]:.1f} at start; demo config, batch 32, {args.steps} steps a process")
    root = C.scratch_dir("mpl_threads_")
    step = {t: [] for t in args.threads}
    cpu = {t: [] for t in args.threads}
    for rnd in range(args.pairs):
        k = rnd % len(args.threads)
        for t in args.threads[k:] + args.threads[:k]:
            s, c = run_once(t, args.steps, root)
            step[t].append(s)
            cpu[t].append(c)
            print(f"  round {rnd + 1}: threads {t}: {s * 1e3:.1f} ms/step, {c:.0f} CPU s", flush=True)
    ref = args.threads[0]
    rows = []
    for t in args.threads:
        ratios = [a / b for a, b in zip(step[t], step[ref])]
        rows.append([t, f"{statistics.median(step[t]) * 1e3:.1f}", f"{1 / statistics.median(step[t]):.2f}",
                     f"{statistics.median(ratios):.3f} [{min(ratios):.3f}-{max(ratios):.3f}]",
                     f"{statistics.median(cpu[t]):.0f}"])
    print(C.table(["threads", "ms / step (median)", "steps / s", f"step time / threads {ref} (min-max)",
                   "CPU s a process"], rows))
    print(f"# load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
