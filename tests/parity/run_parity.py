#!/usr/bin/env python3
"""PyTorch parity test driver (CTest "parity").

1. builds a random AgeCtrModel (examples/pytorch/age_model.py): categorical, multi-hot sum
   and mean, and dense fields on both sides, two hidden layers;
2. exports it with examples/pytorch/export_safetensors.py;
3. draws random requests -- embedding-level inputs (shared and per-candidate users, shared
   and per-candidate dropout masks) and raw 64-bit ids -- and computes with PyTorch the
   logits, the probabilities and the gradients of the probability w.r.t. the item part and
   the whole input, writing them to reference.json;
4. runs age_parity_check, which loads the model and compares (tolerance 1e-5 relative, see
   parity_check.cpp), and re-saves the model from C++;
5. checks that the C++ re-save is byte-identical to PyTorch's export and loads back into
   PyTorch with identical parameters.

The model is float32 (what both sides store), but the references are computed in float64
from those same float32 weights and inputs: the comparison then measures age's own float32
rounding against the exact result, instead of the disagreement between two float32
implementations that sum in different orders. PyTorch's own float32 error against the same
references is printed for scale.

Exit code 77 (CTest SKIP_RETURN_CODE) when torch is not installed.
"""

import argparse
import copy
import json
import os
import subprocess
import sys

try:
    import numpy as np
    import torch
except ImportError:
    print("skipped: python3-torch not installed")
    sys.exit(77)


def side_features(fields, rng):
    """One entity's raw features: ids for table fields (a bag of 0..5 for multi-hot),
    float32 values for dense ones."""
    out = []
    for f in fields:
        if f.kind == "dense":
            out.append({"values": [float(v) for v in rng.standard_normal(f.dim).astype(np.float32)]})
        elif f.kind == "categorical":
            # Full 64-bit range, so the hashing of large ids is exercised too.
            out.append({"ids": [int(rng.integers(0, 2**64, dtype=np.uint64))]})
        else:
            out.append({"ids": [int(x) for x in rng.integers(0, 2**64, size=int(rng.integers(0, 6)), dtype=np.uint64)]})
    return out


def references(model, user, items, masks):
    """logits, probabilities, dy/d(item), dy/d(input) of one request on `model`."""
    n = items.shape[0]
    if user.dim() == 1:
        user = user.unsqueeze(0).expand(n, -1)
    h = torch.cat([user, items], dim=1).detach().clone().requires_grad_(True)
    logits = model.tower(h, masks)
    prob = torch.sigmoid(logits)
    # Candidates do not interact, so the gradient of the sum is every candidate's gradient.
    prob.sum().backward()
    d_input = h.grad.detach()
    return {
        "logits": logits.detach().tolist(),
        "prob": prob.detach().tolist(),
        "d_items": d_input[:, model.user_dim:].tolist(),
        "d_input": d_input.tolist(),
    }


def term_scales(model, user, items, masks):
    """Per output element, the magnitude of the terms it is summed from: the same passes
    run on |W|, |b|, |h| through the same ReLU pattern and masks. A float32 result can only
    be accurate to a few ulps of this, whatever its own size (cancellation)."""
    n = items.shape[0]
    if user.dim() == 1:
        user = user.unsqueeze(0).expand(n, -1)
    with torch.no_grad():
        x = torch.cat([user, items], dim=1)
        s = x.abs()
        active = []
        for l, layer in enumerate(model.layers):
            pre = x @ layer.weight.T + layer.bias
            t = s @ layer.weight.abs().T + layer.bias.abs()
            if l < len(model.hidden):
                a = (pre > 0).to(pre.dtype)
                if masks is not None:
                    a = a * masks[l].abs()
                active.append(a)
                x, s = torch.relu(pre) * (masks[l] if masks is not None else 1), t * a
            else:
                logit, logit_scale = pre[:, 0], t[:, 0]
        p = torch.sigmoid(logit)
        dp = p * (1 - p)
        g = dp.unsqueeze(1) * model.layers[-1].weight.abs()
        for l in range(len(model.hidden) - 1, -1, -1):
            g = (g * active[l]) @ model.layers[l].weight.abs()
    return {
        "logits": logit_scale.tolist(),
        "prob": (dp * logit_scale).tolist(),
        "d_items": g[:, model.user_dim:].tolist(),
        "d_input": g.tolist(),
    }


