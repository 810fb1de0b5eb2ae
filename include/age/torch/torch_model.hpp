// TorchCtrModel: a TorchScript module (a model trained and scripted in PyTorch) as an
// age::CtrModel, so that every explorer in age -- AgeTs, AgeUcb, the baselines -- can score
// it in C++ without porting the model. Needs libtorch (link the CMake target age::torch;
// Debian: libtorch-dev); age/age.hpp does not include this header.
//
// The module's contract (examples/torch/train_dcn.py and tests/torch/make_torch_models.py
// write such modules):
//   forward(user: Tensor, items: Tensor) -> Tensor
//       user  float32 [1, user_dim] (one user shared by the request; the module broadcasts
//             it) or [N, user_dim] (one row per candidate);
//       items float32 [N, item_dim];
//       returns the N logits, float32 [N] (or [N, 1]). sigmoid(logit) is the pCTR.
//   Candidates are independent: row n of the output depends on row n of the inputs only
//   (no batch statistics: BatchNorm in eval mode is fine, in training mode it is not).
//   forward must not write into its inputs: they are the caller's Eigen memory, wrapped
//   without copying (an Eigen item_dim x N column-major matrix IS a row-major [N, item_dim]
//   tensor); a module that does is refused with InputError.
//   Sizes: int attributes `user_dim` and `item_dim` on the module, or given in
//   TorchModelOptions (both, and they must agree). Every module is probed once when the
//   adapter is built (a [1, user_dim] and an [N, user_dim] user on 2 candidates, without
//   and with a dropout mask), so that a module that does not fit fails at load.
//
// Dropout (MC-Dropout uncertainty, DropoutCtrModel), in one of two modes chosen from what
// the module offers:
//   explicit masks (TorchDropoutMode::explicit_masks) -- the module has a method
//       forward_masked(user, items, masks: List[Tensor]) -> Tensor
//     and an attribute `dropout_sizes: List[int]`; masks[l] is float32 [1 or N,
//     dropout_sizes[l]], the multiplier of dropout site l (0 or 1/(1-p), inverted
//     scaling). age draws the masks itself with sample_dropout_mask(), as it does for its
//     own Tower, so a mask is exactly what the explorer asked for: rate p, one mask shared
//     by the request (columns = 1) or one per candidate, a pure function of the explorer's
//     Rng, position-independent. A module with the architecture of age's Tower and masks
//     after each hidden ReLU then scores EXACTLY like the native Tower under the same seed
//     (tests/torch/). Fully concurrent.
//   seeded (TorchDropoutMode::seeded) -- the module has nn.Dropout submodules and a float
//     attribute `dropout_rate` (their rate p; TorchScript bakes p into the module, so the
//     explorer's rate must equal it: ConfigError otherwise). A mask is a 64-bit seed drawn
//     from the explorer's Rng; a masked pass runs a copy of the module whose Dropout
//     submodules (only those: BatchNorm stays in eval mode) are in training mode, with
//     torch's default CPU generator seeded from the mask and restored afterwards. Scripted
//     dropout has no generator argument, so the default generator is the only seedable
//     one: masked passes of every TorchCtrModel in the process are serialised by one
//     mutex, and other code that draws from torch's default CPU generator on another
//     thread at the same time would perturb the sample (and see its stream seeded). The
//     dropout pattern is drawn per candidate row whatever `columns` says (a shared mask,
//     McDropoutTs's default, becomes per-candidate samples), and a candidate's pattern
//     depends on its position in the batch and on N; deterministic for a given (input,
//     mask). Plain passes and gradients without a mask stay concurrent.
//   none -- neither: rate 0 only (sample_mask(p > 0) throws ConfigError naming the two
//     ways to give the module dropout).
//   p = 0 is "no dropout" in every mode.
//
// Passes: logits() runs forward under torch::NoGradGuard; probability_gradient() runs it
// with autograd on and takes d sum(z) / d(input) by backward (candidates are independent,
// so row n is dz_n / dh_n), then dy/dh = y (1 - y) dz/dh in float like the native model;
// a shared user is expanded to N rows first so that its gradient is per candidate.
// Non-finite logits are returned as they are: the scorers reject non-finite scores
// (InputError naming the candidate), as for the native model.
//
// Errors (all age::Error): a file that cannot be opened -> IoError naming it; a file
// torch cannot load -> FormatError naming it; a module without forward, with the wrong
// sizes, output type, dtype or shape -> FormatError / DimensionError at construction;
// a request of the wrong shape -> DimensionError; a forward that fails at run time (a
// torch error inside the module) -> InputError with torch's message.
//
// Threads: every member function is const and callable from many threads (TorchScript
// inference is re-entrant; the seeded masked pass is serialised as described above). The
// size of libtorch's intra-op thread pool is left to the program: a service that scores on
// many threads usually wants at::set_num_threads(1) once at start-up (the benchmark
// bench_torch_adapter does this), so that each request runs on its own thread.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <ATen/CPUGeneratorImpl.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/script.h>

