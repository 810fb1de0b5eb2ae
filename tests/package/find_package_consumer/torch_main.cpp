// The installed age::torch component: a TorchScript module (defined here from source, so
// no file is needed) scored through age::TorchCtrModel, and a missing file reported as
// age::IoError. Built and run by the find_package consumer test when age was installed
// with libtorch.
#include <cmath>
#include <cstdio>

#include <age/torch/torch_model.hpp>

int main() {
  torch::jit::Module m("Linear");
  m.register_parameter("w", torch::tensor({0.5f, -1.0f, 2.0f}), false);
  m.register_attribute("user_dim", c10::IntType::get(), std::int64_t{1});
  m.register_attribute("item_dim", c10::IntType::get(), std::int64_t{2});
  m.define(R"(
    def forward(self, user: Tensor, items: Tensor) -> Tensor:
        return torch.matmul(torch.cat([user.expand(items.size(0), -1), items], 1), self.w)
  )");
  const age::TorchCtrModel model(m);
  age::Matrix user(1, 1), items(2, 3);
  user << 2.0f;
  items << 1, 2, 3, 4, 5, 6;
  age::RowVector z(3);
  age::TorchCtrModel::Workspace ws;
  model.logits(user, items, nullptr, ws, z);
  bool ok = true;
  for (int n = 0; n < 3; ++n) ok = ok && std::abs(z[n] - (0.5f * 2 - items(0, n) + 2 * items(1, n))) < 1e-6f;
  try {
    const age::TorchCtrModel missing("/nonexistent/model.pt");
    ok = false;
  } catch (const age::IoError&) {
  }
  std::printf(ok ? "age torch consumer OK\n" : "consumer: FAILED: age::torch logits or errors\n");
  return ok ? 0 : 1;
}
