#!/usr/bin/env bash
# Decoder language-model scoring speed (`amalgam lm eval`'s forward): amalgam against this
# machine's own SGEMM peak and, when Debian's python3-torch is installed, against PyTorch on
# the same checkpoint and tokens in the same run (which also checks that the per-token
# negative log-likelihoods agree); and `amalgam lm eval` end to end, its wall time and peak
# RSS against the checkpoint's size.
#
#   bench/lm_forward.sh [ARCHITECTURE] [RUNS]   # default llama-3.2-1b (random BF16 weights), 3
#
# The checkpoint is `amalgam generate --architecture ARCHITECTURE --models 0` with the real
# Llama 3 tokenizer (scripts/fetch-tokenizers.sh); 8 sequences of 512 tokens. Set
# LM_BENCH_DIR to keep the checkpoint between runs (it is 2.5 GB for llama-3.2-1b).
set -euo pipefail
cd "$(dirname "$0")/.."
arch=${1:-llama-3.2-1b}
runs=${2:-3}
cmake -S . -B build-bench -G Ninja -DCMAKE_BUILD_TYPE=Release -DAMALGAM_BUILD_BENCH=ON -DAMALGAM_BUILD_TESTS=OFF >/dev/null
ninja -C build-bench amalgam lm_forward >/dev/null
source bench/bench_util.sh
llama3_tokenizer
bench_work_dir LM_BENCH_DIR
model=$work/$arch/base
[ -f "$model/config.json" ] ||
  build-bench/amalgam generate --architecture "$arch" --models 0 --tokenizer "$tokenizer" -o "$work/$arch"

build-bench/lm_forward "$model" --sequences 8 --length 512 --runs "$runs" --save "$work/scores" | tee "$work/amalgam.json"

# End to end: 8 records of pseudo-words, each cut to 512 tokens by lm eval.
/usr/bin/python3 - "$work/texts.jsonl" <<'PY'
import json, random, sys
rng = random.Random(0)
with open(sys.argv[1], "w") as f:
    for _ in range(8):
        words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9))) for _ in range(700)]
        f.write(json.dumps({"text": " ".join(words)}) + "\n")
PY
bytes=$(du -cb "$model"/*.safetensors | tail -1 | cut -f1)
for r in $(seq "$runs"); do
  /usr/bin/time -f "%e %M" -o "$work/time.$r" build-bench/amalgam lm eval "$model" --data "$work/texts.jsonl" \
    --max-length 512 --batch-size 8 --json -q >"$work/eval.$r.json"
done
/usr/bin/python3 - "$work" "$runs" "$bytes" <<'PY'
import json, statistics, sys
work, runs, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
wall = [float(open(f"{work}/time.{r}").read().split()[0]) for r in range(1, runs + 1)]
rss = [int(open(f"{work}/time.{r}").read().split()[1]) * 1024 for r in range(1, runs + 1)]
tokens = json.load(open(f"{work}/eval.1.json"))["tokens"] + 8  # predicted tokens, plus each record's first
print(json.dumps({"lm_eval_wall_seconds_median": statistics.median(wall), "lm_eval_wall_seconds_all": wall,
                  "lm_eval_tokens": tokens, "lm_eval_tokens_per_second": tokens / statistics.median(wall),
                  "peak_rss_bytes_max": max(rss), "checkpoint_bytes": size,
                  "peak_rss_minus_checkpoint_gib": (max(rss) - size) / 2**30}, indent=2))
PY

if /usr/bin/python3 -c 'import torch' 2>/dev/null; then
  /usr/bin/python3 bench/torch_lm_forward.py "$model" "$work/scores" --runs "$runs" --threads "$(nproc)" |
    tee "$work/torch.json"
  /usr/bin/python3 - "$work" <<'PY'
import json, sys
a = json.load(open(sys.argv[1] + "/amalgam.json"))
t = json.load(open(sys.argv[1] + "/torch.json"))
print(f"amalgam {a['tokens_per_second']:.1f} tokens/s ({a['fraction_of_sgemm_peak']:.2f} of SGEMM peak "
      f"{a['sgemm_peak_gflops']:.0f} GFLOP/s); PyTorch {t['torch_version']} {t['tokens_per_second']:.1f} tokens/s; "
      f"amalgam/PyTorch {a['tokens_per_second'] / t['tokens_per_second']:.2f}x; "
      f"max |nll diff| {t['max_abs_nll_diff']:.1e} (mean nll {t['mean_nll']:.3f})")
PY
else
  echo "python3-torch not installed: no PyTorch comparison (apt-get install python3-torch)"
fi