#include "age/core/error.hpp"
#include "age/core/rng.hpp"
#include "age/core/types.hpp"
#include "age/model/ctr_model.hpp"
#include "age/model/dropout.hpp"
#include "age/model/sigmoid.hpp"

namespace age {

enum class TorchDropoutMode { none, explicit_masks, seeded };

struct TorchModelOptions {
  // Sizes of the user and item parts; unset = the module's int attribute `user_dim` /
  // `item_dim` (a module without a user_dim attribute has user_dim 0; item_dim must come
  // from one or the other). Given and present, they must agree.
  std::optional<std::size_t> user_dim = std::nullopt;
  std::optional<std::size_t> item_dim = std::nullopt;
};

class TorchCtrModel {
 public:
  // One dropout sample (see the top of this file): the explicit masks, or a seed.
  struct Mask {
    DropoutMask masks;         // explicit_masks mode: per dropout site, units x columns
    std::uint64_t seed = 0;    // seeded mode
    double rate = 0.0;         // 0: no dropout (also a default-constructed mask)
    Index columns = 0;
  };
  // Per-thread scratch: the argument list handed to the module, reused between calls.
  struct Workspace {
    std::vector<torch::jit::IValue> inputs;
  };

  // Loads a scripted module saved by torch.jit.save (IoError / FormatError naming the file).
  explicit TorchCtrModel(const std::filesystem::path& file, const TorchModelOptions& options = {})
      : TorchCtrModel(load_file(file), options, file.string()) {}

  // Adopts a loaded module; `name` identifies it in error messages.
  explicit TorchCtrModel(torch::jit::Module module, const TorchModelOptions& options = {},
                         std::string name = "TorchScript module")
      : eval_(std::move(module)), name_(std::move(name)) {
    try {
      setup(options);
    } catch (const Error&) {
      throw;
    } catch (const std::exception& e) {
      throw FormatError(name_ + ": " + first_line(e));
    }
  }

  std::size_t user_dim() const noexcept { return user_dim_; }
  std::size_t item_dim() const noexcept { return item_dim_; }
  TorchDropoutMode dropout_mode() const noexcept { return mode_; }
  // explicit_masks mode: the units of each dropout site; seeded: the module's rate.
  const std::vector<std::size_t>& dropout_sizes() const noexcept { return dropout_sizes_; }
  double dropout_rate() const noexcept { return dropout_rate_; }
  const std::string& name() const noexcept { return name_; }
  // The module the plain passes run (in eval mode).
  const torch::jit::Module& module() const noexcept { return eval_; }

  // The logit of every candidate into `out` (CtrModel); mask nullptr or rate 0: no dropout.
  void logits(ConstMatrixRef user, ConstMatrixRef items, const Mask* mask, Workspace& ws,
              Eigen::Ref<RowVector> out) const {
    const Index n = check_request(user, items, out.size(), "logits");
    if (n == 0) return;
    guard_torch("logits", [&] {
      torch::NoGradGuard no_grad;
      at::Tensor user_t = wrap(user);
      at::Tensor items_t = wrap(items);
      const at::Tensor z = run(user_t, items_t, mask, n, ws);
      require_untouched(user_t, items_t);
      copy_logits(z, out);
    });
  }

  // prob = sigmoid(z) and d prob / d items, d prob / d user (per candidate), by autograd.
  void probability_gradient(ConstMatrixRef user, ConstMatrixRef items, const Mask* mask, Workspace& ws,
                            Eigen::Ref<RowVector> prob, Matrix* d_items, Matrix* d_user) const {
    const Index n = check_request(user, items, prob.size(), "probability_gradient");
    if (d_items) d_items->resize(items.rows(), n);
    if (d_user) d_user->resize(user.rows(), n);
    if (n == 0) return;
    guard_torch("probability_gradient", [&] {
      torch::AutoGradMode grad_on(true);
      at::Tensor items_t = wrap(items);
      at::Tensor user_t = wrap(user);
      if (d_user && user.cols() == 1) user_t = user_t.expand({n, user_t.size(1)}).contiguous();
      std::vector<at::Tensor> wrt;
      if (d_items) wrt.push_back(items_t.requires_grad_(true));
      if (d_user) wrt.push_back(user_t.requires_grad_(true));
      const at::Tensor z = run(user_t, items_t, mask, n, ws);
      require_untouched(user_t, items_t);
      copy_logits(z, prob);
      if (!wrt.empty()) {
        if (!z.requires_grad())
          throw FormatError(name_ + ": probability_gradient: the output does not depend on the inputs through "
                                    "autograd (detached or computed without gradients)");
        // Candidates are independent, so the gradient of the sum is each candidate's own.
        const std::vector<at::Tensor> grads = torch::autograd::grad({z.sum()}, wrt, {}, false, false, true);
        std::size_t k = 0;
        if (d_items) copy_gradient(grads[k++], *d_items);
        if (d_user) copy_gradient(grads[k++], *d_user);
      }
    });
    sigmoid_in_place(prob);
    for (Index i = 0; i < n; ++i) {
      const Scalar slope = prob[i] * (Scalar(1) - prob[i]);
      if (d_items) d_items->col(i) *= slope;
      if (d_user) d_user->col(i) *= slope;
    }
  }

