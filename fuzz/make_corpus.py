#!/usr/bin/env python3
"""Writes the fuzzers' seed corpora (fuzz/corpus/<target>/): small valid files of each
format, in the layouts amalgam itself writes. Rerun after a format changes; the files are
checked in so that a fuzz run needs nothing but the repository."""
import json
import pathlib
import struct

ROOT = pathlib.Path(__file__).resolve().parent / "corpus"
SIZES = {"F64": 8, "F32": 4, "I64": 8, "I32": 4, "F16": 2, "BF16": 2, "I16": 2,
         "I8": 1, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}


def safetensors(tensors, metadata=None):
    """tensors: [(name, dtype, shape, bytes)] in file order; header padded as amalgam pads it."""
    header, data = {}, b""
    if metadata is not None:
        header["__metadata__"] = metadata
    for name, dtype, shape, raw in tensors:
        n = SIZES[dtype]
        for d in shape:
            n *= d
        assert len(raw) == n, name
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + n]}
        data += raw
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + data


def write(target, name, content):
    d = ROOT / target
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_bytes(content.encode() if isinstance(content, str) else content)


def f32(*values):
    return struct.pack(f"<{len(values)}f", *values)


def safetensors_seeds():
    fmt = {"format": "pt"}
    write("safetensors", "two_f32", safetensors(
        [("a", "F32", [2, 2], f32(1, 2, 3, 4)), ("b", "F32", [1], f32(-0.5))], fmt))
    write("safetensors", "every_dtype", safetensors(
        [(f"t.{d.lower()}", d, [2], bytes(range(2 * SIZES[d]))) for d in SIZES], fmt))
    write("safetensors", "empty_and_scalar", safetensors(
        [("empty", "F16", [0, 3], b""), ("scalar", "BF16", [], b"\x80\x3f")]))
    write("safetensors", "no_tensors", safetensors([], fmt))
    # Unaligned data and the writer's spacing left out: a file another tool might write.
    raw = json.dumps({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}).encode()
    write("safetensors", "unaligned", struct.pack("<Q", len(raw)) + raw + f32(2.5))


def checkpoint_index_seeds():
    # The shards beside the index are made by fuzz_checkpoint_index.cpp: a, b in 1; c in 2.
    s1, s2 = "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"
    write("checkpoint_index", "hf_index", json.dumps(
        {"metadata": {"total_size": 38}, "weight_map": {"a": s1, "b": s1, "c": s2}}, indent=2))
    write("checkpoint_index", "one_shard", json.dumps({"weight_map": {"a": s1, "b": s1}}))
    write("checkpoint_index", "escaping", json.dumps({"weight_map": {"a": "../outside.safetensors"}}))


def clip_config_seeds():
    tiny = {"model_type": "clip_vision_model", "hidden_size": 12, "intermediate_size": 20,
            "num_hidden_layers": 2, "num_attention_heads": 3, "image_size": 8, "patch_size": 4,
            "num_channels": 1, "projection_dim": 5, "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5}
    write("clip_config", "tiny_vision_config", json.dumps(tiny, indent=2))
    write("clip_config", "tiny_clip_config", json.dumps(
        {"model_type": "clip", "projection_dim": 5, "text_config": {"hidden_size": 8},
         "vision_config": {k: v for k, v in tiny.items() if k != "projection_dim"}}))
    write("clip_config", "vit_b32", json.dumps(
        {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
         "image_size": 224, "patch_size": 32, "hidden_act": "quick_gelu"}))


def merge_config_seeds():
    write("merge_config", "ties", """merge_method: ties
base_model: base
models:
  - model: a
    parameters:
      weight: 1.0
      density: [0.2, 0.8]
  - model: b
    parameters:
      weight: [{filter: mlp, value: 0.5}, {value: 1.0}]
      density: 0.5
parameters:
  normalize: true
  int8_mask: false
dtype: float32
out_dtype: bfloat16
""")
    write("merge_config", "slerp", """merge_method: slerp
base_model: a
models: [a, b]
parameters:
  t:
    - filter: self_attn
      value: [0, 0.5, 0.3, 0.7, 1]
    - filter: mlp
      value: [1, 0.5, 0.7, 0.3, 0]
    - value: 0.5
seed: 7
""")
    write("merge_config", "regmean", """merge_method: regmean
models:
  - model: a
    data: [task_a, task_b]
  - model: b
    stats: b.stats.safetensors
parameters: {alpha: 0.9}
tokenizer_source: base
""")


def task_seeds():
    sep = b"\n--train.safetensors--\n"
    info = {"version": 1, "name": "tiny", "classes": ["zero", "one"], "image_shape": [2, 2, 1],
            "splits": {"train": 3}}
    images = bytes(range(12))
    labels = struct.pack("<3q", 0, 1, 1)
    split = safetensors([("images", "U8", [3, 2, 2, 1], images), ("labels", "I64", [3], labels)], {"format": "pt"})
    write("task", "train_split", json.dumps(info, indent=2).encode() + sep + split)
    rgb = dict(info, image_shape=[1, 1, 3], splits={"train": 1, "test": 2})
    split = safetensors([("images", "U8", [1, 1, 1, 3], b"\x01\x02\x03"), ("labels", "I64", [1], struct.pack("<q", 1))])
    write("task", "rgb_missing_test", json.dumps(rgb).encode() + sep + split)
    write("task", "json_only", json.dumps(info))


def router_seeds():
    base = {"layer": 9, "site": "fc1", "token": "cls", "mode": "topk", "threshold": 0.2,
            "temperature": 1.0, "max_tasks": 3, "tasks": ["digits", "fashion", "letters"]}
    write("router", "topk", json.dumps(base, indent=2))
    write("router", "top1_mean", json.dumps(dict(base, token="mean", mode="top1", rank=4, tasks=["a"])))


if __name__ == "__main__":
    safetensors_seeds()
    checkpoint_index_seeds()
    clip_config_seeds()
    merge_config_seeds()
    task_seeds()
    router_seeds()
