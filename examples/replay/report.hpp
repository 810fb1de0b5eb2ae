// The study's report: Markdown summaries with the change (M24) against a reference policy
// (the layout of the paper's Table 1, METHOD.md "The paper's results"), results.csv (one row
// per policy and seed), curves.csv
// (cumulative clicks over visits), summary.md (the tables of the run, also printed) and
// curves.png (drawn by examples/plot_curves.py when matplotlib is there).
#pragma once

#include <cstddef>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include "age/sim/replay.hpp"
#include "age/sim/results.hpp"
#include "options.hpp"
#include "study.hpp"

namespace study {

// `v` with `decimals` digits after the point.
std::string format_fixed(double v, int decimals);

// "+12.3%" relative change of `value` against `reference`.
std::string percent_change(double value, double reference);

// A Markdown table: policy | clicks (mean +- std) | change vs `reference` | more columns.
std::string summary_table(const std::vector<PolicySummary>& rows, const std::string& reference,
                          const std::map<std::string, std::string>& labels = {});

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
