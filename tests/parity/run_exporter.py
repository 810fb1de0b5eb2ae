#!/usr/bin/env python3
"""A model trained in PyTorch, end to end, and what the exporter refuses (CTest
"example.pytorch_train_export_score", label parity).

1. trains age's model and its DGU on the first rows of the OBD sample
   (examples/pytorch/train_obd.py) and exports both into one file;
2. score_exported loads it in C++ (probes verified, DGU by age::load_dgu) and ranks a
   request with AGE-TS; age-ope evaluates the greedy policy of that model on the OBD rows;
3. the exporter refuses, naming the module, parameter or method, what a file cannot hold:
   a GELU module, a functional GELU in an overridden tower, BatchNorm, an unknown module, an
   extra parameter, a tower replaced on the instance, a DGU with a LayerNorm;
4. files changed after export are refused by the C++ loader: weights edited (the model's
   tower and the DGU: the message names the probe and the difference), and a config that
   records an activation the tower does not have;
5. the DGU reads back in PyTorch with the same outputs.

Exit code 77 (CTest SKIP_RETURN_CODE) when torch is not installed.
"""

import argparse
import json
import os
import subprocess
import sys

try:
    import numpy as np
    import torch
    from torch import nn
    import torch.nn.functional as F
except ImportError:
    print("skipped: python3-torch not installed")
    sys.exit(77)

failures = []


def check(ok: bool, what: str) -> None:
    print(("ok     " if ok else "FAILED ") + what)
    if not ok:
        failures.append(what)


def run(cmd, expect_ok=True):
    result = subprocess.run(cmd, capture_output=True, text=True)
    if expect_ok and result.returncode != 0:
        print(result.stdout, result.stderr)
    return result


def refused(make, expected: str, export) -> None:
    """export(make()) must raise ExportError whose message contains `expected`."""
    try:
        export(make())
    except export_safetensors.ExportError as e:
        check(expected in str(e), f"refused: {expected!r} in {str(e)[:160]!r}")
        return
    check(False, f"refused: {expected!r} (nothing raised)")


def rewrite(path_in: str, path_out: str, edit) -> None:
    """The file at path_in with edit(tensors, metadata) applied, written to path_out with
    the tensors in their original order."""
    with open(path_in, "rb") as f:
        data = f.read()
    tensors, metadata = export_safetensors.parse(data)
    (n,) = np.frombuffer(data[:8], dtype="<u8")
    order = [k for k in json.loads(data[8:8 + int(n)]) if k != "__metadata__"]
    edit(tensors, metadata)
    with open(path_out, "wb") as f:
        f.write(export_safetensors.serialize([(k, tensors[k]) for k in order], metadata))


