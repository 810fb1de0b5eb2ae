#!/usr/bin/env python3
"""Write an AgeCtrModel (age_model.py) as an age model file, and read one back.

The file is safetensors, written here with plain struct/json (no `safetensors` package):

    [u64 little-endian N][N bytes JSON header, space-padded to 8][raw little-endian data]

    embedding.<field>  F32 [rows, dim]  = nn.Embedding.weight
    tower.<l>.weight   F32 [out, in]    = nn.Linear.weight
    tower.<l>.bias     F32 [out]
    dgu.<l>.weight, dgu.<l>.bias        the DGU's tower, when exported with the model
    __metadata__       {"age.config": <JSON of AgeCtrModel.config()>,
                        "age.probes.tower": load-time probes of the tower,
                        "age.tower.dgu", "age.probes.dgu": the DGU's shape and probes,
                        free-form pairs...}

The bytes are exactly what age::save_model (age::save_model_with_dgu with a DGU) writes for
the same model (same tensor order, compact JSON, same padding, the same probes), so C++
and Python files are interchangeable and comparable.

The exporter writes only what age evaluates exactly, and refuses anything else with
ExportError naming the module, parameter or method: a module other than the model's
embeddings and Linear layers (GELU, BatchNorm, LayerNorm, ...), a parameter or buffer the
file cannot hold, a subclass that overrides the tower's arithmetic, an activation other than
ReLU. It then checks the module against the file it is about to write: the module's own
tower, run in float64 on the probe inputs, must give the probes' logits.

Probes (include/age/io/probes.hpp): 8 inputs (fewer above 8192 inputs) chosen by a fixed
SplitMix64 rule, with the
tower's logit, input gradient and the scale of their terms computed in float64 from the
float32 weights and rounded to 7 digits; age::load_model recomputes them with its own
float32 passes and refuses the file when one is off by more than 1e-5 of its scale.

    /usr/bin/python3 export_safetensors.py demo.safetensors   # a random demo model and DGU
    /usr/bin/python3 export_safetensors.py --show demo.safetensors
"""

import argparse
import json
import os
import struct
import sys
import tempfile
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from age_hash import mix64

_DTYPES = {"F16": np.dtype("<f2"), "F32": np.dtype("<f4"), "F64": np.dtype("<f8")}


