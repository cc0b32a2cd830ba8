#!/usr/bin/env python3
"""The reference a Python user would write: the same merges in NumPy.

Reads the checkpoints tensor by tensor through np.memmap (no torch, no safetensors package),
computes in float32, and writes one BF16 safetensors file. Used by merge_throughput.sh to
time amalgam against it; not part of amalgam.

usage: numpy_merge.py METHOD OUT.safetensors BASE_DIR MODEL_DIR [MODEL_DIR ...]
METHOD: linear | task_arithmetic | ties   (weights 1, lambda 0.3, density 0.2)
"""
import json
import os
import struct
import sys

import numpy as np

DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16, "I64": np.int64}


def open_checkpoint(directory):
    """name -> (path, dtype, shape, absolute offset), for a single file or a sharded dir."""
    index = os.path.join(directory, "model.safetensors.index.json")
    files = sorted(set(json.load(open(index))["weight_map"].values())) if os.path.exists(index) else [
        "model.safetensors"]
    tensors = {}
    for f in files:
        path = os.path.join(directory, f)
        with open(path, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(n))
        for name, e in header.items():
            if name != "__metadata__":
                tensors[name] = (path, e["dtype"], tuple(e["shape"]), 8 + n + e["data_offsets"][0])
    return tensors


def load(entry):
    path, dtype, shape, offset = entry
    raw = np.memmap(path, dtype=DTYPES[dtype], mode="r", offset=offset, shape=shape)
    if dtype == "BF16":
        return (raw.astype(np.uint32) << 16).view(np.float32)
    return np.asarray(raw)


def to_bf16(x):
    bits = x.astype(np.float32).view(np.uint32)
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)


def ties(base, models, density=0.2, lam=0.3):
    deltas = np.stack([m - base for m in models])
    k = int(density * deltas[0].size)
    for d in deltas:
        flat = d.reshape(-1)
        if k < flat.size:
            drop = np.argpartition(np.abs(flat), flat.size - k)[: flat.size - k]
            flat[drop] = 0
    elected = np.where(deltas.sum(axis=0) >= 0, 1.0, -1.0).astype(np.float32)
    agree = np.sign(deltas) == elected
    mixed = (deltas * agree).sum(axis=0) / np.maximum(agree.sum(axis=0), 1)
    return base + lam * mixed


def merge(method, base, models):
    if method == "linear":
        return sum(models) / len(models)
    if method == "task_arithmetic":
        return base + 0.3 * sum(m - base for m in models)
    if method == "ties":
        return ties(base, models)
    raise SystemExit(f"unknown method {method}")


def main():
    method, out = sys.argv[1], sys.argv[2]
    base_ck = open_checkpoint(sys.argv[3])
    model_cks = [open_checkpoint(d) for d in sys.argv[4:]]
    header, chunks, offset = {"__metadata__": {"format": "pt"}}, [], 0
    with open(out + ".data", "wb") as data:
        for name, entry in base_ck.items():
            if entry[1] == "I64":
                arr = np.asarray(np.memmap(entry[0], dtype=np.int64, mode="r", offset=entry[3], shape=entry[2]))
                dtype, payload = "I64", arr.tobytes()
            else:
                base = load(entry) if method != "linear" else None
                merged = merge(method, base, [load(ck[name]) for ck in model_cks])
                dtype, payload = "BF16", to_bf16(merged).tobytes()
            header[name] = {"dtype": dtype, "shape": list(entry[2]), "data_offsets": [offset, offset + len(payload)]}
            data.write(payload)
            offset += len(payload)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(out, "wb") as fh, open(out + ".data", "rb") as data:
        fh.write(struct.pack("<Q", len(text)) + text)
        while True:
            block = data.read(1 << 24)
            if not block:
                break
            fh.write(block)
        fh.flush()
        os.fsync(fh.fileno())
    os.remove(out + ".data")


if __name__ == "__main__":
    main()
