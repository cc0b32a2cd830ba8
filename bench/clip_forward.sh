#!/usr/bin/env bash
# CLIP ViT-B/32 forward throughput: amalgam against this machine's own SGEMM peak and, when
# Debian's python3-torch is installed, against PyTorch on the same weights and pixels in
# the same run (which also checks that the two outputs agree).
#
#   bench/clip_forward.sh [RUNS]        # median of RUNS forwards of a batch of 32 (default 5)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-5}
cmake -S . -B build-bench -G Ninja -DCMAKE_BUILD_TYPE=Release -DAMALGAM_BUILD_BENCH=ON -DAMALGAM_BUILD_TESTS=OFF >/dev/null
ninja -C build-bench clip_forward >/dev/null
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
build-bench/clip_forward --batch 32 --runs "$runs" --save "$work" | tee "$work/amalgam.json"
if /usr/bin/python3 -c 'import torch' 2>/dev/null; then
  /usr/bin/python3 bench/torch_clip_forward.py "$work" --runs "$runs" --threads "$(nproc)" | tee "$work/torch.json"
  /usr/bin/python3 - "$work" <<'PY'
import json, sys
a = json.load(open(sys.argv[1] + "/amalgam.json"))
t = json.load(open(sys.argv[1] + "/torch.json"))
print(f"amalgam {a['images_per_second']:.2f} images/s ({a['fraction_of_sgemm_peak']:.2f} of SGEMM peak "
      f"{a['sgemm_peak_gflops']:.0f} GFLOP/s); PyTorch {t['torch_version']} {t['images_per_second']:.2f} images/s; "
      f"amalgam/PyTorch {a['images_per_second'] / t['images_per_second']:.2f}x; "
      f"max |diff| / max |out| {t['max_abs_diff_over_max_abs']:.1e}")
PY
else
  echo "python3-torch not installed: no PyTorch comparison (apt-get install python3-torch)"
fi