  // A dropout sample of rate p, 1 (shared) or N columns (see the modes at the top).
  void sample_mask(double p, Index columns, Rng& rng, Mask& mask) const {
    check_dropout_rate(p);
    if (columns < 1) throw ConfigError("dropout mask: columns: expected >= 1, got " + std::to_string(columns));
    mask.rate = p;
    mask.columns = columns;
    if (p == 0.0) {
      mask.masks.layers.clear();
      return;
    }
    switch (mode_) {
      case TorchDropoutMode::explicit_masks:
        sample_dropout_mask(dropout_sizes_, p, columns, rng, mask.masks);
        return;
      case TorchDropoutMode::seeded:
        if (p != dropout_rate_)
          throw ConfigError(name_ + ": dropout rate: expected the module's dropout_rate " + std::to_string(dropout_rate_) +
                            " (scripted nn.Dropout has its rate built in), got " + std::to_string(p));
        mask.seed = rng();
        return;
      case TorchDropoutMode::none:
        break;
    }
    throw ConfigError(name_ + ": dropout rate: expected 0 for a module without dropout, got " + std::to_string(p) + "; give the module forward_masked(user, items, masks) and dropout_sizes, or nn.Dropout "
                      "submodules and a dropout_rate attribute");
  }

 private:
  static std::string first_line(const std::exception& e) {
    const auto* c10_error = dynamic_cast<const c10::Error*>(&e);
    std::string what = c10_error ? c10_error->what_without_backtrace() : e.what();
    // torch's messages carry a traceback of the scripted code after the first lines.
    if (const auto cut = what.find("\nException raised from"); cut != std::string::npos) what.resize(cut);
    return what;
  }

  static torch::jit::Module load_file(const std::filesystem::path& file) {
    if (!std::ifstream(file, std::ios::binary).good())
      throw IoError(file.string() + ": cannot open the TorchScript file for reading");
    try {
      return torch::jit::load(file.string(), torch::kCPU);
    } catch (const std::exception& e) {
      throw FormatError(file.string() + ": not a TorchScript module torch can load: " + first_line(e));
    }
  }

  std::size_t size_attribute(const char* attribute, const std::optional<std::size_t>& given) const {
    const bool has = eval_.hasattr(attribute);
    if (has && !eval_.attr(attribute).isInt())
      throw FormatError(name_ + ": attribute " + attribute + ": expected an int, got " +
                        eval_.attr(attribute).tagKind());
    if (has && eval_.attr(attribute).toInt() < 0)
      throw FormatError(name_ + ": attribute " + attribute + ": expected >= 0, got " +
                        std::to_string(eval_.attr(attribute).toInt()));
    const std::size_t value = has ? static_cast<std::size_t>(eval_.attr(attribute).toInt()) : 0;
    if (has && given)
      detail::require_dim(name_ + ": " + attribute + " (given vs the module's attribute)", *given, value);
    return given ? *given : value;
  }

