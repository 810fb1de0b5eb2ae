#!/usr/bin/env python3
"""Trains a small DCN-v2 CTR model in PyTorch and exports it for exploration in C++
(examples/torch/explore_torch.cpp, through age's TorchScript adapter).

The synthetic world: users and items with hidden taste vectors, a click probability
sigmoid(u' A v + b_item - 2), and impressions that follow a Zipf law over the items, so that
the tail items are seen rarely -- the items AGE exists for. The model learns user and item
embeddings (nn.Embedding) and a DCN-v2 tower over them (examples/torch/dcn.py); a Dynamic
Gating Unit (AgeDgu of examples/pytorch/age_model.py), an MLP item_dim -> 32 -> 1 on the
item embedding, learns the average CTR of each item with a stop-gradient into the
embeddings (the DGU must not move them).

Writes into --out:
  model.pt            the DCN-v2 tower over (user, items) embeddings, scripted
  explore.safetensors the embeddings (embedding.user [users, user_dim], embedding.item
                      [items, item_dim]) and the DGU, written by the exporter
                      (export_safetensors.dgu_bytes: its checks, "age.tower.dgu" and the
                      load-time probes), read with age::load_dgu

Exit code 77 when torch is not installed (the example's test is then reported as skipped).
"""

import argparse
import os
import sys
import time

try:
    import numpy as np
    import torch
    from torch import nn
except ImportError:
    print("skipped: python3-torch not installed")
    sys.exit(77)

here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, here)
sys.path.insert(0, os.path.join(here, "..", "pytorch"))
from dcn import DcnV2  # noqa: E402
from age_model import AgeDgu  # noqa: E402
from export_safetensors import dgu_bytes  # noqa: E402

USER_DIM, ITEM_DIM, DGU_HIDDEN = 8, 16, 32


class World:
    """Ground truth the logged impressions are drawn from."""

    def __init__(self, users: int, items: int, rng: np.random.Generator):
        self.users, self.items = users, items
        self.taste_u = rng.standard_normal((users, 6)) / np.sqrt(6)
        self.taste_v = rng.standard_normal((items, 6))
        self.bias = rng.normal(0.0, 0.5, items)
        popularity = 1.0 / np.arange(1, items + 1) ** 1.1
        self.popularity = popularity / popularity.sum()
        self.rng = rng

    def batch(self, size: int):
        u = self.rng.integers(0, self.users, size)
        v = self.rng.choice(self.items, size, p=self.popularity)
        logit = (self.taste_u[u] * self.taste_v[v]).sum(1) + self.bias[v] - 2.0
        click = self.rng.random(size) < 1.0 / (1.0 + np.exp(-logit))
        return torch.from_numpy(u), torch.from_numpy(v), torch.from_numpy(click.astype(np.float32))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder for model.pt and explore.safetensors")
    parser.add_argument("--seconds", type=float, default=10.0, help="training budget")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    torch.manual_seed(args.seed)
    torch.set_num_threads(1)
    world = World(users=500, items=400, rng=np.random.default_rng(args.seed))

    user_emb = nn.Embedding(world.users, USER_DIM)
    item_emb = nn.Embedding(world.items, ITEM_DIM)
    for e in (user_emb, item_emb):
        nn.init.normal_(e.weight, 0.0, 0.1)
    tower = DcnV2(USER_DIM, ITEM_DIM, cross_layers=2, hidden=[64, 32], dropout=0.1)
    dgu = AgeDgu(ITEM_DIM, [DGU_HIDDEN])
    params = list(user_emb.parameters()) + list(item_emb.parameters()) + list(tower.parameters()) + list(dgu.parameters())
    optimizer = torch.optim.Adam(params, lr=3e-3)
    bce = nn.BCEWithLogitsLoss()

    tower.train()
    steps, started, recent = 0, time.monotonic(), []
    while time.monotonic() - started < args.seconds or steps == 0:
        u, v, click = world.batch(512)
        h_item = item_emb(v)
        loss = bce(tower(user_emb(u), h_item), click)
        # The DGU reads the item embedding through a stop-gradient (detach): it learns the
        # item's average CTR without moving the embeddings the main model uses.
        loss_dgu = bce(dgu(h_item.detach()), click)
        optimizer.zero_grad()
        (loss + loss_dgu).backward()
        optimizer.step()
        recent = (recent + [(loss.item(), loss_dgu.item())])[-50:]
        steps += 1
    tower.eval()
    loss, loss_dgu = np.mean(recent, axis=0)
    print(f"trained {steps} steps in {time.monotonic() - started:.1f} s: BCE model {loss:.4f}, DGU {loss_dgu:.4f}")

    torch.jit.script(tower).save(os.path.join(args.out, "model.pt"))
    dgu.eval()
    tables = [("embedding.user", user_emb.weight.detach().numpy()),
              ("embedding.item", item_emb.weight.detach().numpy())]
    with open(os.path.join(args.out, "explore.safetensors"), "wb") as f:
        f.write(dgu_bytes(dgu, extra_tensors=tables))
    print(f"wrote {args.out}/model.pt and {args.out}/explore.safetensors")
    return 0


if __name__ == "__main__":
    sys.exit(main())