def embedding_scales(model, side, entities):
    """Magnitude of the terms of each pooled embedding: the same pooling over |table|."""
    with torch.no_grad():
        saved = {name: emb.weight.clone() for name, emb in model.embeddings.items()}
        for emb in model.embeddings.values():
            emb.weight.abs_()
        abs_entities = [[{"values": [abs(v) for v in f["values"]]} if "values" in f else f for f in e]
                        for e in entities]
        out = model.embed(side, abs_entities)
        for name, emb in model.embeddings.items():
            emb.weight.copy_(saved[name])
    return out


def errors(got, ref, scale):
    """parity_check.cpp's measure, for PyTorch's own float32 results."""
    got, ref, scale = (np.asarray(a, dtype=np.float64).ravel() for a in (got, ref, scale))
    return float(np.max(np.abs(got - ref) / np.maximum(np.abs(ref), FLOOR * scale)))


FLOOR = 0.1  # see parity_check.cpp


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--checker", required=True, help="the age_parity_check binary")
    parser.add_argument("--examples", required=True, help="examples/pytorch directory")
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--seed", type=int, default=20240501)
    args = parser.parse_args()

    sys.path.insert(0, args.examples)
    from age_model import AgeCtrModel, Field
    import export_safetensors

    os.makedirs(args.workdir, exist_ok=True)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)

    fields = [
        Field("user_id", "user", "categorical", dim=6, rows=97),
        Field("user_tags", "user", "multi_hot", dim=4, rows=31, pooling="mean"),
        Field("user_context", "user", "dense", dim=3),
        Field("item_id", "item", "categorical", dim=8, rows=211),
        Field("item_cats", "item", "multi_hot", dim=4, rows=17, pooling="sum"),
        Field("item_tags", "item", "multi_hot", dim=3, rows=23, pooling="mean"),
        Field("item_price", "item", "dense", dim=2),
    ]
    model = AgeCtrModel(fields, hidden=[32, 16])
    with torch.no_grad():
        for emb in model.embeddings.values():
            emb.weight.normal_(0.0, 0.5, generator=gen)
        # Larger weights than nn.Linear's default, so that logits and probabilities spread
        # over a useful range instead of clustering around 0.5.
        for layer in model.layers:
            layer.weight.mul_(2.0)
    model.eval()

    model_path = os.path.join(args.workdir, "model.safetensors")
    export_safetensors.export_model(model, model_path, {"source": "tests/parity/run_parity.py"})
    model64 = copy.deepcopy(model).double()

    def f32(shape):
        return torch.from_numpy(rng.standard_normal(shape).astype(np.float32))

    def mask(rows, cols, p):
        keep = np.float32(1.0 / (1.0 - p))  # as age::sample_dropout_mask computes it
        return torch.from_numpy(np.where(rng.random((cols, rows)) < p, np.float32(0), keep).astype(np.float32))

    du, di = model.user_dim, model.item_dim
    requests = []
    torch_f32_err = [0.0]

    def track(own, ref, scale):
        for key in ("logits", "prob", "d_items", "d_input"):
            torch_f32_err[0] = max(torch_f32_err[0], errors(own[key], ref[key], scale[key]))
            ref["scale_" + key] = scale[key]

    def add(name, kind, user, items, masks=None, extra=None):
        masks64 = [m.double() for m in masks] if masks else None
        ref = references(model64, user.double(), items.double(), masks64)
        own = references(model, user, items, masks)
        track(own, ref, term_scales(model64, user.double(), items.double(), masks64))
        entry = {"name": name, "kind": kind}
        if extra:
            entry.update(extra)
        else:
            entry["user" if user.dim() == 1 else "users"] = user.tolist()
            entry["items"] = items.tolist()
        if masks:
            # age's DropoutMask is H x (1 or N): one list per column.
            entry["masks"] = [m.tolist() for m in masks]
        entry.update(ref)
        requests.append(entry)

    add("shared user, N=16", "embedding", f32(du), f32((16, di)))
    add("shared user, N=1", "embedding", f32(du), f32((1, di)))
    add("per-candidate users, N=8", "embedding", f32((8, du)), f32((8, di)))
    add("shared mask p=0.3, N=10", "embedding", f32(du), f32((10, di)),
        masks=[mask(h, 1, 0.3) for h in model.hidden])
    add("per-candidate mask, N=10", "embedding", f32(du), f32((10, di)),
        masks=[mask(h, 10, 0.3) for h in model.hidden])
    for n in (1, 5, 12):
        user_raw = side_features(model.user_fields, rng)
        items_raw = [side_features(model.item_fields, rng) for _ in range(n)]
        with torch.no_grad():
            u64 = model64.embed("user", [user_raw])[0]
            i64 = model64.embed("item", items_raw)
            u32 = model.embed("user", [user_raw])[0]
            i32 = model.embed("item", items_raw)
        ref = references(model64, u64, i64, None)
        own = references(model, u32, i32, None)
        track(own, ref, term_scales(model64, u64, i64, None))
        entry = {"name": f"raw ids, N={n}", "kind": "raw", "user_features": user_raw, "item_features": items_raw,
                 "user_embedding": u64.tolist(), "item_embeddings": i64.tolist(),
                 "scale_user_embedding": embedding_scales(model64, "user", [user_raw])[0].tolist(),
                 "scale_item_embeddings": embedding_scales(model64, "item", items_raw).tolist()}
        entry.update(ref)
        requests.append(entry)

    reference_path = os.path.join(args.workdir, "reference.json")
    with open(reference_path, "w") as f:
        json.dump({"seed": args.seed, "requests": requests}, f)

    resave_path = os.path.join(args.workdir, "resaved_by_cpp.safetensors")
    if os.path.exists(resave_path):
        os.unlink(resave_path)
    print(f"torch {torch.__version__}; model: user_dim {du}, item_dim {di}, hidden {model.hidden}; "
          f"{len(requests)} requests")
    print(f"for comparison, PyTorch float32 vs the float64 reference, same measure: {torch_f32_err[0]:.3e}")
    sys.stdout.flush()
    result = subprocess.run([args.checker, model_path, reference_path, resave_path])
    if result.returncode != 0:
        print(f"FAILED: age_parity_check exited with {result.returncode}")
        return 1

    with open(model_path, "rb") as a, open(resave_path, "rb") as b:
        exported, resaved = a.read(), b.read()
    if exported != resaved:
        first = next((i for i, (x, y) in enumerate(zip(exported, resaved)) if x != y), min(len(exported), len(resaved)))
        print(f"FAILED: the C++ re-save differs from PyTorch's export ({len(exported)} vs {len(resaved)} bytes, "
              f"first difference at byte {first})")
        return 1
    print(f"C++ re-save is byte-identical to the PyTorch export ({len(exported)} bytes)")

    # And the way back: the file age wrote loads into PyTorch with every parameter equal.
    loaded, metadata = export_safetensors.load_model(resave_path)
    state, back = model.state_dict(), loaded.state_dict()
    if state.keys() != back.keys() or any(not torch.equal(state[k], back[k]) for k in state):
        print("FAILED: the C++-written file does not load back into PyTorch with equal parameters")
        return 1
    if metadata != {"source": "tests/parity/run_parity.py"}:
        print(f"FAILED: metadata did not pass through: {metadata}")
        return 1
    print("the C++-written file loads into PyTorch with identical parameters and metadata")
    return 0


if __name__ == "__main__":
    sys.exit(main())
