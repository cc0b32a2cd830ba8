#!/usr/bin/python3
"""Reference outputs from Pillow (and NumPy) for tests/test_task_data.cpp.

Raw files hold uint8 HWC pixels (C = 1 or 3); shapes are given on the command line, one
operation per run, or one per line of a file with `pil_resize.py --jobs FILE` (starting
Python with NumPy and Pillow takes longer than the work):

  pil_resize.py resize IN H W C OUT_H OUT_W RESAMPLE OUT   Image.resize((OUT_W, OUT_H), RESAMPLE)
  pil_resize.py gray IN H W OUT                            Image.convert("L") of an RGB image
  pil_resize.py clip IN H W C CHANNELS OUT                 CLIPImageProcessor's default pipeline
                                                            (float32 CHW), as transformers does it

Run with Debian's /usr/bin/python3 (python3-pil, python3-numpy).
"""
import sys

import numpy as np
from PIL import Image


def load(path, h, w, c):
    pixels = np.fromfile(path, dtype=np.uint8).reshape(h, w, c)
    return Image.fromarray(pixels[:, :, 0] if c == 1 else pixels, "L" if c == 1 else "RGB")


def clip_pipeline(image, channels):
    # transformers' CLIPImageProcessor with its defaults: convert, resize the shortest edge to
    # 224 (int() of the long side), bicubic in uint8 through PIL, center crop 224 (floor
    # offsets), rescale in float64 cast to float32, normalize in float32.
    image = image.convert("RGB" if channels == 3 else "L")
    w, h = image.size
    short, long = (w, h) if w <= h else (h, w)
    new_long = int(224 * long / short)
    new_w, new_h = (224, new_long) if w <= h else (new_long, 224)
    image = image.resize((new_w, new_h), Image.BICUBIC)
    a = np.array(image)
    if a.ndim == 2:
        a = a[:, :, None]
    top, left = (new_h - 224) // 2, (new_w - 224) // 2
    a = a[top:top + 224, left:left + 224, :]
    x = (a.astype(np.float64) * (1 / 255)).astype(np.float32)
    mean = np.array([0.48145466, 0.4578275, 0.40821073][:channels], dtype=np.float32)
    std = np.array([0.26862954, 0.26130258, 0.27577711][:channels], dtype=np.float32)
    x = (x - mean) / std
    return np.ascontiguousarray(x.transpose(2, 0, 1), dtype=np.float32)


def run(argv):
    op = argv[1]
    if op == "resize":
        _, _, src, h, w, c, out_h, out_w, resample, dst = argv
        image = load(src, int(h), int(w), int(c))
        np.array(image.resize((int(out_w), int(out_h)), int(resample))).tofile(dst)
    elif op == "gray":
        _, _, src, h, w, dst = argv
        np.array(load(src, int(h), int(w), 3).convert("L")).tofile(dst)
    elif op == "clip":
        _, _, src, h, w, c, channels, dst = argv
        clip_pipeline(load(src, int(h), int(w), int(c)), int(channels)).tofile(dst)
    else:
        raise SystemExit("unknown operation " + op)


if __name__ == "__main__":
    if sys.argv[1] == "--jobs":
        with open(sys.argv[2]) as jobs:
            for line in jobs:
                if line.strip():
                    run([sys.argv[0]] + line.split())
    else:
        run(sys.argv)
