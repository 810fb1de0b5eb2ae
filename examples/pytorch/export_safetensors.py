#!/usr/bin/env python3
"""Write an AgeCtrModel (age_model.py) as an age model file, and read one back.

The file is safetensors, written here with plain struct/json (no `safetensors` package):

    [u64 little-endian N][N bytes JSON header, space-padded to 8][raw little-endian data]

    embedding.<field>  F32 [rows, dim]  = nn.Embedding.weight
    tower.<l>.weight   F32 [out, in]    = nn.Linear.weight
    tower.<l>.bias     F32 [out]
    __metadata__       {"age.config": <JSON of AgeCtrModel.config()>, free-form pairs...}

The bytes are exactly what age::save_model writes for the same model (same tensor order,
compact JSON, same padding), so C++ and Python files are interchangeable and comparable.

    /usr/bin/python3 export_safetensors.py demo.safetensors   # a random demo model
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


def model_bytes(model, metadata: Optional[Dict[str, str]] = None) -> bytes:
    meta = dict(metadata or {})
    for k in meta:
        if k.startswith("age."):
            raise ValueError(f"metadata key {k!r}: keys starting with 'age.' are reserved")
    meta["age.config"] = _dumps(model.config())
    return serialize(model_tensors(model), meta)


def export_model(model, path: str, metadata: Optional[Dict[str, str]] = None) -> None:
    """Writes the model to `path` atomically (temporary file + rename)."""
    data = model_bytes(model, metadata)
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


def load_model(path: str):
    """(AgeCtrModel, free-form metadata) from an age model file (written by C++ or here)."""
    import torch
    from age_model import AgeCtrModel

    with open(path, "rb") as f:
        tensors, metadata = parse(f.read())
    if "age.config" not in metadata:
        raise ValueError(f"{path}: missing metadata 'age.config' (not an age model file?)")
    model = AgeCtrModel.from_config(json.loads(metadata["age.config"]))
    expected = {name: array.shape for name, array in model_tensors(model)}
    model_names = set(expected)
    for name in tensors:
        # Extra towers ("age.tower.<prefix>") may share the file; they are not this module's.
        if name not in model_names and not any(name.startswith(k[len("age.tower."):] + ".")
                                               for k in metadata if k.startswith("age.tower.")):
            raise ValueError(f"{path}: unknown tensor {name!r}")
    with torch.no_grad():
        for name, shape in expected.items():
            if name not in tensors:
                raise ValueError(f"{path}: missing tensor {name!r}")
            if tuple(tensors[name].shape) != tuple(shape):
                raise ValueError(f"{path}: tensor {name!r} has shape {list(tensors[name].shape)}, expected {list(shape)}")
            if name.startswith("embedding."):
                param = model.embeddings[name[len("embedding."):]].weight
            else:
                _, l, what = name.split(".")
                param = getattr(model.layers[int(l)], what)
            param.copy_(torch.from_numpy(tensors[name].astype(np.float32)))
    return model, {k: v for k, v in metadata.items() if not k.startswith("age.")}


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
    export_model(demo_model(args.seed), args.path, {"exported_by": "examples/pytorch/export_safetensors.py"})
    print(f"wrote {args.path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
