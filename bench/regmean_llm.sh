#!/usr/bin/env bash
# RegMean and RegMean++ on a decoder, amalgam against PyTorch computing as FusionBench does
# (bench/torch_regmean_llm.py), in one run on this machine: wall time, CPU time and peak RSS
# of each, end to end (statistics and merge).
#
#   bench/regmean_llm.sh [MODELS] [LAYERS] [EXAMPLES]   # default 4 fine-tunes, 4 layers, 64 texts
#
# The checkpoints are `amalgam generate`'s (nothing can be downloaded here): a
# Llama-3.2-1B-shaped BF16 base truncated to LAYERS layers and MODELS fine-tunes of it, with
# the real Llama 3 tokenizer. Each fine-tune has its own task: EXAMPLES texts of 256 tokens
# cut from this repository's prose, comments and tests (texts past 256 tokens, cut there by
# both sides: amalgam's --max-length / max_length, and the same ids given to PyTorch from
# `amalgam tokenize`). alpha 0.5 for RegMean and 0.1 for RegMean++ (MergeBench's), batches of
# 8 texts on both sides, 2 threads. amalgam's RegMean is `amalgam stats` per model, then the
# merge from the statistics files (its times summed, its peak the largest); its RegMean++ is
# one merge with `data:`. Each side writes its merged model; the script prints how far apart
# the two are (max |a - b| / max |b| over the linear weights). Needs python3-torch (installed
# here if missing). Set REGMEAN_LLM_DIR to keep the work directory.
set -euo pipefail
cd "$(dirname "$0")/.."
models=${1:-4}
layers=${2:-4}
examples=${3:-64}
if ! /usr/bin/python3 -c "import torch" 2>/dev/null; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3-torch >/dev/null
fi
source bench/bench_util.sh
llm_bench_setup REGMEAN_LLM_DIR

m=$work/models
[ -f "$m/model_$models/config.json" ] ||
  "$amalgam" generate --architecture llama-3.2-1b --layers "$layers" --models "$models" --tokenizer "$tokenizer" \
    -o "$m" --force --progress none

# MODELS tasks of EXAMPLES texts, each about 1,200 characters (past 256 tokens for most).
/usr/bin/python3 - "$work" "$models" "$examples" <<'PY'
import glob, json, sys
work, models, examples = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
def comments(pattern, marker):
    out = []
    for f in sorted(glob.glob(pattern, recursive=True)):
        out += [l.strip()[len(marker):].strip() for l in open(f, errors="replace") if l.strip().startswith(marker)]
    return out
