#!/usr/bin/python3
"""Cumulative clicks over visits for every policy of an age-replay run.

usage: plot_curves.py DIR/curves.csv OUT.png

Reads the curves.csv written by age-replay (policy,seed,visits,clicks,expected_clicks),
averages the cumulative clicks of each policy over its seeds at every recorded visit, and
draws one line per policy with a band of +-1 standard deviation across seeds. Needs
python3-matplotlib (Debian); no other package.
"""
import csv
import math
import sys
from collections import OrderedDict, defaultdict


def main(argv):
    if len(argv) != 3:
        sys.stderr.write(__doc__)
        return 2
    src, out = argv[1], argv[2]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # policy -> visits -> list of cumulative clicks (one per seed)
    curves = OrderedDict()
    with open(src, newline="") as f:
        for row in csv.DictReader(f):
            per_visit = curves.setdefault(row["policy"], defaultdict(list))
            per_visit[int(row["visits"])].append(float(row["clicks"]))
    if not curves:
        sys.stderr.write("plot_curves.py: %s has no rows\n" % src)
        return 1

    fig, ax = plt.subplots(figsize=(9, 5.5))
    # Beyond the 10 colours of the default cycle (the full study has 17 policies), every
    # policy still needs a line of its own: 20 colours, and a second line style after them.
    # The +-1 std bands only stay readable for a handful of policies.
    many = len(curves) > 10
    colours = plt.get_cmap("tab20").colors if many else None
    bands = len(curves) <= 6
    for k, (policy, per_visit) in enumerate(curves.items()):
        xs = sorted(per_visit)
        means, lo, hi = [], [], []
        for x in xs:
            v = per_visit[x]
            m = sum(v) / len(v)
            s = math.sqrt(sum((e - m) ** 2 for e in v) / (len(v) - 1)) if len(v) > 1 else 0.0
            means.append(m)
            lo.append(m - s)
            hi.append(m + s)
        seeds = max(len(per_visit[x]) for x in xs)
        style = {"color": colours[k % 20], "linestyle": "-" if k < 20 else "--"} if many else {}
        (line,) = ax.plot(xs, means, label="%s (%d seed%s)" % (policy, seeds, "" if seeds == 1 else "s"), **style)
        if seeds > 1 and bands:
            ax.fill_between(xs, lo, hi, color=line.get_color(), alpha=0.15, linewidth=0)
    ax.set_xlabel("visits after the warm start")
    ax.set_ylabel("cumulative clicks (mean over seeds%s)" % (", band: +-1 std" if bands else ""))
    ax.set_title("age-replay: cumulative clicks per policy")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper left", fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
