#!/usr/bin/env python3
"""Runs age_bench and the libtorch peer (age_torch_peer) on the reference workload and
prints one table: ns per candidate for each policy and N, and the ratio peer / age.

    benchmarks/compare.py --build-dir build-bench [--rounds 3] [--min-time 0.5]

Every round runs each policy's scoring benchmarks in the three binaries back to back (age,
age with BLAS, the peer; the order reversed every other round), so that the two sides of a
ratio are measured seconds apart: on a shared machine the speed drifts by 10-25% over a
minute, which a binary-after-binary round let into the ratio. Each ratio is the median over
the rounds of that round's ratio; every other figure is the median over the rounds. CPU
time of the process is used (the latency of one thread, not disturbed by waiting for the
core); the multi-thread throughput is wall time. The peer runs on OpenBLAS with one
thread; by default with OpenBLAS's own choice of kernels for this processor
(OPENBLAS_CORETYPE removed from its environment), --peer-coretype NAME forces one,
--peer-coretype env keeps the caller's.
If age_bench_blas exists (age built with EIGEN_USE_BLAS against the same BLAS) it gets a
column too. Also printed: the GEMM ceiling and greedy's fraction of it, AGE-TS+FGM over
greedy, 1- vs 2-thread throughput, workspace bytes, and the project's latency targets, met or
not.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

POLICIES = ["greedy", "age_ts_fgm", "age_ts_pgd3", "age_ucb20_fgm"]
SIZES = [1, 10, 100, 1000]
UNIT_NS = {"ns": 1.0, "us": 1e3, "ms": 1e6, "s": 1e9}


def load_average():
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "?"


def run(binary, bench_filter, min_time, env):
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as tmp:
        out = tmp.name
    cmd = [binary, "--benchmark_filter=" + bench_filter, "--benchmark_min_time=%g" % min_time,
           "--benchmark_out_format=json", "--benchmark_out=" + out, "--benchmark_format=console"]
    proc = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        sys.exit("%s failed (exit %d):\n%s" % (binary, proc.returncode, proc.stderr))
    with open(out) as f:
        data = json.load(f)
    os.unlink(out)
    return data


def key(name):
    parts = [p for p in name.split("/") if p not in ("process_time", "real_time", "iterations:1")]
    return "/".join(parts)


def collect(data, into):
    for b in data["benchmarks"]:
        if b.get("run_type") == "aggregate" or b.get("error_occurred"):
            continue
        entry = into.setdefault(key(b["name"]), {})
        scale = UNIT_NS[b.get("time_unit", "ns")]
        entry.setdefault("cpu_ns", []).append(b["cpu_time"] * scale)
        entry.setdefault("real_ns", []).append(b["real_time"] * scale)
        for counter in ("GFLOP/s", "ceiling_fraction", "open_fraction", "full_move_fraction", "requests_per_second",
                        "workspace_bytes_per_request", "workspace_bytes_per_candidate", "heap_growth_bytes"):
            if counter in b:
                entry.setdefault(counter, []).append(b[counter])


def median(results, name, field):
    values = results.get(name, {}).get(field)
    return statistics.median(values) if values else None


def paired_ratio(num, den, name):
    """Median over the rounds of num / den, both measured in the same round."""
    a = num.get(name, {}).get("cpu_ns", [])
    b = den.get(name, {}).get("cpu_ns", [])
    ratios = [x / y for x, y in zip(a, b) if y]
    return statistics.median(ratios) if ratios and len(a) == len(b) else None


def fmt_ns(v):
    if v is None:
        return "-"
    return "%.0f" % v if v >= 100 else "%.1f" % v


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--build-dir", default=os.path.join(os.path.dirname(here), "build-bench"))
    parser.add_argument("--rounds", type=int, default=3, help="runs of each binary; medians are reported")
    parser.add_argument("--min-time", type=float, default=0.5, help="seconds per benchmark and run")
    parser.add_argument("--peer-coretype", default="auto",
                        help="OpenBLAS kernels for the peer: auto (OpenBLAS detects), env, or a name (SkylakeX, ...)")
    parser.add_argument("--json", help="write the medians to this file")
    args = parser.parse_args()

    bench_dir = os.path.join(args.build_dir, "benchmarks")
    age = os.path.join(bench_dir, "age_bench")
    age_blas = os.path.join(bench_dir, "age_bench_blas")
    peer = os.path.join(bench_dir, "peers", "age_torch_peer")
    for b in (age, peer):
        if not os.access(b, os.X_OK):
            sys.exit("missing %s: build the age_bench and age_torch_peer targets (Release) first" % b)
    have_blas = os.access(age_blas, os.X_OK)

    base_env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    peer_env = dict(base_env)
    if args.peer_coretype == "auto":
        peer_env.pop("OPENBLAS_CORETYPE", None)
    elif args.peer_coretype != "env":
        peer_env["OPENBLAS_CORETYPE"] = args.peer_coretype
    blas_env = dict(peer_env)

    load_before = load_average()
    age_res, blas_res, peer_res = {}, {}, {}
    contexts = {}
    for r in range(args.rounds):
        print("round %d/%d: age_bench%s, age_torch_peer (load %s)" %
              (r + 1, args.rounds, ", age_bench_blas" if have_blas else "", load_average()), file=sys.stderr)
        d = run(age, "BM_GemmCeiling|BM_Throughput" + ("|BM_Workspace" if r == 0 else ""), args.min_time, base_env)
        contexts["age"] = d["context"]
        collect(d, age_res)
        if have_blas:
            d = run(age_blas, "BM_GemmCeiling", args.min_time, blas_env)
            contexts["age_blas"] = d["context"]
            collect(d, blas_res)
        d = run(peer, "BM_TorchGemm", args.min_time, peer_env)
        contexts["peer"] = d["context"]
        collect(d, peer_res)
        # The scoring benchmarks policy by policy, the binaries back to back (see the top).
        sides = [(age, base_env, age_res)] + ([(age_blas, blas_env, blas_res)] if have_blas else [])
        sides.append((peer, peer_env, peer_res))
        if r % 2 == 1:
            sides.reverse()
        for p in POLICIES:
            for binary, env, into in sides:
                collect(run(binary, "BM_Score/%s/" % p, args.min_time, env), into)
    load_after = load_average()

    ctx = contexts["age"]
    print("Machine: %s x %s MHz, %s; load average before %s, after %s" %
          (ctx.get("num_cpus"), ctx.get("mhz_per_cpu"), os.uname().machine, load_before, load_after))
    print("age:  %s" % ctx.get("engine", "?"))
    if have_blas:
        print("age_blas: %s, BLAS %s" % (contexts["age_blas"].get("engine", "?"), contexts["age_blas"].get("blas", "?")))
    print("peer: %s, BLAS %s" % (contexts["peer"].get("engine", "?"), contexts["peer"].get("blas", "?")))
    print("Medians of %d rounds, min time %gs per benchmark; process CPU time; each ratio the median of the "
          "rounds' ratios (the two sides measured seconds apart).\n" % (args.rounds, args.min_time))

    # The table.
    header = "| policy | N | age ns/cand | libtorch ns/cand | libtorch / age |"
    sep = "|---|---:|---:|---:|---:|"
    if have_blas:
        header = "| policy | N | age ns/cand | age+BLAS ns/cand | libtorch ns/cand | libtorch / age | libtorch / age+BLAS |"
        sep = "|---|---:|---:|---:|---:|---:|---:|"
    print(header)
    print(sep)
    table = {}
    for p in POLICIES:
        for n in SIZES:
            name = "BM_Score/%s/%d" % (p, n)
            a = median(age_res, name, "cpu_ns")
            t = median(peer_res, name, "cpu_ns")
            a = a / n if a is not None else None
            t = t / n if t is not None else None
            row = {"age_ns": a, "torch_ns": t, "ratio": paired_ratio(peer_res, age_res, name)}
            cells = [p, str(n), fmt_ns(a)]
            if have_blas:
                ab = median(blas_res, name, "cpu_ns")
                ab = ab / n if ab is not None else None
                row["age_blas_ns"] = ab
                row["ratio_blas"] = paired_ratio(peer_res, blas_res, name)
                cells.append(fmt_ns(ab))
            cells += [fmt_ns(t), "%.2fx" % row["ratio"] if row["ratio"] else "-"]
            if have_blas:
                cells.append("%.2fx" % row["ratio_blas"] if row["ratio_blas"] else "-")
            print("| " + " | ".join(cells) + " |")
            table[name] = row

    # Arithmetic throughput.
    ceiling = median(age_res, "BM_GemmCeiling", "GFLOP/s")
    torch_gemm = median(peer_res, "BM_TorchGemm", "GFLOP/s")
    print("\nGEMM ceiling (Eigen float GEMM 1000 x 192 x 256): %.1f GFLOP/s; the peer's BLAS on the same "
          "shape: %s GFLOP/s" % (ceiling, "%.1f" % torch_gemm if torch_gemm else "-"))
    if have_blas:
        print("GEMM ceiling in age_bench_blas (Eigen through BLAS): %.1f GFLOP/s" %
              median(blas_res, "BM_GemmCeiling", "GFLOP/s"))
    print("\n| policy | N | GFLOP/s | of ceiling | open fraction | moved in full |")
    print("|---|---:|---:|---:|---:|---:|")
    for p in POLICIES:
        for n in (100, 1000):
            name = "BM_Score/%s/%d" % (p, n)
            g = median(age_res, name, "GFLOP/s")
            of = median(age_res, name, "open_fraction")
            full = median(age_res, name, "full_move_fraction")
            print("| %s | %d | %.1f | %.0f%% | %.2f | %s |" % (p, n, g, 100 * g / ceiling, of,
                                                             "%.3f" % full if full is not None else "-"))

    # Throughput.
    print("\n| throughput | N | 1 thread req/s | 2 threads req/s | speed-up |")
    print("|---|---:|---:|---:|---:|")
    speedups = {}
    for p in ("greedy", "age_ts_fgm"):
        for n in (100, 1000):
            one = median(age_res, "BM_Throughput/%s/%d/threads:1" % (p, n), "requests_per_second")
            two = median(age_res, "BM_Throughput/%s/%d/threads:2" % (p, n), "requests_per_second")
            if one and two:
                speedups[(p, n)] = two / one
                print("| %s | %d | %.0f | %.0f | %.2fx |" % (p, n, one, two, two / one))

    # Memory.
    print("\n| workspace | N | bytes per request | bytes per candidate | heap growth while timed |")
    print("|---|---:|---:|---:|---:|")
    for p in POLICIES:
        for n in SIZES:
            wname = "BM_Workspace/%s/%d" % (p, n)
            b = median(age_res, wname, "workspace_bytes_per_request")
            c = median(age_res, wname, "workspace_bytes_per_candidate")
            growth = median(age_res, "BM_Score/%s/%d" % (p, n), "heap_growth_bytes")
            if b is not None:
                print("| %s | %d | %.0f | %.0f | %.0f |" % (p, n, b, c, growth or 0))

    # The project's scoring-latency targets (benchmarks/README.md).
    def ratio(p, n):
        return table["BM_Score/%s/%d" % (p, n)]["ratio"] or 0.0

    greedy_1000 = median(age_res, "BM_Score/greedy/1000", "GFLOP/s")
    ts_over_greedy = table["BM_Score/age_ts_fgm/1000"]["age_ns"] / table["BM_Score/greedy/1000"]["age_ns"]
    slowest = min((ratio(p, n), p, n) for p in POLICIES for n in SIZES)
    targets = [
        ("AGE-TS+FGM >= 3x faster than libtorch at N=1000", ratio("age_ts_fgm", 1000) >= 3,
         "%.2fx" % ratio("age_ts_fgm", 1000)),
        ("AGE-TS+FGM >= 10x faster at N=1", ratio("age_ts_fgm", 1) >= 10, "%.2fx" % ratio("age_ts_fgm", 1)),
        ("AGE-TS+FGM >= 10x faster at N=10", ratio("age_ts_fgm", 10) >= 10, "%.2fx" % ratio("age_ts_fgm", 10)),
        ("every policy faster than libtorch at every N", slowest[0] > 1,
         "slowest %.2fx (%s, N=%d)" % slowest),
        ("greedy at N=1000 >= 60% of the GEMM ceiling", greedy_1000 / ceiling >= 0.6,
         "%.0f%%" % (100 * greedy_1000 / ceiling)),
        ("AGE-TS+FGM <= 4x greedy per candidate at N=1000", ts_over_greedy <= 4, "%.2fx" % ts_over_greedy),
    ]
    for (p, n), s in sorted(speedups.items()):
        targets.append(("2 threads >= 1.7x the throughput of 1 (%s, N=%d)" % (p, n), s >= 1.7, "%.2fx" % s))
    print("\n| target | met | measured |")
    print("|---|---|---|")
    for what, ok, measured in targets:
        print("| %s | %s | %s |" % (what, "yes" if ok else "NO", measured))

    if args.json:
        with open(args.json, "w") as f:
            json.dump({"age": age_res, "age_blas": blas_res, "peer": peer_res, "contexts": contexts,
                       "load": [load_before, load_after]}, f, indent=1)


if __name__ == "__main__":
    main()
