# Shared by the *_torch_check.py scripts: reads the safetensors file a C++
# test wrote (its own small reader: 8-byte header length, JSON header, raw
# little-endian data) into torch tensors, and exits 77 when torch is missing
# so the test can skip visibly.
import json
import struct
import sys

try:
    import torch
except ImportError:
    sys.exit(77)

DTYPES = {"F32": torch.float32, "F64": torch.float64, "I64": torch.int64, "U8": torch.uint8}


def load(path):
    """Returns (tensors by name, the file's __metadata__ dict)."""
    with open(path, "rb") as f:
        blob = f.read()
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + n])
    meta = header.pop("__metadata__", {})
    data = bytearray(blob[8 + n:])
    tensors = {}
    for name, e in header.items():
        b, end = e["data_offsets"]
        tensors[name] = torch.frombuffer(data[b:end], dtype=DTYPES[e["dtype"]]).reshape(e["shape"]).clone()
    return tensors, meta