  void setup(const TorchModelOptions& options) {
    if (!eval_.find_method("forward"))
      throw FormatError(name_ + ": expected a method forward(user, items) -> Tensor, got a module without forward");
    user_dim_ = size_attribute("user_dim", options.user_dim);
    item_dim_ = size_attribute("item_dim", options.item_dim);
    if (item_dim_ == 0)
      throw ConfigError(name_ + ": item_dim: expected a module attribute item_dim or TorchModelOptions.item_dim "
                                "> 0, got neither");
    eval_.eval();

    if (eval_.find_method("forward_masked")) {
      if (!eval_.hasattr("dropout_sizes") || !eval_.attr("dropout_sizes").isIntList())
        throw FormatError(name_ + ": forward_masked: expected an attribute dropout_sizes: List[int] beside it");
      for (const std::int64_t h : eval_.attr("dropout_sizes").toIntVector()) {
        if (h <= 0) throw FormatError(name_ + ": dropout_sizes: expected sizes > 0, got " + std::to_string(h));
        dropout_sizes_.push_back(static_cast<std::size_t>(h));
      }
      mode_ = TorchDropoutMode::explicit_masks;
    } else if (eval_.hasattr("dropout_rate")) {
      const c10::IValue rate = eval_.attr("dropout_rate");
      if (!rate.isDouble() || !(rate.toDouble() > 0.0 && rate.toDouble() < 1.0))
        throw FormatError(name_ + ": dropout_rate: expected a float in (0, 1)");
      dropout_rate_ = rate.toDouble();
      // The copy the masked passes run: its Dropout submodules (only those) train.
      train_ = eval_.deepcopy();
      train_.eval();
      bool any = false;
      for (torch::jit::Module m : train_.modules()) {
        const auto type = m.type()->name();
        if (type && type->qualifiedName().find("torch.nn.modules.dropout.") != std::string::npos) {
          m.train(true);
          any = true;
        }
      }
      if (!any)
        throw FormatError(name_ + ": dropout_rate is set but the module has no nn.Dropout submodule to run");
      mode_ = TorchDropoutMode::seeded;
    }
    probe();
  }

  // One pass on zeros with a shared and a per-candidate user: the output's type, dtype and
  // shape are checked here, so that a module that does not fit fails at load, not later.
  void probe() const {
    Workspace ws;
    const Matrix items = Matrix::Zero(static_cast<Index>(item_dim_), 2);
    RowVector out(2);
    for (const Index user_cols : {Index(1), Index(2)}) {
      const Matrix user = Matrix::Zero(static_cast<Index>(user_dim_), user_cols);
      try {
        logits(user, items, nullptr, ws, out);
        if (mode_ != TorchDropoutMode::none) {  // the masked pass too (forward_masked, or the training copy)
          Mask mask;
          Rng rng(0);
          sample_mask(mode_ == TorchDropoutMode::seeded ? dropout_rate_ : 0.5, user_cols, rng, mask);
          logits(user, items, &mask, ws, out);
        }
      } catch (const DimensionError& e) {
        throw DimensionError(name_ + ": probe with a user of " + std::to_string(user_cols) + " row(s): " + e.what());
      } catch (const Error& e) {
        throw FormatError(name_ + ": probe with a user of " + std::to_string(user_cols) + " row(s): " + e.what());
      }
    }
  }

  Index check_request(ConstMatrixRef user, ConstMatrixRef items, Index out_size, const char* who) const {
    const Index n = items.cols();
    const std::string prefix = name_ + ": " + who + ": ";
    detail::require_dim(prefix + "items rows (item_dim)", item_dim_, static_cast<std::size_t>(items.rows()));
    detail::require_dim(prefix + "user rows (user_dim)", user_dim_, static_cast<std::size_t>(user.rows()));
    if (user.cols() != 1 && user.cols() != n)
      throw DimensionError(prefix + "user columns: expected 1 or " + std::to_string(n) + ", got " +
                           std::to_string(user.cols()));
    detail::require_dim(prefix + "output length", static_cast<std::size_t>(n), static_cast<std::size_t>(out_size));
    return n;
  }

  // Eigen's rows x cols column-major block is torch's [cols, rows] row-major: no copy.
  // (The tensor is never written: require_untouched() checks the module did not either.)
  static at::Tensor wrap(ConstMatrixRef m) {
    return torch::from_blob(const_cast<Scalar*>(m.data()), {m.cols(), m.rows()}, {m.outerStride(), 1},
                            torch::TensorOptions().dtype(torch::kFloat32));
  }

  void require_untouched(const at::Tensor& user, const at::Tensor& items) const {
    if (user._version() != 0 || items._version() != 0)
      throw InputError(name_ + ": forward wrote into its inputs (they are the caller's memory); compute out of place");
  }

