#!/usr/bin/python3
"""RegMean and RegMean++ for a Llama-style decoder in PyTorch, computed as FusionBench computes
them, for bench/regmean_llm.sh to time against amalgam on the same models and token ids.

    torch_regmean_llm.py METHOD OUT.safetensors --alpha A --threads T --batch-size B \
        MODEL IDS.jsonl [MODEL IDS.jsonl ...]

METHOD is regmean or regmean_plusplus. IDS.jsonl holds one record per line, {"ids": [...]}
(`amalgam tokenize MODEL --file TEXTS --json`), already cut to the maximum length. As in
FusionBench (fusion_bench/method/regmean): every linear layer of the blocks has a forward hook
adding its input's Gram X^T X in float32 (q, k and v each their own, gate and up each their
own, as nn.Linear modules see them; padding rows left out, as amalgam leaves them out); all
models' Grams are held in memory; each linear's off-diagonal is scaled by alpha, and the merged
weight is torch.linalg.solve(sum G~_t, sum G~_t W_t^T)^T in float32; every other parameter is
the mean. The full forward runs, LM head included, as FusionBench's model(**batch) does.
RegMean++ (fusion_bench/method/regmean_plusplus) merges block by block: each model's hidden
states enter block l after the merged blocks before it, its Grams are taken there, block l is
merged, and every stream goes on through the merged block. transformers is not packaged in
Debian, so the Llama forward is written out (bench/torch_lm_forward.py). Prints one JSON
object: the seconds of each phase.
"""
import json
import math
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

from torch_lm_forward import inv_freq, rms_norm, rotate_half
from torch_safetensors import load_checkpoint

LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
           "mlp.up_proj", "mlp.down_proj")


class Grams:
    """The forward hooks' accumulators: name -> X^T X over the unpadded rows."""

    def __init__(self):
        self.sums = {}
        self.keep = None  # [b * n] bool: the rows that are tokens, not padding

    def linear(self, name, x, weight):
        if self.keep is not None:
            rows = x.reshape(-1, x.shape[-1])[self.keep]
            g = rows.T @ rows
            self.sums[name] = self.sums[name] + g if name in self.sums else g
        return F.linear(x, weight)


