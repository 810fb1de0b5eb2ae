"""A PyTorch module with the architecture of age's EmbeddingCtrModel.

    h = [user fields in layout order | item fields in layout order]
    logit = Linear(ReLU(... ReLU(Linear(h)) ...)),  y = sigmoid(logit)

- categorical field: nn.Embedding(rows, dim), one id;
- multi-hot field: the same table, a bag of ids pooled by sum or mean (an empty bag is 0);
- dense field: the values themselves;
- ids are 64-bit and hashed into the table's rows exactly as age::hash_row does, so
  raw ids give the same embedding in C++ and here.

Field names must be valid nn.ModuleDict keys (no '.'). export_safetensors.py writes this
module in age's safetensors layout and reads such files back. AgeDgu is the Dynamic Gating
Unit's tower (item embedding -> ReLU MLP -> logit of the item's average CTR).

The hidden activation is ReLU, the only one age's C++ tower evaluates; the exporter refuses
a model whose arithmetic differs (another activation, normalisation layers, extra modules
or parameters, an overridden tower), so that a file never loads with other scores than the
module gave.
"""

from dataclasses import dataclass
from typing import List, Optional, Sequence

import torch
from torch import nn
import torch.nn.functional as F

from age_hash import hash_row  # noqa: F401  (re-exported: the row of an id, as age hashes it)

SIDES = ("user", "item")
KINDS = ("categorical", "multi_hot", "dense")
# The hidden activation of age's tower (recorded in the config as "activation").
ACTIVATION = "relu"
POOLINGS = ("sum", "mean")

@dataclass
class Field:
    name: str
    side: str  # "user" or "item"
    kind: str  # "categorical", "multi_hot" or "dense"
    dim: int
    rows: int = 0  # table fields only
    pooling: str = "sum"  # multi_hot only

    def has_table(self) -> bool:
        return self.kind != "dense"

    def check(self) -> None:
        if not self.name or "." in self.name:
            raise ValueError(f"field name {self.name!r}: must be non-empty and contain no '.'")
        if self.side not in SIDES:
            raise ValueError(f"field {self.name!r}: side {self.side!r}, expected one of {SIDES}")
        if self.kind not in KINDS:
            raise ValueError(f"field {self.name!r}: kind {self.kind!r}, expected one of {KINDS}")
        if self.dim <= 0:
            raise ValueError(f"field {self.name!r}: dim must be > 0, got {self.dim}")
        if self.has_table() and self.rows <= 0:
            raise ValueError(f"field {self.name!r}: rows must be > 0, got {self.rows}")
        if self.kind == "multi_hot" and self.pooling not in POOLINGS:
            raise ValueError(f"field {self.name!r}: pooling {self.pooling!r}, expected one of {POOLINGS}")