  // The module's output for one pass, checked against the contract.
  at::Tensor run(const at::Tensor& user, const at::Tensor& items, const Mask* mask, Index n, Workspace& ws) const {
    const bool masked = mask && mask->rate > 0.0;
    if (masked && mode_ == TorchDropoutMode::none)
      throw ConfigError(name_ + ": mask: expected rate 0 for a module without dropout, got " + std::to_string(mask->rate));
    ws.inputs.clear();
    ws.inputs.emplace_back(user);
    ws.inputs.emplace_back(items);
    c10::IValue result;
    if (masked && mode_ == TorchDropoutMode::explicit_masks) {
      const DropoutMask& m = mask->masks;
      detail::require_dim(name_ + ": mask dropout sites", dropout_sizes_.size(), m.layers.size());
      c10::List<at::Tensor> masks;
      for (std::size_t l = 0; l < m.layers.size(); ++l) {
        const Matrix& layer = m.layers[l];
        detail::require_dim(name_ + ": mask site " + std::to_string(l) + " units", dropout_sizes_[l],
                            static_cast<std::size_t>(layer.rows()));
        if (layer.cols() != 1 && layer.cols() != n)
          throw DimensionError(name_ + ": mask site " + std::to_string(l) + " columns: expected 1 or " +
                               std::to_string(n) + ", got " + std::to_string(layer.cols()));
        masks.push_back(wrap(layer));
      }
      ws.inputs.emplace_back(std::move(masks));
      result = eval_.get_method("forward_masked")(ws.inputs);
    } else if (masked) {
      if (mask->columns != 1 && mask->columns != n)
        throw DimensionError(name_ + ": mask columns: expected 1 or " + std::to_string(n) + ", got " +
                             std::to_string(mask->columns));
      result = seeded_forward(mask->seed, ws.inputs);
    } else {
      result = eval_.forward(ws.inputs);
    }
    if (!result.isTensor())
      throw FormatError(name_ + ": forward: expected a Tensor of logits, got " + result.tagKind());
    at::Tensor z = result.toTensor();
    if (z.scalar_type() != torch::kFloat32)
      throw FormatError(name_ + ": forward: expected float32 logits, got " + std::string(c10::toString(z.scalar_type())));
    if (z.dim() == 2 && z.size(1) == 1) z = z.squeeze(1);
    if (z.dim() != 1 || z.size(0) != n)
      throw DimensionError(name_ + ": forward: expected logits of shape [" + std::to_string(n) + "], got " +
                           shape_string(z));
    return z;
  }

  // Seeded mode's masked pass (see the top of this file for why it is serialised).
  c10::IValue seeded_forward(std::uint64_t seed, std::vector<torch::jit::IValue>& inputs) const {
    static std::mutex masked_passes;
    const std::lock_guard<std::mutex> one_at_a_time(masked_passes);
    at::Generator generator = at::detail::getDefaultCPUGenerator();
    at::Tensor saved;
    {
      const std::lock_guard<std::mutex> lock(generator.mutex());
      saved = generator.get_state();
      generator.set_current_seed(seed);
    }
    struct Restore {
      at::Generator& generator;
      at::Tensor& state;
      ~Restore() {
        const std::lock_guard<std::mutex> lock(generator.mutex());
        generator.set_state(state);
      }
    } restore{generator, saved};
    return train_.forward(inputs);
  }

  static std::string shape_string(const at::Tensor& t) {
    std::string s = "[";
    for (std::int64_t d = 0; d < t.dim(); ++d) s += (d ? ", " : "") + std::to_string(t.size(d));
    return s + "]";
  }

  static void copy_logits(const at::Tensor& z, Eigen::Ref<RowVector> out) {
    const at::Tensor c = z.detach().contiguous();
    out = Eigen::Map<const RowVector>(c.data_ptr<float>(), c.size(0));
  }

  // A [N, d] row-major gradient into d x N column-major: the same bytes.
  static void copy_gradient(const at::Tensor& g, Matrix& out) {
    if (!g.defined()) {  // the output does not depend on this input at all
      out.setZero();
      return;
    }
    const at::Tensor c = g.contiguous();
    out = Eigen::Map<const Matrix>(c.data_ptr<float>(), out.rows(), out.cols());
  }

  // torch's exceptions become age's: InputError with torch's message (first lines).
  template <class F>
  void guard_torch(const char* who, F&& body) const {
    try {
      body();
    } catch (const Error&) {
      throw;
    } catch (const std::exception& e) {
      throw InputError(name_ + ": " + who + ": the module failed: " + first_line(e));
    }
  }

  // TorchScript's calls are not const in C++ but do not change an eval-mode module: the
  // handles are mutable so that the CtrModel passes can be const.
  mutable torch::jit::Module eval_;
  mutable torch::jit::Module train_;  // seeded mode only
  std::string name_;
  std::size_t user_dim_ = 0, item_dim_ = 0;
  TorchDropoutMode mode_ = TorchDropoutMode::none;
  std::vector<std::size_t> dropout_sizes_;
  double dropout_rate_ = 0.0;
};

static_assert(DropoutCtrModel<TorchCtrModel>);

}  // namespace age
