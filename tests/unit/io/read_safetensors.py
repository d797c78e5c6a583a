#!/usr/bin/env python3
# A safetensors reader using only json, struct and torch.frombuffer: proves a
# file hpdl wrote loads in PyTorch without the safetensors package. Prints one
# line per tensor: name, dtype, shape, sum. Exits 77 when torch is missing.
import json
import struct
import sys

try:
    import torch
except ImportError:
    sys.exit(77)

DTYPES = {"F32": torch.float32, "F64": torch.float64, "BF16": torch.bfloat16, "F16": torch.float16,
          "I64": torch.int64, "I32": torch.int32, "U8": torch.uint8}

with open(sys.argv[1], "rb") as f:
    blob = f.read()
(n,) = struct.unpack("<Q", blob[:8])
header = json.loads(blob[8:8 + n])
data = bytearray(blob[8 + n:])
for name in sorted(k for k in header if k != "__metadata__"):
    e = header[name]
    b, end = e["data_offsets"]
    t = torch.frombuffer(data[b:end], dtype=DTYPES[e["dtype"]]).reshape(e["shape"])
    print(name, str(t.dtype).replace("torch.", ""), list(t.shape), int(t.sum().item()))
