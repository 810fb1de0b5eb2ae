#!/usr/bin/env python3
"""Train age's CTR model and its DGU in PyTorch on Open Bandit Dataset rows, and export both
into one age model file that C++ loads with age::load_model and age::load_dgu.

    /usr/bin/python3 examples/pytorch/train_obd.py --out obd_model.safetensors
    build/examples/score_exported obd_model.safetensors
    build/examples/age-ope evaluate --log examples/data/obd/men/random/men.csv \\
        --policy age-ts --model obd_model.safetensors --dgu obd_model.safetensors

The model has the layout age-ope uses on OBD rows (examples/ope/data.cpp), so its files are
interchangeable with the ones `age-ope train` writes:
    user:  user_feature_0..3   categorical, 1024 rows x 8 (the hashed strings, FNV-1a ids)
    item:  item_id             categorical, 4096 rows x 8
           item_feature_<k>    dense, 1 value, for every numeric column of item_context.csv
           affinity            dense, log1p(max(user-item affinity, 0)) of the shown item
    tower: 32-16, ReLU; DGU: item part -> 16 -> 1
One sample per row: the shown item and its click. Both are trained by Adam on the binary
cross-entropy of their logits; the DGU learns the item's average CTR from the same clicks
with a stop-gradient into the item embeddings (detach()), as age's OnlineTrainer does with
attach_item_tower (paper, Eq. 10): its loss moves the DGU only, never the embeddings.
"""

import argparse
import csv
import math
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

try:
    import numpy as np
    import torch
    import torch.nn.functional as F
except ImportError:
    print("skipped: python3-torch not installed")
    sys.exit(77)

from age_hash import fnv1a64, hash_row  # noqa: E402
from age_model import AgeCtrModel, AgeDgu, Field  # noqa: E402
import export_safetensors  # noqa: E402

DEFAULT_DATA = os.path.join(HERE, "..", "data", "obd", "men", "random")


def is_number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def read_obd(log_path: str, items_path: str, rows: int):
    """(user feature names, dense item feature names, per-item dense values, samples): one
    sample per row, (user ids, shown item, affinity of the shown item, click)."""
    with open(items_path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader)
        item_rows = list(reader)
    feature_cols = [i for i, name in enumerate(header) if name.startswith("item_feature_")]
    dense_cols = [i for i in feature_cols if all(is_number(r[i]) for r in item_rows)]
    id_col = header.index("item_id")
    item_dense = {int(r[id_col]): [float(r[i]) for i in dense_cols] for r in item_rows}
    dense_names = [header[i] for i in dense_cols]

    with open(log_path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader)
        user_cols = [i for i, name in enumerate(header) if name.startswith("user_feature_")]
        col = {name: i for i, name in enumerate(header)}
        samples = []
        for r in reader:
            if rows and len(samples) >= rows:
                break
            item = int(r[col["item_id"]])
            affinity = float(r[col[f"user-item_affinity_{item}"]]) if f"user-item_affinity_{item}" in col else 0.0
            samples.append(([fnv1a64(r[i]) for i in user_cols], item, affinity, float(r[col["click"]])))
    return [header[i] for i in user_cols], dense_names, item_dense, samples


def build(user_names, dense_names, hidden=(32, 16), dgu_hidden=(16,)):
    fields = [Field(name, "user", "categorical", dim=8, rows=1024) for name in user_names]
    fields.append(Field("item_id", "item", "categorical", dim=8, rows=4096))
    fields += [Field(name, "item", "dense", dim=1) for name in dense_names]
    fields.append(Field("affinity", "item", "dense", dim=1))
    model = AgeCtrModel(fields, hidden)
    return model, AgeDgu(model.item_dim, dgu_hidden)


