#!/usr/bin/python3
"""PyTorch's time for the same Llama scoring that bench/lm_forward timed, and how far apart
the two per-token negative log-likelihoods are.

    torch_lm_forward.py CHECKPOINT DIR [--runs 3] [--threads 2]

DIR is what `lm_forward --save DIR` left: ids.json (the sequences) and nll.json (amalgam's
-log p of each next token). transformers is not packaged in Debian, so the forward below is
Hugging Face's LlamaForCausalLM written out in float32 torch operations (the same math:
RMSNorm, rotary embeddings with Llama 3 scaling, grouped-query attention under a causal mask,
SwiGLU, tied or untied output layer), the weights converted from their stored dtype once.
Prints one JSON object.
"""
import json
import math
import sys
import time

import torch

from torch_safetensors import load_checkpoint


def inv_freq(cfg, hd):
    theta = cfg.get("rope_theta", 10000.0)
    inv = 1.0 / theta ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd)
    s = cfg.get("rope_scaling") or {}
    if s.get("rope_type", s.get("type")) == "llama3":  # transformers' _compute_llama3_parameters
        factor, low, high = s["factor"], s["low_freq_factor"], s["high_freq_factor"]
        old = s["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv
        scaled = torch.where(wavelen > old / low, inv / factor, inv)
        smooth = (old / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wavelen < old / high) & ~(wavelen > old / low)
        inv = torch.where(medium, smoothed, scaled)
    return inv.float()


def rms_norm(x, w, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def rotate_half(x):
    a, b = x.chunk(2, dim=-1)
    return torch.cat((-b, a), dim=-1)


def nll(w, cfg, ids):
    F = torch.nn.functional
    d, heads = cfg["hidden_size"], cfg["num_attention_heads"]
    kv = cfg.get("num_key_value_heads", heads)
    hd = cfg.get("head_dim", d // heads)
    eps = cfg.get("rms_norm_eps", 1e-6)
    b, n = ids.shape
    x = w["model.embed_tokens.weight"][ids]
    angles = torch.outer(torch.arange(n, dtype=torch.float32), inv_freq(cfg, hd))
    cos, sin = torch.cat((angles, angles), -1).cos(), torch.cat((angles, angles), -1).sin()
    mask = torch.full((n, n), float("-inf")).triu(1)
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        h = rms_norm(x, w[p + "input_layernorm.weight"], eps)
        q = F.linear(h, w[p + "self_attn.q_proj.weight"]).view(b, n, heads, hd).transpose(1, 2)
        k = F.linear(h, w[p + "self_attn.k_proj.weight"]).view(b, n, kv, hd).transpose(1, 2)
        v = F.linear(h, w[p + "self_attn.v_proj.weight"]).view(b, n, kv, hd).transpose(1, 2)
        q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        k, v = k.repeat_interleave(heads // kv, dim=1), v.repeat_interleave(heads // kv, dim=1)
        attn = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(hd) + mask, dim=-1) @ v
        x = x + F.linear(attn.transpose(1, 2).reshape(b, n, heads * hd), w[p + "self_attn.o_proj.weight"])
        h = rms_norm(x, w[p + "post_attention_layernorm.weight"], eps)
        gate = F.silu(F.linear(h, w[p + "mlp.gate_proj.weight"])) * F.linear(h, w[p + "mlp.up_proj.weight"])
        x = x + F.linear(gate, w[p + "mlp.down_proj.weight"])
    x = rms_norm(x, w["model.norm.weight"], eps)
    head = w["model.embed_tokens.weight"] if cfg.get("tie_word_embeddings", False) else w["lm_head.weight"]
    out = torch.zeros(b, n, dtype=torch.float64)
    for s in range(b):  # one sequence's [n, vocab] logits at a time
        logp = torch.log_softmax(x[s, :-1] @ head.T, dim=-1)
        out[s, :-1] = -logp.gather(1, ids[s, 1:, None])[:, 0].double()
    return out


def main():
    args = sys.argv[1:]
    ckpt, d = args[0], args[1]
    runs = int(args[args.index("--runs") + 1]) if "--runs" in args else 3
    threads = int(args[args.index("--threads") + 1]) if "--threads" in args else 2
    torch.set_num_threads(threads)
    cfg = json.load(open(f"{ckpt}/config.json"))
    if cfg["model_type"] not in ("llama", "mistral"):
        sys.exit(f"torch_lm_forward.py: model_type {cfg['model_type']} is not Llama-like")
    if cfg.get("sliding_window"):
        sys.exit("torch_lm_forward.py: sliding-window attention is not written out here")
    t0 = time.perf_counter()
    w = load_checkpoint(ckpt)
    load_s = time.perf_counter() - t0
    ids = torch.tensor(json.load(open(f"{d}/ids.json")), dtype=torch.long)
    amalgam = torch.tensor(json.load(open(f"{d}/nll.json")), dtype=torch.float64).view(ids.shape)
    times = []
    with torch.no_grad():
        out = nll(w, cfg, ids)  # warm-up
        for _ in range(runs):
            t0 = time.perf_counter()
            out = nll(w, cfg, ids)
            times.append(time.perf_counter() - t0)
    t = sorted(times)[len(times) // 2]
    print(json.dumps({"torch_version": torch.__version__, "threads": threads, "runs": runs,
                      "load_seconds": load_s, "forward_seconds_median": t, "forward_seconds_all": times,
                      "tokens_per_second": ids.numel() / t,
                      "max_abs_nll_diff": float((out - amalgam).abs().max()),
                      "mean_nll": float(out[:, :-1].mean())}, indent=2))


if __name__ == "__main__":
    main()