sources = [
    [p for p in open("README.md").read().split("\n") if p.strip()],
    comments("src/**/*.h", "//"),
    comments("src/**/*.cpp", "//"),
    comments("tests/**/*.cpp", "//") + comments("bench/*", "#") + comments("scripts/*", "#"),
]
for t in range(models):
    lines, texts, text = sources[t % len(sources)], [], ""
    for line in lines:
        text += line + " "
        if len(text) > 1200:
            texts.append(text)
            text = ""
    texts = texts[(t // len(sources)) * examples:][:examples]
    assert len(texts) == examples, (t, len(texts))
    with open(f"{work}/task_{t + 1}.jsonl", "w") as f:
        for x in texts:
            f.write(json.dumps({"text": x}) + "\n")
PY
for t in $(seq 1 "$models"); do
  "$amalgam" tokenize "$m/model_$t" --file "$work/task_$t.jsonl" --json --progress none |
    /usr/bin/python3 -c 'import json, sys
for line in sys.stdin: print(json.dumps({"ids": json.loads(line)["ids"][:256]}))' >"$work/task_$t.ids.jsonl"
done

# amalgam: RegMean from statistics files, RegMean++ measuring on the texts.
{
  echo "merge_method: regmean"
  echo "parameters: {alpha: 0.5}"
  echo "models:"
  for t in $(seq 1 "$models"); do echo "  - {model: $m/model_$t, stats: $work/model_$t.stats}"; done
} >"$work/regmean.yaml"
{
  echo "merge_method: regmean_plusplus"
  echo "parameters: {alpha: 0.1, examples: $examples, max_length: 256, batch_size: 8}"
  echo "models:"
  for t in $(seq 1 "$models"); do echo "  - {model: $m/model_$t, data: $work/task_$t.jsonl}"; done
} >"$work/regmean_plusplus.yaml"
torch_args=()
for t in $(seq 1 "$models"); do torch_args+=("$m/model_$t" "$work/task_$t.ids.jsonl"); done

tokens=$(for t in $(seq 1 "$models"); do cat "$work/task_$t.ids.jsonl"; done | /usr/bin/python3 -c 'import json, sys
r = [len(json.loads(l)["ids"]) for l in sys.stdin]
print(f"{sum(r)} tokens in all, {min(r)} to {max(r)} a text")')
echo "RegMean and RegMean++: $models fine-tunes of a $layers-layer Llama-3.2-1B-shaped BF16 model, $examples texts" \
  "a task ($tokens), 2 threads ($(nproc) cores; nothing else running)"
for t in $(seq 1 "$models"); do
  timed_step "amalgam stats model_$t" "$amalgam" stats "$m/model_$t" --data "$work/task_$t.jsonl" --examples "$examples" \
    --max-length 256 --batch-size 8 -o "$work/model_$t.stats" --force -q --threads 2
done
timed_step "amalgam merge regmean" "$amalgam" merge "$work/regmean.yaml" "$work/amalgam_regmean" --force -q --threads 2
timed_step "amalgam merge regmean_plusplus" "$amalgam" merge "$work/regmean_plusplus.yaml" \
  "$work/amalgam_regmean_plusplus" --force -q --threads 2
timed_step "torch regmean" /usr/bin/python3 bench/torch_regmean_llm.py regmean "$work/torch_regmean.safetensors" \
  --alpha 0.5 --threads 2 --batch-size 8 "${torch_args[@]}"
timed_step "torch regmean_plusplus" /usr/bin/python3 bench/torch_regmean_llm.py regmean_plusplus \
  "$work/torch_regmean_plusplus.safetensors" --alpha 0.1 --threads 2 --batch-size 8 "${torch_args[@]}"

/usr/bin/python3 - "$work" "$models" <<'PY'
import json, sys
sys.path.insert(0, "bench")
from torch_safetensors import load_checkpoint, load_safetensors
work, models = sys.argv[1], int(sys.argv[2])
def timing(name):
    wall, user, system, kib = open(f"{work}/time.{name}").read().split()
    return float(wall), float(user) + float(system), int(kib) / 1048576
stats = [timing(f"amalgam stats model_{t}") for t in range(1, models + 1)]
merge = timing("amalgam merge regmean")
rows = {
    "amalgam regmean": (sum(s[0] for s in stats) + merge[0], sum(s[1] for s in stats) + merge[1],
                        max([s[2] for s in stats] + [merge[2]])),
    "amalgam regmean_plusplus": timing("amalgam merge regmean_plusplus"),
    "torch regmean": timing("torch regmean"),
    "torch regmean_plusplus": timing("torch regmean_plusplus"),
}
print(f"\n{'end to end':28} {'wall s':>9} {'CPU s':>9} {'peak GB':>8}")
for name, (w, c, g) in rows.items():
    print(f"{name:28} {w:9.1f} {c:9.1f} {g:8.2f}")
for method in ("regmean", "regmean_plusplus"):
    a, t = rows[f"amalgam {method}"], rows[f"torch {method}"]
    print(f"{method}: amalgam {t[0] / a[0]:.2f}x faster than PyTorch, {a[2] / t[2]:.2f} of its peak memory")
print(f"RegMean++ / RegMean time: amalgam {rows['amalgam regmean_plusplus'][0] / rows['amalgam regmean'][0]:.2f}, "
      f"PyTorch {rows['torch regmean_plusplus'][0] / rows['torch regmean'][0]:.2f}")
for method in ("regmean", "regmean_plusplus"):
    a = load_checkpoint(f"{work}/amalgam_{method}")
    t = load_safetensors(f"{work}/torch_{method}.safetensors")
    worst = max(float((a[n] - t[n]).abs().max() / t[n].abs().max()) for n in t if n.endswith("proj.weight"))
    print(f"{method}: amalgam's and PyTorch's linear weights differ by at most {worst:.2e} of the largest weight")
PY
