"""E6's sequence files: one ess.paper.e6.delimiters.DelimitedSequence (with its controls) as JSON.

Written field by field from the dataclass, so a field added to DelimitedSequence travels
without a change here: tensors as {"tensor": nested lists, "dtype"}, arrays as {"array",
"dtype", "shape"}, tuples as {"tuple": [...]}, dicts (`controls`) as {"dict": {...}}, a nested
sequence as {"sequence": {field: value}}.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import torch

from ess.paper.e6.delimiters import DelimitedSequence


def _encode(value):
    if isinstance(value, torch.Tensor):
        return {"tensor": value.tolist(), "dtype": str(value.dtype).removeprefix("torch.")}
    if isinstance(value, np.ndarray):
        return {"array": value.tolist(), "dtype": str(value.dtype), "shape": list(value.shape)}
    if isinstance(value, DelimitedSequence):
        return to_dict(value)
    if isinstance(value, dict):
        return {"dict": {key: _encode(item) for key, item in value.items()}}
    if isinstance(value, tuple):
        return {"tuple": [_encode(item) for item in value]}
    return value


def _decode(value):
    if not isinstance(value, dict):
        return value
    if "tensor" in value:
        return torch.tensor(value["tensor"], dtype=getattr(torch, value["dtype"]))
    if "array" in value:
        return np.asarray(value["array"], dtype=value["dtype"]).reshape(value["shape"])
    if "dict" in value:
        return {key: _decode(item) for key, item in value["dict"].items()}
    if "tuple" in value:
        return tuple(_decode(item) for item in value["tuple"])
    if "sequence" in value:
        return from_dict(value)
    raise ValueError(f"unknown encoded value with keys {sorted(value)}")


def to_dict(sequence: DelimitedSequence) -> dict:
    """{"sequence": {field: encoded value}}, JSON-serialisable."""
    fields = {f.name: _encode(getattr(sequence, f.name)) for f in dataclasses.fields(sequence)}
    return {"sequence": fields}


def from_dict(data: dict) -> DelimitedSequence:
    """The sequence `to_dict` encoded, with the same dtypes."""
    return DelimitedSequence(**{name: _decode(value) for name, value in data["sequence"].items()})


def write_sequence(sequence: DelimitedSequence, path: str | Path) -> None:
    Path(path).write_text(json.dumps(to_dict(sequence)) + "\n")


def read_sequence(path: str | Path, condition: str = "delimited") -> DelimitedSequence:
    """The sequence of `condition` ("delimited" or a control name) from a sequence file."""
    sequence = from_dict(json.loads(Path(path).read_text()))
    return sequence if condition == "delimited" else sequence.controls[condition]
