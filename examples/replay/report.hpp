// The study's report: Markdown tables of every policy against a control on the same seeds
// (the paired change (M24) with its 95% Student-t interval, age/sim/statistics.hpp; the
// layout of the paper's Table 1, METHOD.md "The paper's results"), results.csv (one row per
// policy and seed), curves.csv (cumulative clicks over visits), summary.md (the tables of
// the run, also printed) and curves.png (drawn by examples/plot_curves.py when matplotlib
// is there).
#pragma once

#include <cstddef>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include "age/sim/replay.hpp"
#include "age/sim/results.hpp"
#include "age/sim/statistics.hpp"
#include "options.hpp"
#include "study.hpp"

namespace study {

// `v` with `decimals` digits after the point.
std::string format_fixed(double v, int decimals);

// One policy against a control on the seeds both ran (paired by seed): clicks, or
// expected clicks online.
struct Comparison {
  std::string treatment, control;
  age::sim::PairedDifference diff;  // n = 0 when fewer than 2 common seeds
};
Comparison compare_runs(const std::vector<RunResult>& runs, const std::string& treatment, const std::string& control,
                        bool expected_clicks);

// "+4.1% [+1.2, +7.0]" (the paired change and its 95% interval, in percent of the
// control), "12/20" seeds that gain, and whether the interval excludes 0.
std::string change_text(const Comparison& c);
std::string gains_text(const Comparison& c);
std::string finding_text(const Comparison& c);

// A Markdown table of the policies `rows` (in that order): clicks (mean +- std) over the
// seeds, the paired change against `control` with its 95% interval, the seeds that gain
// and the finding; replay adds the accepted events, online the expected clicks.
std::string comparison_table(const std::vector<RunResult>& runs, const std::vector<std::string>& rows,
                             const std::string& control, const std::map<std::string, std::string>& labels = {});

// A file for writing, with 10 significant digits; IoError when it cannot be opened.
std::ofstream open_output(const std::string& path);

// results.csv: policy,seed,visits,events,clicks,expected_clicks (empty in replay mode).
void write_results_csv(const std::string& path, const std::vector<RunResult>& runs);

// curves.csv: policy,seed,visits,clicks,expected_clicks (cumulative; expected empty in replay).
void write_curves_csv(const std::string& path, const std::vector<RunResult>& runs);

// The study's outputs in --out: the runs ordered by policy (as requested) and seed, the
// CSV files, summary.md (printed too; with the ablation and FGM-vs-PGD tables when their
// rows ran), and the picture. `secs`: the study's wall time, reported in summary.md.
void write_report(const Options& o, const StudySetup& setup, const std::vector<std::string>& names,
                  std::size_t n_seeds, double secs, std::vector<RunResult> results);

// curves.png from curves.csv through examples/plot_curves.py; skipped with a message when
// python3 cannot import matplotlib or the script fails.
void plot(const Options& o);

}  // namespace study
