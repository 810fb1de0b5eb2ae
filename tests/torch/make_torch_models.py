#!/usr/bin/env python3
"""Writes the TorchScript adapter test's models and references (CTest label "torch").

Into --out:
  dcn.pt            a random DCN-v2 tower over (user, items) embeddings (the example's,
                    examples/torch/dcn.py), scripted: cross
                    network and a deep MLP with nn.Dropout (attribute dropout_rate, the
                    adapter's seeded dropout mode)
  dcn_reference.json  random requests (shared and per-candidate users) with float64
                    reference logits, probabilities and input gradients of the probability,
                    computed from the same float32 weights and inputs in float64; and
                    PyTorch's float32 logits under dropout with torch.manual_seed(seed)
  mlp.pt            an MLP with the exact architecture of age's Tower (W0 = [W_user |
                    W_item], ReLU hidden layers, dropout masks after each hidden ReLU,
                    one logit), scripted with forward_masked (explicit-mask mode)
  mlp_weights.json  its weights, [out, in] per layer, for the native age::Tower

Exit code 77 (CTest SKIP_RETURN_CODE) when torch is not installed.
"""

import argparse
import copy
import json
import os
import sys
from typing import List

try:
    import torch
    from torch import nn
except ImportError:
    print("skipped: python3-torch not installed")
    sys.exit(77)

# The example's DCN-v2 (examples/torch/dcn.py): the test checks the architecture users copy.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "examples", "torch"))
from dcn import DcnV2  # noqa: E402


class TowerMlp(nn.Module):
    """age's Tower: ReLU hidden layers over [user | item], a mask after each hidden ReLU."""

    def __init__(self, user_dim: int, item_dim: int, hidden: List[int]):
        super().__init__()
        self.user_dim = user_dim
        self.item_dim = item_dim
        self.dropout_sizes = list(hidden)
        sizes = [user_dim + item_dim] + list(hidden)
        self.hidden = nn.ModuleList([nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:])])
        self.out = nn.Linear(sizes[-1], 1)

    def forward(self, user: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        h = torch.cat([user.expand(items.size(0), -1), items], dim=1)
        for layer in self.hidden:
            h = torch.relu(layer(h))
        return self.out(h).squeeze(1)

    @torch.jit.export
    def forward_masked(self, user: torch.Tensor, items: torch.Tensor, masks: List[torch.Tensor]) -> torch.Tensor:
        h = torch.cat([user.expand(items.size(0), -1), items], dim=1)
        for i, layer in enumerate(self.hidden):
            h = torch.relu(layer(h)) * masks[i]
        return self.out(h).squeeze(1)


class Broken(nn.Module):
    """A module that breaks one part of the adapter's contract (the error tests)."""

    def __init__(self, kind: str):
        super().__init__()
        self.user_dim = 2
        self.item_dim = 3
        self.kind = kind
        self.weight = nn.Parameter(torch.ones(5))

    def forward(self, user: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        z = torch.cat([user.expand(items.size(0), -1), items], dim=1) @ self.weight
        if self.kind == "shape":  # [N, 2] instead of [N]
            return torch.stack([z, z], dim=1)
        if self.kind == "dtype":
            return z.double()
        if self.kind == "nan":  # NaN for candidates whose first item value is above 5
            return torch.where(items[:, 0] > 5.0, torch.full_like(z, float("nan")), z)
        if self.kind == "inplace":
            items.mul_(2.0)
            return z
        if self.kind == "raise":  # a torch error at run time, for N > 4 only
            if items.size(0) > 4:
                raise RuntimeError("request too large for this module")
            return z
        return z


class NoForward(nn.Module):
    def __init__(self):
        super().__init__()

    @torch.jit.export
    def score(self, items: torch.Tensor) -> torch.Tensor:
        return items.sum(1)


def dcn_references(model, generator, requests):
    model64 = copy.deepcopy(model).double().eval()
    scripted = torch.jit.script(model)
    out = []
    for r in range(requests):
        n = [1, 3, 17, 64][r % 4]
        shared = r % 2 == 0
        user = torch.randn(1 if shared else n, model.user_dim, generator=generator)
        items = torch.randn(n, model.item_dim, generator=generator)
        u = user.double().expand(n, -1).clone().requires_grad_(True)
        x = items.double().clone().requires_grad_(True)
        z = model64(u, x)
        prob = torch.sigmoid(z)
        prob.sum().backward()  # candidates are independent: row n is candidate n's gradient
        seed = 1000 + r
        with torch.no_grad():
            z32 = scripted.eval()(user, items)
            torch.manual_seed(seed)
            for m in scripted.modules():
                if m.original_name == "Dropout":
                    m.train(True)
            z_dropout = scripted(user, items)
            scripted.eval()
        out.append({
            "user": user.tolist(), "items": items.tolist(),
            "logits": z.detach().tolist(), "prob": prob.detach().tolist(),
            "d_items": x.grad.tolist(), "d_user": u.grad.tolist(),
            "torch_float32_logits": z32.tolist(),
            "dropout_seed": seed, "dropout_logits": z_dropout.tolist(),
        })
    return scripted, out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--requests", type=int, default=12)
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    torch.manual_seed(7)
    generator = torch.Generator().manual_seed(11)

    dcn = DcnV2(user_dim=6, item_dim=10, cross_layers=2, hidden=[32, 16], dropout=0.2)
    scripted, requests = dcn_references(dcn, generator, args.requests)
    scripted.save(os.path.join(args.out, "dcn.pt"))
    with open(os.path.join(args.out, "dcn_reference.json"), "w") as f:
        json.dump({"user_dim": 6, "item_dim": 10, "dropout_rate": 0.2, "requests": requests}, f)

    mlp = TowerMlp(user_dim=6, item_dim=10, hidden=[32, 16]).eval()
    torch.jit.script(mlp).save(os.path.join(args.out, "mlp.pt"))
    layers = [{"weight": l.weight.tolist(), "bias": l.bias.tolist()} for l in list(mlp.hidden) + [mlp.out]]
    with open(os.path.join(args.out, "mlp_weights.json"), "w") as f:
        json.dump({"user_dim": 6, "item_dim": 10, "hidden": [32, 16], "layers": layers}, f)
    for kind in ["shape", "dtype", "nan", "inplace", "raise"]:
        torch.jit.script(Broken(kind)).save(os.path.join(args.out, f"broken_{kind}.pt"))
    torch.jit.script(NoForward()).save(os.path.join(args.out, "no_forward.pt"))
    with open(os.path.join(args.out, "not_a_module.pt"), "wb") as f:
        f.write(b"PK\x03\x04 this is not a TorchScript archive")
    print(f"wrote dcn.pt, dcn_reference.json ({len(requests)} requests), mlp.pt, mlp_weights.json to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
