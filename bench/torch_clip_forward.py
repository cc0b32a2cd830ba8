#!/usr/bin/python3
"""PyTorch's time for the same CLIP ViT forward that bench/clip_forward timed, and how far
apart the two outputs are.

    torch_clip_forward.py DIR [--runs 5] [--threads 2]

DIR is what `clip_forward --save DIR` left: checkpoint/ (Hugging Face layout), pixels.f32
and features.f32. transformers is not packaged in Debian, so the forward below is Hugging
Face's CLIPVisionModelWithProjection written out in torch operations (the same math:
conv patch embedding, pre-LN blocks, q scaled by head_dim^-0.5, post-LN CLS, projection).
Prints one JSON object.
"""
import json
import sys
import time

import numpy as np
import torch

from torch_safetensors import load_safetensors


def act(x, name):
    if name == "quick_gelu":
        return x * torch.sigmoid(1.702 * x)
    if name == "gelu":
        return torch.nn.functional.gelu(x)
    return torch.nn.functional.gelu(x, approximate="tanh")


def forward(w, cfg, pixels):
    F = torch.nn.functional
    d, heads, eps = cfg["hidden_size"], cfg["num_attention_heads"], cfg["layer_norm_eps"]
    hd = d // heads
    b = pixels.shape[0]
    x = F.conv2d(pixels, w["vision_model.embeddings.patch_embedding.weight"], stride=cfg["patch_size"])
    x = x.flatten(2).transpose(1, 2)
    cls = w["vision_model.embeddings.class_embedding"].expand(b, 1, -1)
    x = torch.cat([cls, x], dim=1) + w["vision_model.embeddings.position_embedding.weight"]
    x = F.layer_norm(x, (d,), w["vision_model.pre_layrnorm.weight"], w["vision_model.pre_layrnorm.bias"], eps)
    for i in range(cfg["num_hidden_layers"]):
        p = f"vision_model.encoder.layers.{i}."
        lin = lambda t, n: F.linear(t, w[p + n + ".weight"], w[p + n + ".bias"])
        h = F.layer_norm(x, (d,), w[p + "layer_norm1.weight"], w[p + "layer_norm1.bias"], eps)
        q = lin(h, "self_attn.q_proj") * hd**-0.5
        k, v = lin(h, "self_attn.k_proj"), lin(h, "self_attn.v_proj")
        split = lambda t: t.view(b, -1, heads, hd).transpose(1, 2)
        attn = torch.softmax(split(q) @ split(k).transpose(-1, -2), dim=-1) @ split(v)
        x = x + lin(attn.transpose(1, 2).reshape(b, -1, d), "self_attn.out_proj")
        h = F.layer_norm(x, (d,), w[p + "layer_norm2.weight"], w[p + "layer_norm2.bias"], eps)
        x = x + lin(act(lin(h, "mlp.fc1"), cfg["hidden_act"]), "mlp.fc2")
    pooled = F.layer_norm(x[:, 0], (d,), w["vision_model.post_layernorm.weight"], w["vision_model.post_layernorm.bias"], eps)
    return pooled @ w["visual_projection.weight"].T


def main():
    args = sys.argv[1:]
    d = args[0]
    runs = int(args[args.index("--runs") + 1]) if "--runs" in args else 5
    threads = int(args[args.index("--threads") + 1]) if "--threads" in args else 2
    torch.set_num_threads(threads)
    cfg = json.load(open(f"{d}/checkpoint/config.json"))
    w = load_safetensors(f"{d}/checkpoint/model.safetensors")
    side, ch = cfg["image_size"], cfg["num_channels"]
    pixels = torch.from_numpy(np.fromfile(f"{d}/pixels.f32", dtype=np.float32)).view(-1, ch, side, side)
    amalgam = np.fromfile(f"{d}/features.f32", dtype=np.float32).reshape(pixels.shape[0], -1)
    with torch.no_grad():
        out = forward(w, cfg, pixels)  # warm-up
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            out = forward(w, cfg, pixels)
            times.append(time.perf_counter() - t0)
    times.sort()
    med = times[len(times) // 2] if runs % 2 else 0.5 * (times[runs // 2 - 1] + times[runs // 2])
    diff = np.abs(out.numpy() - amalgam).max() / np.abs(out.numpy()).max()
    print(json.dumps({"torch_version": torch.__version__, "threads": threads, "batch": pixels.shape[0],
                      "forward_seconds_median": med, "forward_seconds_all": times,
                      "images_per_second": pixels.shape[0] / med,
                      "max_abs_diff_over_max_abs": float(diff)}, indent=2))


if __name__ == "__main__":
    main()
