"""Safetensors checkpoints as float32 torch tensors, for the PyTorch comparisons in bench/
(the safetensors package is not in Debian's python3 packages). F32, F16 and BF16 tensors."""
import glob
import json
import struct

import numpy as np
import torch


def load_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        b, e = info["data_offsets"]
        raw = np.frombuffer(data[b:e], dtype={"BF16": np.uint16, "F16": np.float16, "F32": np.float32}[info["dtype"]])
        if info["dtype"] == "BF16":
            raw = (raw.astype(np.uint32) << 16).view(np.float32)
        out[name] = torch.from_numpy(raw.astype(np.float32).reshape(info["shape"]))
    return out


def load_checkpoint(directory):
    """Every *.safetensors shard of a checkpoint directory, merged into one dict."""
    w = {}
    for f in sorted(glob.glob(f"{directory}/*.safetensors")):
        w.update(load_safetensors(f))
    return w