def block(w, cfg, i, x, cos, sin, mask, grams):
    d, heads = cfg["hidden_size"], cfg["num_attention_heads"]
    kv, eps = cfg.get("num_key_value_heads", heads), cfg.get("rms_norm_eps", 1e-6)
    hd = cfg.get("head_dim", d // heads)
    b, n, _ = x.shape
    p = f"model.layers.{i}."
    lin = lambda name, v: grams.linear(p + name + ".weight", v, w[p + name + ".weight"])
    h = rms_norm(x, w[p + "input_layernorm.weight"], eps)
    q = lin("self_attn.q_proj", h).view(b, n, heads, hd).transpose(1, 2)
    k = lin("self_attn.k_proj", h).view(b, n, kv, hd).transpose(1, 2)
    v = lin("self_attn.v_proj", h).view(b, n, kv, hd).transpose(1, 2)
    q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
    k, v = k.repeat_interleave(heads // kv, dim=1), v.repeat_interleave(heads // kv, dim=1)
    attn = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(hd) + mask, dim=-1) @ v
    x = x + lin("self_attn.o_proj", attn.transpose(1, 2).reshape(b, n, heads * hd))
    h = rms_norm(x, w[p + "post_attention_layernorm.weight"], eps)
    gate = F.silu(lin("mlp.gate_proj", h)) * lin("mlp.up_proj", h)
    return x + lin("mlp.down_proj", gate)


def rotary(cfg, n):
    hd = cfg.get("head_dim", cfg["hidden_size"] // cfg["num_attention_heads"])
    angles = torch.outer(torch.arange(n, dtype=torch.float32), inv_freq(cfg, hd))
    return torch.cat((angles, angles), -1).cos(), torch.cat((angles, angles), -1).sin()


def batches(ids, size):
    """Right-padded batches: (ids [b, n], keep [b * n])."""
    for s in range(0, len(ids), size):
        chunk = ids[s:s + size]
        n = max(len(r) for r in chunk)
        t = torch.zeros(len(chunk), n, dtype=torch.long)
        keep = torch.zeros(len(chunk), n, dtype=torch.bool)
        for r, row in enumerate(chunk):
            t[r, :len(row)] = torch.tensor(row)
            keep[r, :len(row)] = True
        yield t, keep.reshape(-1)


def full_forward(w, cfg, ids, keep, grams):
    """The whole model, LM head included (FusionBench runs model(**batch))."""
    n = ids.shape[1]
    cos, sin = rotary(cfg, n)
    mask = torch.full((n, n), float("-inf")).triu(1)
    x = w["model.embed_tokens.weight"][ids]
    grams.keep = keep
    for i in range(cfg["num_hidden_layers"]):
        x = block(w, cfg, i, x, cos, sin, mask, grams)
    x = rms_norm(x, w["model.norm.weight"], cfg.get("rms_norm_eps", 1e-6))
    head = w["model.embed_tokens.weight"] if cfg.get("tie_word_embeddings", False) else w["lm_head.weight"]
    return x @ head.T


def reduce_non_diagonal(g, alpha):
    return g * alpha + torch.diag(torch.diag(g)) * (1 - alpha)


def solve_linear(name, weights, grams, alpha):
    """FusionBench's merging_with_regmean_weights for one linear."""
    sum_gram = sum_gram_w = None
    for w, g in zip(weights, grams):
        g = reduce_non_diagonal(g[name], alpha)
        gw = g @ w[name].T
        sum_gram = g if sum_gram is None else sum_gram + g
        sum_gram_w = gw if sum_gram_w is None else sum_gram_w + gw
    return torch.linalg.solve(sum_gram, sum_gram_w).T.contiguous()


def mean_of(name, weights):
    return sum(w[name] for w in weights) / len(weights)


def regmean(cfg, weights, ids, batch_size, alpha, times):
    t0 = time.perf_counter()
    grams = []
    for w, rows in zip(weights, ids):
        g = Grams()
        for t, keep in batches(rows, batch_size):
            full_forward(w, cfg, t, keep, g)
        grams.append(g.sums)
    times["statistics_seconds"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    merged = {}
    for name in weights[0]:
        merged[name] = solve_linear(name, weights, grams, alpha) if name in grams[0] else mean_of(name, weights)
    times["merge_seconds"] = time.perf_counter() - t0
    return merged


def regmean_plusplus(cfg, weights, ids, batch_size, alpha, times):
    """Block by block on the merged stream; every model's hidden states held in memory."""
    t0 = time.perf_counter()
    merged = {name: mean_of(name, weights) for name in weights[0] if not name.startswith("model.layers.")}
    streams = []  # per model: [(hidden [b, n, d], keep)]
    for rows in ids:
        streams.append([(merged["model.embed_tokens.weight"][t], keep) for t, keep in batches(rows, batch_size)])
    for i in range(cfg["num_hidden_layers"]):
        prefix = f"model.layers.{i}."
        grams = []
        for w, stream in zip(weights, streams):
            g = Grams()
            for x, keep in stream:
                n = x.shape[1]
                cos, sin = rotary(cfg, n)
                g.keep = keep
                block(w, cfg, i, x, cos, sin, torch.full((n, n), float("-inf")).triu(1), g)
            grams.append(g.sums)
        for name in weights[0]:
            if name.startswith(prefix):
                merged[name] = solve_linear(name, weights, grams, alpha) if name in grams[0] else mean_of(name, weights)
        off = Grams()
        for s, stream in enumerate(streams):
            out = []
            for x, keep in stream:
                n = x.shape[1]
                cos, sin = rotary(cfg, n)
                out.append((block(merged, cfg, i, x, cos, sin, torch.full((n, n), float("-inf")).triu(1), off), keep))
            streams[s] = out
    times["merge_seconds"] = time.perf_counter() - t0
    return merged


def save_safetensors(path, tensors):
    header, offset, blobs = {}, 0, []
    for name, t in tensors.items():
        b = t.contiguous().numpy().astype(np.float32).tobytes()
        header[name] = {"dtype": "F32", "shape": list(t.shape), "data_offsets": [offset, offset + len(b)]}
        offset += len(b)
        blobs.append(b)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(len(h).to_bytes(8, "little") + h)
        for b in blobs:
            f.write(b)


def main():
    args = sys.argv[1:]

    def option(name, default):
        if name not in args:
            return default
        i = args.index(name)
        value = args[i + 1]
        del args[i:i + 2]
        return value

    alpha = float(option("--alpha", "0.5"))
    threads = int(option("--threads", "2"))
    batch_size = int(option("--batch-size", "8"))
    method, out, pairs = args[0], args[1], args[2:]
    torch.set_num_threads(threads)
    times = {"torch_version": torch.__version__, "threads": threads, "method": method}
    t0 = time.perf_counter()
    models, id_files = pairs[0::2], pairs[1::2]
    cfg = json.load(open(f"{models[0]}/config.json"))
    weights = [load_checkpoint(m) for m in models]
    ids = [[json.loads(line)["ids"] for line in open(f)] for f in id_files]
    times["load_seconds"] = time.perf_counter() - t0
    times["tokens"] = sum(len(r) for rows in ids for r in rows)
    with torch.no_grad():
        merged = (regmean if method == "regmean" else regmean_plusplus)(cfg, weights, ids, batch_size, alpha, times)
    t0 = time.perf_counter()
    save_safetensors(out, merged)
    times["save_seconds"] = time.perf_counter() - t0
    print(json.dumps(times, indent=2))


if __name__ == "__main__":
    main()