def tensors(model, user_names, item_dense, samples):
    """Row indices of every table field and the dense values, as tensors (hashed once)."""
    user_rows = torch.tensor([[hash_row(name, ids[k], 1024) for k, name in enumerate(user_names)]
                              for ids, _, _, _ in samples], dtype=torch.long)
    item_rows = torch.tensor([hash_row("item_id", item, 4096) for _, item, _, _ in samples], dtype=torch.long)
    dense = torch.tensor([item_dense[item] + [math.log1p(max(aff, 0.0))] for _, item, aff, _ in samples],
                         dtype=torch.float32)
    labels = torch.tensor([click for _, _, _, click in samples], dtype=torch.float32)
    return user_rows, item_rows, dense, labels


def embed(model, user_names, user_rows, item_rows, dense):
    """(user part [B, user_dim], item part [B, item_dim]) in the layout's field order."""
    user = torch.cat([model.embeddings[name](user_rows[:, k]) for k, name in enumerate(user_names)], dim=1)
    item = torch.cat([model.embeddings["item_id"](item_rows), dense], dim=1)
    return user, item


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    pos, neg = scores[labels > 0], scores[labels <= 0]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    ranks = np.argsort(np.argsort(np.concatenate([pos, neg]))) + 1
    return float((ranks[:len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--log", default=os.path.join(DEFAULT_DATA, "men.csv"))
    parser.add_argument("--items", default=None, help="item_context.csv (default: next to --log)")
    parser.add_argument("--rows", type=int, default=0, help="train on the first N rows (0: all)")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", required=True, help="the age model file to write (model and DGU)")
    args = parser.parse_args(argv)
    items_path = args.items or os.path.join(os.path.dirname(os.path.abspath(args.log)), "item_context.csv")

    started = time.time()
    torch.manual_seed(args.seed)
    user_names, dense_names, item_dense, samples = read_obd(args.log, items_path, args.rows)
    if not samples:
        raise SystemExit(f"{args.log}: no rows to train on")
    model, dgu = build(user_names, dense_names)
    with torch.no_grad():
        for emb in model.embeddings.values():
            emb.weight.normal_(0.0, 0.05)
    user_rows, item_rows, dense, labels = tensors(model, user_names, item_dense, samples)
    optimizer = torch.optim.Adam(list(model.parameters()) + list(dgu.parameters()), lr=args.lr)
    generator = torch.Generator().manual_seed(args.seed)
    n = len(samples)
    model.train()
    dgu.train()
    for epoch in range(args.epochs):
        order = torch.randperm(n, generator=generator)
        total, dgu_total = 0.0, 0.0
        for start in range(0, n, args.batch):
            idx = order[start:start + args.batch]
            user, item = embed(model, user_names, user_rows[idx], item_rows[idx], dense[idx])
            loss = F.binary_cross_entropy_with_logits(model.logits(user, item), labels[idx])
            # The DGU's stop-gradient (Eq. 10): its loss never moves the item embeddings.
            dgu_loss = F.binary_cross_entropy_with_logits(dgu(item.detach()), labels[idx])
            optimizer.zero_grad()
            (loss + dgu_loss).backward()
            optimizer.step()
            total += float(loss) * len(idx)
            dgu_total += float(dgu_loss) * len(idx)
        print(f"epoch {epoch + 1}: log loss {total / n:.4f}, DGU log loss {dgu_total / n:.4f}")
    model.eval()
    dgu.eval()
    with torch.no_grad():
        user, item = embed(model, user_names, user_rows, item_rows, dense)
        scores = model.logits(user, item).numpy()
    clicks = int(labels.sum())
    print(f"trained on {n} rows ({clicks} clicks) in {time.time() - started:.1f} s; "
          f"train AUC {auc(scores, labels.numpy()):.3f}")
    export_safetensors.export_model(model, args.out, {"trained_by": "examples/pytorch/train_obd.py",
                                                      "rows": str(n), "epochs": str(args.epochs)}, dgu=dgu)
    print(f"wrote {args.out} (model and DGU, with load-time probes)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