def main() -> int:
    global export_safetensors
    parser = argparse.ArgumentParser()
    parser.add_argument("--scorer", required=True)
    parser.add_argument("--ope", default="")
    parser.add_argument("--examples", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--workdir", required=True)
    args = parser.parse_args()
    sys.path.insert(0, args.examples)
    import export_safetensors as es
    export_safetensors = es
    from age_model import AgeCtrModel, AgeDgu, Field

    os.makedirs(args.workdir, exist_ok=True)
    model_path = os.path.join(args.workdir, "obd_model.safetensors")
    log = os.path.join(args.data, "men.csv")

    # 1-2. Train, export, load and score in C++.
    r = run([sys.executable, os.path.join(args.examples, "train_obd.py"), "--log", log, "--rows", "3000",
             "--epochs", "2", "--out", model_path])
    print(r.stdout.strip())
    check(r.returncode == 0 and os.path.exists(model_path), "train_obd.py trained and exported the model and DGU")
    r = run([args.scorer, model_path, "--candidates", "6"])
    print(r.stdout.strip())
    check(r.returncode == 0 and "probes verified" in r.stdout and "DGU 16" in r.stdout
          and len([l for l in r.stdout.splitlines() if l.strip()[:1].isdigit()]) == 6,
          "score_exported loaded the file (probes verified, DGU) and ranked 6 candidates")
    if args.ope:
        r = run([args.ope, "evaluate", "--log", log, "--items", os.path.join(args.data, "item_context.csv"),
                 "--policy", "greedy", "--model", model_path])
        print(r.stdout.strip()[-400:])
        check(r.returncode == 0 and "| SNIPS |" in r.stdout, "age-ope evaluated the PyTorch model's greedy policy")

    # 3. What the exporter refuses.
    fields = [Field("user_id", "user", "categorical", dim=4, rows=50), Field("item_id", "item", "categorical", dim=4,
                                                                           rows=50)]

    class GeluModule(AgeCtrModel):
        def __init__(self):
            super().__init__(fields, [8])
            self.act = nn.GELU()

        def tower(self, h, masks=None):
            return self.layers[1](self.act(self.layers[0](h)))[:, 0]

    class GeluFunctional(AgeCtrModel):
        def tower(self, h, masks=None):
            return self.layers[1](F.gelu(self.layers[0](h)))[:, 0]

    class WithBatchNorm(AgeCtrModel):
        def __init__(self):
            super().__init__(fields, [8])
            self.norm = nn.BatchNorm1d(8)

    class Scale(nn.Module):
        def forward(self, x):
            return 2 * x

    class WithUnknown(AgeCtrModel):
        def __init__(self):
            super().__init__(fields, [8])
            self.scale = Scale()

    class WithParameter(AgeCtrModel):
        def __init__(self):
            super().__init__(fields, [8])
            self.temperature = nn.Parameter(torch.ones(1))

    def patched():
        m = AgeCtrModel(fields, [8])
        m.tower = lambda h, masks=None: torch.tanh(h.sum(1))
        return m

    class DguWithNorm(AgeDgu):
        def __init__(self):
            super().__init__(8, [8])
            self.norm = nn.LayerNorm(8)

    export = lambda m: es.model_bytes(m)  # noqa: E731
    refused(GeluModule, "module 'act' (GELU) cannot be exported", export)
    refused(lambda: GeluFunctional(fields, [8]), "GeluFunctional.tower() overrides AgeCtrModel.tower()", export)
    refused(WithBatchNorm, "module 'norm' (BatchNorm1d) cannot be exported", export)
    refused(WithUnknown, "module 'scale' (Scale) cannot be exported", export)
    refused(WithParameter, "parameter 'temperature' [1] cannot be exported", export)
    refused(patched, "attribute 'tower' replaces AgeCtrModel.tower()", export)
    refused(DguWithNorm, "module 'norm' (LayerNorm) cannot be exported",
            lambda d: es.model_bytes(AgeCtrModel(fields, [8]), dgu=d))
    refused(lambda: AgeDgu(5, [8]), "dgu: item_dim 5, expected the model's item_dim 4",
            lambda d: es.model_bytes(AgeCtrModel(fields, [8]), dgu=d))

    # 4. Files changed after export are refused at load, naming what is wrong.
    def bias_edit(tensors, metadata):
        tensors["tower.2.bias"] = tensors["tower.2.bias"] + np.float32(0.25)

    def dgu_edit(tensors, metadata):
        w = tensors["dgu.0.weight"].copy()
        w[0, 0] += np.float32(0.5)
        tensors["dgu.0.weight"] = w

    def gelu_config(tensors, metadata):
        config = json.loads(metadata["age.config"])
        config["activation"] = "gelu"
        metadata["age.config"] = json.dumps(config, separators=(",", ":"))

    for name, edit, expected in [("edited_bias", bias_edit, "metadata 'age.probes.tower': probe 0: logit computed"),
                                 ("edited_dgu", dgu_edit, "metadata 'age.probes.dgu': probe"),
                                 ("gelu", gelu_config, "activation 'gelu' is not one this build's tower evaluates")]:
        path = os.path.join(args.workdir, name + ".safetensors")
        rewrite(model_path, path, edit)
        r = run([args.scorer, path], expect_ok=False)
        check(r.returncode == 1 and expected in r.stderr and path in r.stderr,
              f"C++ refused {name}: {r.stderr.strip()[:220]!r}")
    try:
        es.load_model(os.path.join(args.workdir, "gelu.safetensors"))
        check(False, "PyTorch load_model refused the gelu config (nothing raised)")
    except ValueError as e:
        check("activation 'gelu'" in str(e), f"PyTorch load_model refused the gelu config: {e}")

    # 5. A model and DGU exported together read back in PyTorch with the same outputs.
    model, dgu = AgeCtrModel(fields, [8]), AgeDgu(4, [8])
    path = os.path.join(args.workdir, "small.safetensors")
    es.export_model(model, path, {"k": "v"}, dgu=dgu)
    back, metadata = es.load_model(path)
    dgu_back = es.load_dgu(path)
    h, items = torch.randn(5, 8), torch.randn(5, 4)
    with torch.no_grad():
        check(torch.equal(dgu(items), dgu_back(items)) and torch.equal(model.tower(h), back.tower(h))
              and metadata == {"k": "v"}, "a model and its DGU read back in PyTorch with the same outputs")
    r = run([args.scorer, path])
    check(r.returncode == 0 and "DGU 8" in r.stdout, "and load in C++ (probes verified)")

    print(f"{len(failures)} failed" if failures else "all checks passed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
