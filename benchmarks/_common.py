"""Shared helpers for the benchmark scripts (not a test module, not part of the package).

- `setup(threads)`: chdir to a temp dir (mindformers / mindpet write ./output/log into the cwd on
  import), pin the thread counts (OMP_NUM_THREADS and MindSpore's CPU kernel pool), GRAPH_MODE on CPU.
- `interleaved(fns, ...)`: time several callables side by side, round-robin with a rotating order
  so that the noise of a shared machine falls on all of them alike; medians after warm-up.
- `table(...)`: a GitHub-markdown table, so the output pastes straight into benchmarks/README.md.
- `run_child(...)`: run one configuration in its own process and read back its JSON line, so peak
  RSS (ru_maxrss) belongs to that configuration alone.
"""
import atexit
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULT_MARK = "@@RESULT@@ "


def scratch_dir(prefix):
    """A temporary directory removed when this process exits."""
    path = tempfile.mkdtemp(prefix=prefix)
    atexit.register(shutil.rmtree, path, True)
    return path


def setup(threads=2, mode="graph", chdir=True):
    """Call before importing mindformers / mindpet. Returns the mindspore module."""
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    os.environ.setdefault("GLOG_v", "3")
    if REPO not in sys.path:
        sys.path.insert(0, REPO)
    if chdir:
        os.chdir(scratch_dir("mpl_bench_"))
    import mindspore as ms  # pylint: disable=import-outside-toplevel
    ms.set_device("CPU")
    ms.set_context(mode=ms.GRAPH_MODE if mode == "graph" else ms.PYNATIVE_MODE)
    # MindSpore 2.9: the CPU kernel thread pool (default 25 threads) is sized here;
    # set_context(runtime_num_threads=...) is the deprecated spelling of the same knob.
    try:
        ms.device_context.cpu.op_tuning.threads_num(threads)
    except RuntimeError:  # already configured in this process
        pass
    return ms


def interleaved(fns, reps=15, warmup=3, inner=1, after=None):
    """fns: {name: callable}. Each round calls every callable once (`inner` times back to back),
    in an order rotated every round. Returns (wall, cpu): {name: [seconds per call, ...]} without
    warm-up, wall-clock and this process's CPU time (all threads). On a shared machine the CPU time
    is the steadier measure of the work done: a descheduled process accrues wall time, not CPU time."""
    after = after or (lambda: None)
    names = list(fns)
    wall = {n: [] for n in names}
    cpu = {n: [] for n in names}
    for rnd in range(warmup + reps):
        k = rnd % len(names)
        for name in names[k:] + names[:k]:
            fn = fns[name]
            c0, t0 = time.process_time(), time.perf_counter()
            for _ in range(inner):
                fn()
            after()
            dt, dc = (time.perf_counter() - t0) / inner, (time.process_time() - c0) / inner
            if rnd >= warmup:
                wall[name].append(dt)
                cpu[name].append(dc)
    return wall, cpu


def cpu_model():
    """The CPU model as lscpu names it (benchmarks print it in their header: speeds differ by machine)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    except OSError:
        return "unknown"
    names = [line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")]
    return names[0] if names else "unknown"


def print_header(script):
    """First line of every benchmark: which machine, how loaded (speeds differ a lot by CPU model)."""
    print(f"# {os.path.basename(script)}: {cpu_model()}, {os.cpu_count()} CPUs visible, "
          f"load average {os.getloadavg()[0]:.1f} at start", flush=True)


def med(xs):
    return statistics.median(xs)


def ratio_stats(num, den):
    """Median of per-round ratios (num[i] / den[i]: same round, so same machine load) and the
    inter-quartile spread, as (median, q1, q3)."""
    rs = sorted(a / b for a, b in zip(num, den))
    if len(rs) < 4:
        return statistics.median(rs), rs[0], rs[-1]
    q = statistics.quantiles(rs, n=4)
    return statistics.median(rs), q[0], q[2]


def peak_rss_mb():
    """Peak resident set of this process so far, MB (Linux: ru_maxrss is in KB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def table(headers, rows):
    def fmt(v):
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"
        return str(v)
    rows = [[fmt(v) for v in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"
    out = [line(headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(r) for r in rows]
    return "\n".join(out)


def emit(result):
    """Child side of run_child: one JSON line on stdout."""
    print(RESULT_MARK + json.dumps(result), flush=True)


def run_child(script, args, env=None, timeout=1800):
    """Run `python script args...` in a fresh process; return the dict it `emit`s."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    proc = subprocess.run([sys.executable, script] + [str(a) for a in args], capture_output=True,
                          text=True, env=full_env, timeout=timeout, check=False)
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_MARK):
            return json.loads(line[len(RESULT_MARK):])
    raise RuntimeError(f"{script} {args} failed (rc={proc.returncode}):\n"
                       f"{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