def _dumps(obj) -> str:
    # nlohmann::json::dump(): no spaces, UTF-8 kept as is.
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def serialize(tensors: Sequence[Tuple[str, np.ndarray]], metadata: Optional[Dict[str, str]] = None) -> bytes:
    """Safetensors bytes of (name, array) pairs, stored in the given order."""
    header = {}
    if metadata:
        header["__metadata__"] = {k: metadata[k] for k in sorted(metadata)}
    chunks, offset = [], 0
    for name, array in tensors:
        dtype = next((d for d, npd in _DTYPES.items() if npd == np.dtype(array.dtype).newbyteorder("<")), None)
        if dtype is None:
            raise ValueError(f"tensor {name!r}: dtype {array.dtype} is not F16/F32/F64")
        data = np.ascontiguousarray(array, dtype=_DTYPES[dtype]).tobytes()
        header[name] = {"dtype": dtype, "shape": list(array.shape), "data_offsets": [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    text = _dumps(header).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + b"".join(chunks)


def parse(data: bytes) -> Tuple[Dict[str, np.ndarray], Dict[str, str]]:
    """(tensors by name, metadata) of safetensors bytes, with the basic checks."""
    if len(data) < 8:
        raise ValueError(f"truncated: {len(data)} bytes")
    (n,) = struct.unpack("<Q", data[:8])
    if n > len(data) - 8:
        raise ValueError(f"truncated: header length {n}, file {len(data)} bytes")
    header = json.loads(data[8:8 + n].decode("utf-8"))
    buffer = memoryview(data)[8 + n:]
    metadata = header.pop("__metadata__", {})
    tensors, spans = {}, []
    for name, info in header.items():
        begin, end = info["data_offsets"]
        dtype = _DTYPES.get(info["dtype"])
        if dtype is None:
            raise ValueError(f"tensor {name!r}: unsupported dtype {info['dtype']}")
        count = int(np.prod(info["shape"], dtype=np.int64))
        if not 0 <= begin <= end <= len(buffer) or end - begin != count * dtype.itemsize:
            raise ValueError(f"tensor {name!r}: data_offsets {info['data_offsets']} do not fit shape "
                             f"{info['shape']} of {info['dtype']}")
        tensors[name] = np.frombuffer(buffer[begin:end], dtype=dtype).reshape(info["shape"]).copy()
        spans.append((begin, end))
    spans.sort()
    covered = 0
    for begin, end in spans:
        if begin != covered:
            raise ValueError(f"data buffer not covered contiguously at byte {begin}")
        covered = end
    if covered != len(buffer):
        raise ValueError(f"{len(buffer) - covered} trailing bytes in the data buffer")
    return tensors, metadata


class ExportError(ValueError):
    """The module holds something an age model file cannot represent exactly."""


# --- load-time probes (the rule of include/age/io/probes.hpp) ------------------------------
PROBE_COUNT = 8
PROBE_VALUE_BUDGET = 65536


def probe_count(input_dim: int) -> int:
    """age::probe_count: 8 probes, fewer for inputs wider than 8192 (2 * input_dim numbers each)."""
    return PROBE_COUNT if input_dim == 0 else max(1, min(PROBE_COUNT, PROBE_VALUE_BUDGET // input_dim))


def probe_inputs(k: int, attempt: int, dim: int) -> np.ndarray:
    """Attempt `attempt` of probe k: 24-bit SplitMix64 draws mapped to [-1, 1), exact in float32."""
    base = ((k * 64 + attempt) << 32)
    return np.array([((mix64(base + j) >> 40) - 8388608) / 8388608.0 for j in range(dim)], dtype=np.float64)


def reference_probe(layers: Sequence[Tuple[np.ndarray, np.ndarray]], x: np.ndarray) -> dict:
    """Logit, input gradient, their term scales and the kink margin of a ReLU MLP
    (layers: (W [out, in], b [out]) as float32 arrays) at x, in float64."""
    ws = [(np.asarray(w, dtype=np.float64), np.asarray(b, dtype=np.float64)) for w, b in layers]
    active, margin, largest = [], np.inf, 0.0
    h, ah = x, np.abs(x)
    for l, (w, b) in enumerate(ws):
        y, ay = w @ h + b, np.abs(w) @ ah + np.abs(b)
        largest = max(largest, float(np.max(ay)))
        if l + 1 < len(ws):
            nz = ay > 0
            if nz.any():
                margin = min(margin, float(np.min(np.abs(y[nz]) / ay[nz])))
            a = (y > 0).astype(np.float64)
            active.append(a)
            y, ay = y * a, ay * a
        h, ah = y, ay
    g, ag = np.ones(1), np.ones(1)
    for l in range(len(ws) - 1, -1, -1):
        w = ws[l][0]
        if l + 1 < len(ws):
            g, ag = g * active[l], ag * active[l]
        g, ag = w.T @ g, np.abs(w).T @ ag
        if ag.size:
            largest = max(largest, float(np.max(ag)))
    return {"input": x, "logit": float(h[0]), "logit_scale": float(ah[0]), "gradient": g,
            "gradient_scale": float(np.max(ag)) if ag.size else 0.0, "margin": margin, "largest": largest}


def probes_json(layers: Sequence[Tuple[np.ndarray, np.ndarray]], input_dim: int) -> Optional[str]:
    """The "age.probes.<prefix>" value of a tower, formatted as the C++ writer does; None
    when a term of its passes exceeds 1e30 (the C++ writer then writes no probes either)."""
    out = []
    limit = 1e30
    for k in range(probe_count(input_dim)):
        best = None
        for attempt in range(8):
            p = reference_probe(layers, probe_inputs(k, attempt, input_dim))
            if best is None or p["margin"] > best["margin"]:
                best = p
            if best["margin"] >= 1e-4:
                break
        values = [best["largest"], best["logit"], best["logit_scale"], best["gradient_scale"], *best["gradient"]]
        if not all(abs(v) <= limit for v in values):
            return None
        out.append('{"input":[' + ",".join("%.9g" % v for v in best["input"]) + "]"
                   + ',"logit":' + "%.7g" % best["logit"] + ',"logit_scale":' + "%.7g" % best["logit_scale"]
                   + ',"gradient":[' + ",".join("%.7g" % v for v in best["gradient"]) + "]"
                   + ',"gradient_scale":' + "%.7g" % best["gradient_scale"] + "}")
    return '{"version":1,"probes":[' + ",".join(out) + "]}"


# --- what the exporter can represent -------------------------------------------------------
def _check_structure(module, expected_modules: Dict[str, type], expected_params: set, owner: str) -> None:
    """Refuses any module, parameter or buffer outside the expected ones, naming it."""
    for name, sub in module.named_modules():
        if name not in expected_modules:
            raise ExportError(f"{owner}: module '{name}' ({type(sub).__name__}) cannot be exported: age's network is "
                              f"embeddings and Linear layers with ReLU between them; a file without this module "
                              f"would give other scores than the PyTorch model")
        if type(sub) is not expected_modules[name]:
            raise ExportError(f"{owner}: module '{name}' is a {type(sub).__name__}, expected exactly "
                              f"{expected_modules[name].__name__} (a subclass may compute something else)")
    for name, param in module.named_parameters():
        if name not in expected_params:
            raise ExportError(f"{owner}: parameter '{name}' {list(param.shape)} cannot be exported: it is not one of "
                              f"age's embedding tables or Linear weights and biases")
    for name, buf in module.named_buffers():
        raise ExportError(f"{owner}: buffer '{name}' {list(buf.shape)} cannot be exported: age's network has no "
                          f"state besides its weights (normalisation statistics change the arithmetic)")


def _check_methods(module, base: type, methods: Sequence[str]) -> None:
    cls = type(module)
    for method in methods:
        if method in vars(module):
            raise ExportError(f"{cls.__name__}: attribute '{method}' replaces {base.__name__}.{method}() on this "
                              f"instance; the file holds {base.__name__}'s arithmetic only")
        if getattr(cls, method) is not getattr(base, method):
            raise ExportError(f"{cls.__name__}.{method}() overrides {base.__name__}.{method}(): the file holds "
                              f"{base.__name__}'s arithmetic (Linear -> ReLU -> ... -> Linear) and cannot hold "
                              f"what the override computes")


def _check_linear_layers(module, owner: str) -> None:
    for l, layer in enumerate(module.layers):
        if layer.bias is None:
            raise ExportError(f"{owner}: module 'layers.{l}' (Linear) has no bias; age's layers always have one")


def check_model_exportable(model) -> None:
    """ExportError naming the first thing of `model` that an age model file cannot hold."""
    from age_model import ACTIVATION, AgeCtrModel
    if not isinstance(model, AgeCtrModel):
        raise ExportError(f"{type(model).__name__}: not an AgeCtrModel (examples/pytorch/age_model.py)")
    import torch.nn as nn
    expected = {"": type(model), "embeddings": nn.ModuleDict, "layers": nn.ModuleList}
    params = set()
    for f in model.fields:
        if f.has_table():
            expected[f"embeddings.{f.name}"] = nn.Embedding
            params.add(f"embeddings.{f.name}.weight")
    for l in range(len(model.layers)):
        expected[f"layers.{l}"] = nn.Linear
        params |= {f"layers.{l}.weight", f"layers.{l}.bias"}
    _check_structure(model, expected, params, type(model).__name__)
    for f in model.fields:
        if f.has_table():
            emb = model.embeddings[f.name]
            if emb.max_norm is not None:
                raise ExportError(f"{type(model).__name__}: module 'embeddings.{f.name}' (Embedding) has max_norm "
                                  f"{emb.max_norm}: the renormalisation at lookup is not in the file")
    _check_linear_layers(model, type(model).__name__)
    _check_methods(model, AgeCtrModel, ("tower", "logits", "embed", "forward"))
    if getattr(model, "activation", ACTIVATION) != ACTIVATION:
        raise ExportError(f"{type(model).__name__}: activation {model.activation!r}: age's tower evaluates "
                          f"{ACTIVATION!r} only")


def check_dgu_exportable(dgu) -> None:
    from age_model import AgeDgu
    if not isinstance(dgu, AgeDgu):
        raise ExportError(f"dgu: {type(dgu).__name__} is not an AgeDgu (examples/pytorch/age_model.py)")
    import torch.nn as nn
    expected = {"": type(dgu), "layers": nn.ModuleList}
    params = set()
    for l in range(len(dgu.layers)):
        expected[f"layers.{l}"] = nn.Linear
        params |= {f"layers.{l}.weight", f"layers.{l}.bias"}
    _check_structure(dgu, expected, params, "dgu " + type(dgu).__name__)
    _check_linear_layers(dgu, "dgu " + type(dgu).__name__)
    _check_methods(dgu, AgeDgu, ("forward",))


def _tower_layers(module) -> List[Tuple[np.ndarray, np.ndarray]]:
    return [(layer.weight.detach().cpu().float().numpy(), layer.bias.detach().cpu().float().numpy())
            for layer in module.layers]


def _self_check(run, layers, input_dim: int, owner: str) -> None:
    """The module's own forward, in float64 on the probe inputs, must give the logits of the
    network the file holds (catches what the structural checks cannot see)."""
    import torch
    for k in range(probe_count(input_dim)):
        ref = reference_probe(layers, probe_inputs(k, 0, input_dim))
        with torch.no_grad():
            got = float(run(torch.from_numpy(ref["input"]).unsqueeze(0))[0])
        if not abs(got - ref["logit"]) <= 1e-6 * max(ref["logit_scale"], 1e-30):
            raise ExportError(f"{owner}: at probe input {k} the module's forward gives logit {got:.9g}, the network "
                              f"the file would hold gives {ref['logit']:.9g}: the module computes something the "
                              f"exporter does not see")


def _self_check_model(model) -> None:
    import copy
    m = copy.deepcopy(model).double().eval()
    _self_check(lambda h: m.tower(h), _tower_layers(model), model.user_dim + model.item_dim, type(model).__name__)


def _self_check_dgu(dgu) -> None:
    import copy
    m = copy.deepcopy(dgu).double().eval()
    _self_check(lambda h: m(h), _tower_layers(dgu), dgu.item_dim, "dgu " + type(dgu).__name__)


def model_tensors(model) -> List[Tuple[str, np.ndarray]]:
    """The model's tensors as age names them, in age's order, as float32."""
    out = []
    for f in model.fields:
        if f.has_table():
            out.append((f"embedding.{f.name}", model.embeddings[f.name].weight.detach().cpu().float().numpy()))
    for l, layer in enumerate(model.layers):
        out.append((f"tower.{l}.weight", layer.weight.detach().cpu().float().numpy()))
        out.append((f"tower.{l}.bias", layer.bias.detach().cpu().float().numpy()))
    for name, array in out:
        if not np.all(np.isfinite(array)):
            raise ValueError(f"tensor {name!r} has non-finite values; age would reject the file")
    return out


def tower_tensors(prefix: str, module) -> List[Tuple[str, np.ndarray]]:
    out = []
    for l, (w, b) in enumerate(_tower_layers(module)):
        out.append((f"{prefix}.{l}.weight", w))
        out.append((f"{prefix}.{l}.bias", b))
    for name, array in out:
        if not np.all(np.isfinite(array)):
            raise ValueError(f"tensor {name!r} has non-finite values; age would reject the file")
    return out


def _user_metadata(metadata: Optional[Dict[str, str]]) -> Dict[str, str]:
    meta = dict(metadata or {})
    for k in meta:
        if k.startswith("age."):
            raise ValueError(f"metadata key {k!r}: keys starting with 'age.' are reserved")
    return meta


def _add_dgu(tensors, meta, dgu, item_dim: Optional[int]) -> None:
    check_dgu_exportable(dgu)
    if item_dim is not None and dgu.item_dim != item_dim:
        raise ExportError(f"dgu: item_dim {dgu.item_dim}, expected the model's item_dim {item_dim}")
    _self_check_dgu(dgu)
    tensors += tower_tensors("dgu", dgu)
    meta["age.tower.dgu"] = _dumps(dgu.config())
    probes = probes_json(_tower_layers(dgu), dgu.item_dim)
    if probes is not None:
        meta["age.probes.dgu"] = probes


def model_bytes(model, metadata: Optional[Dict[str, str]] = None, dgu=None) -> bytes:
    """The file of `model` (and of its DGU), after the exporter's checks."""
    meta = _user_metadata(metadata)
    check_model_exportable(model)
    _self_check_model(model)
    meta["age.config"] = _dumps(model.config())
    probes = probes_json(_tower_layers(model), model.user_dim + model.item_dim)
    if probes is not None:
        meta["age.probes.tower"] = probes
    tensors = model_tensors(model)
    if dgu is not None:
        _add_dgu(tensors, meta, dgu, model.item_dim)
    return serialize(tensors, meta)


def dgu_bytes(dgu, metadata: Optional[Dict[str, str]] = None,
              extra_tensors: Sequence[Tuple[str, np.ndarray]] = ()) -> bytes:
    """A file holding the DGU (as age::save_dgu writes it), after `extra_tensors` (e.g. the
    embedding tables of a model that is not an AgeCtrModel; names must not start with "dgu.")."""
    meta = _user_metadata(metadata)
    tensors: List[Tuple[str, np.ndarray]] = list(extra_tensors)
    _add_dgu(tensors, meta, dgu, None)
    return serialize(tensors, meta)


def export_model(model, path: str, metadata: Optional[Dict[str, str]] = None, dgu=None) -> None:
    """Writes the model (and its DGU, read in C++ by age::load_dgu) to `path` atomically."""
    _write_atomic(path, model_bytes(model, metadata, dgu))


def export_dgu(dgu, path: str, metadata: Optional[Dict[str, str]] = None) -> None:
    """Writes the DGU alone to `path` atomically (age::load_dgu reads it)."""
    _write_atomic(path, dgu_bytes(dgu, metadata))


def _write_atomic(path: str, data: bytes) -> None:
    """Temporary file + fsync + rename: a failed export leaves the previous file."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".tmp.", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _read_file(path: str, key: str, what: str):
    """(tensors, metadata, parsed JSON of metadata[key]) of an age file."""
    with open(path, "rb") as f:
        tensors, metadata = parse(f.read())
    if key not in metadata:
        raise ValueError(f"{path}: missing metadata {key!r} ({what})")
    return tensors, metadata, json.loads(metadata[key])


def _copy_parameter(param, tensors, name: str, path: str) -> None:
    """param <- tensors[name], which must be present with param's shape."""
    import torch
    if name not in tensors:
        raise ValueError(f"{path}: missing tensor {name!r}")
    if tuple(tensors[name].shape) != tuple(param.shape):
        raise ValueError(f"{path}: tensor {name!r} has shape {list(tensors[name].shape)}, expected {list(param.shape)}")
    with torch.no_grad():
        param.copy_(torch.from_numpy(tensors[name].astype(np.float32)))


def load_model(path: str):
    """(AgeCtrModel, free-form metadata) from an age model file (written by C++ or here)."""
    from age_model import AgeCtrModel

    tensors, metadata, config = _read_file(path, "age.config", "not an age model file?")
    model = AgeCtrModel.from_config(config)
    model.eval()
    model_names = {name for name, _ in model_tensors(model)}
    for name in tensors:
        # Extra towers ("age.tower.<prefix>") may share the file; they are not this module's.
        if name not in model_names and not any(name.startswith(k[len("age.tower."):] + ".")
                                               for k in metadata if k.startswith("age.tower.")):
            raise ValueError(f"{path}: unknown tensor {name!r}")
    for name in sorted(model_names):
        if name.startswith("embedding."):
            param = model.embeddings[name[len("embedding."):]].weight
        else:
            _, l, what = name.split(".")
            param = getattr(model.layers[int(l)], what)
        _copy_parameter(param, tensors, name, path)
    return model, {k: v for k, v in metadata.items() if not k.startswith("age.")}


def load_dgu(path: str):
    """The AgeDgu stored in an age file under "dgu" (with a model, or alone)."""
    from age_model import AgeDgu

    tensors, _, config = _read_file(path, "age.tower.dgu", "no DGU in this file")
    dgu = AgeDgu.from_config(config)
    dgu.eval()
    for l, layer in enumerate(dgu.layers):
        _copy_parameter(layer.weight, tensors, f"dgu.{l}.weight", path)
        _copy_parameter(layer.bias, tensors, f"dgu.{l}.bias", path)
    return dgu


def demo_model(seed: int = 0):
    """A small random model with every kind of field."""
    import torch
    from age_model import AgeCtrModel, Field

    torch.manual_seed(seed)
    fields = [
        Field("user_id", "user", "categorical", dim=8, rows=1000),
        Field("user_tags", "user", "multi_hot", dim=4, rows=100, pooling="mean"),
        Field("user_age", "user", "dense", dim=1),
        Field("item_id", "item", "categorical", dim=8, rows=5000),
        Field("item_cats", "item", "multi_hot", dim=4, rows=50, pooling="sum"),
        Field("item_price", "item", "dense", dim=1),
    ]
    model = AgeCtrModel(fields, hidden=[32, 16])
    with torch.no_grad():
        for emb in model.embeddings.values():
            emb.weight.normal_(0.0, 0.05)
    return model


def main(argv: Sequence[str]) -> int:
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path")
    parser.add_argument("--seed", type=int, default=0, help="seed of the demo model")
    parser.add_argument("--show", action="store_true", help="load the file and print its layout instead")
    args = parser.parse_args(argv)
    if args.show:
        model, metadata = load_model(args.path)
        print(json.dumps(model.config(), indent=2))
        for k, v in metadata.items():
            print(f"metadata {k} = {v}")
        return 0
    from age_model import AgeDgu
    model = demo_model(args.seed)
    export_model(model, args.path, {"exported_by": "examples/pytorch/export_safetensors.py"},
                 dgu=AgeDgu(model.item_dim, [16]))
    print(f"wrote {args.path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