class AgeCtrModel(nn.Module):
    """Embedding tables + MLP tower over h = [user | item], one output logit."""

    def __init__(self, fields: Sequence[Field], hidden: Sequence[int]):
        super().__init__()
        names = set()
        for f in fields:
            f.check()
            if f.name in names:
                raise ValueError(f"field {f.name!r}: declared twice")
            names.add(f.name)
        self.fields: List[Field] = list(fields)
        self.hidden: List[int] = [int(h) for h in hidden]
        self.user_fields = [f for f in self.fields if f.side == "user"]
        self.item_fields = [f for f in self.fields if f.side == "item"]
        self.user_dim = sum(f.dim for f in self.user_fields)
        self.item_dim = sum(f.dim for f in self.item_fields)
        if self.item_dim == 0:
            raise ValueError("the model needs at least one item field")
        self.embeddings = nn.ModuleDict(
            {f.name: nn.Embedding(f.rows, f.dim) for f in self.fields if f.has_table()})
        sizes = [self.user_dim + self.item_dim] + self.hidden + [1]
        self.layers = nn.ModuleList(nn.Linear(sizes[i], sizes[i + 1]) for i in range(len(sizes) - 1))

    # --- the tower -------------------------------------------------------------------
    def tower(self, h: torch.Tensor, masks: Optional[Sequence[torch.Tensor]] = None) -> torch.Tensor:
        """Logits [N] of inputs h [N, input_dim]. masks: optional dropout sample, one
        tensor per hidden layer, [N, H_l] or [1, H_l], multiplied after the ReLU (values 0
        or 1/(1-p), as age::DropoutMask)."""
        x = h
        for l, layer in enumerate(self.layers):
            x = layer(x)
            if l < len(self.hidden):
                x = F.relu(x)
                if masks is not None:
                    x = x * masks[l]
        return x[:, 0]

    def logits(self, user: torch.Tensor, items: torch.Tensor,
               masks: Optional[Sequence[torch.Tensor]] = None) -> torch.Tensor:
        """user [user_dim] shared by all candidates or [N, user_dim]; items [N, item_dim]."""
        if user.dim() == 1:
            user = user.unsqueeze(0).expand(items.shape[0], -1)
        return self.tower(torch.cat([user, items], dim=1), masks)

    # --- raw features -> embeddings --------------------------------------------------
    def embed(self, side: str, entities: Sequence[Sequence[dict]]) -> torch.Tensor:
        """Embeddings [N, side_dim] of N users or items. Each entity is a list with one
        entry per field of that side, in layout order: {"ids": [...]} for categorical (one
        id) and multi-hot fields, {"values": [...]} for dense fields."""
        side_fields = self.user_fields if side == "user" else self.item_fields
        param = next(self.parameters())
        parts = []
        for k, f in enumerate(side_fields):
            if f.kind == "dense":
                vals = [e[k]["values"] for e in entities]
                for v in vals:
                    if len(v) != f.dim:
                        raise ValueError(f"dense field {f.name!r}: expected {f.dim} values, got {len(v)}")
                parts.append(torch.tensor(vals, dtype=param.dtype, device=param.device).reshape(len(entities), f.dim))
                continue
            rows, offsets = [], []
            for e in entities:
                ids = e[k]["ids"]
                if f.kind == "categorical" and len(ids) != 1:
                    raise ValueError(f"categorical field {f.name!r}: expected 1 id, got {len(ids)}")
                offsets.append(len(rows))
                rows.extend(hash_row(f.name, i, f.rows) for i in ids)
            weight = self.embeddings[f.name].weight
            mode = "mean" if (f.kind == "multi_hot" and f.pooling == "mean") else "sum"
            # embedding_bag gives 0 for an empty bag in both modes, as age does.
            parts.append(F.embedding_bag(torch.tensor(rows, dtype=torch.long, device=weight.device),
                                         weight, torch.tensor(offsets, dtype=torch.long, device=weight.device),
                                         mode=mode))
        if not parts:
            return torch.zeros(len(entities), 0, dtype=param.dtype, device=param.device)
        return torch.cat(parts, dim=1)

    def forward(self, user: Sequence[dict], items: Sequence[Sequence[dict]],
                masks: Optional[Sequence[torch.Tensor]] = None) -> torch.Tensor:
        """Logits [N] of one request: one user's features, N candidates' features."""
        u = self.embed("user", [user])[0]
        return self.logits(u, self.embed("item", items), masks)

    # --- configuration as age stores it ------------------------------------------------
    def config(self) -> dict:
        """The "age.config" metadata, with age's key order."""
        fields = []
        for f in self.fields:
            entry = {"name": f.name, "side": f.side, "kind": f.kind, "dim": f.dim}
            if f.has_table():
                entry["rows"] = f.rows
            if f.kind == "multi_hot":
                entry["pooling"] = f.pooling
            fields.append(entry)
        return {"format": "age.embedding_ctr", "version": 1, "fields": fields, "hidden": list(self.hidden),
                "activation": ACTIVATION}

    @staticmethod
    def from_config(config: dict) -> "AgeCtrModel":
        if config.get("format") != "age.embedding_ctr" or config.get("version") != 1:
            raise ValueError(f"not an age.embedding_ctr version 1 config: {config.get('format')!r} "
                             f"version {config.get('version')!r}")
        check_activation(config)
        fields = [Field(name=f["name"], side=f["side"], kind=f["kind"], dim=int(f["dim"]),
                        rows=int(f.get("rows", 0)), pooling=f.get("pooling", "sum"))
                  for f in config["fields"]]
        return AgeCtrModel(fields, config["hidden"])


def check_activation(config: dict) -> None:
    """A config's "activation" must be ReLU (absent: written before the key existed)."""
    activation = config.get("activation", ACTIVATION)
    if activation != ACTIVATION:
        raise ValueError(f"activation {activation!r}: age's tower evaluates {ACTIVATION!r} only")


class AgeDgu(nn.Module):
    """The Dynamic Gating Unit's tower: item embedding [N, item_dim] -> ReLU MLP -> logit of
    the item's average CTR [N]. Train it on the clicks of the same samples as the model,
    with a stop-gradient into the item embeddings: dgu(model.embed("item", ...).detach())."""

    def __init__(self, item_dim: int, hidden: Sequence[int] = (16,)):
        super().__init__()
        if item_dim <= 0:
            raise ValueError(f"item_dim must be > 0, got {item_dim}")
        self.item_dim = int(item_dim)
        self.hidden: List[int] = [int(h) for h in hidden]
        sizes = [self.item_dim] + self.hidden + [1]
        self.layers = nn.ModuleList(nn.Linear(sizes[i], sizes[i + 1]) for i in range(len(sizes) - 1))

    def forward(self, items: torch.Tensor) -> torch.Tensor:
        x = items
        for l, layer in enumerate(self.layers):
            x = layer(x)
            if l < len(self.hidden):
                x = F.relu(x)
        return x[:, 0]

    def config(self) -> dict:
        """The "age.tower.dgu" metadata, with age's key order."""
        return {"version": 1, "user_dim": 0, "item_dim": self.item_dim, "hidden": list(self.hidden),
                "activation": ACTIVATION}

    @staticmethod
    def from_config(config: dict) -> "AgeDgu":
        if config.get("version") != 1 or config.get("user_dim", 0) != 0:
            raise ValueError(f"not a DGU tower config (version 1, user_dim 0): {config}")
        check_activation(config)
        return AgeDgu(int(config["item_dim"]), config["hidden"])
