#!/usr/bin/env bash
# The README's LLM merging walkthrough, end to end: statistics, data-free and data-aware
# merges, and `amalgam lm eval` of every model before and after, each step's wall time and
# peak RSS.
#
#   bench/llm_merge.sh [ARCHITECTURE] [LAYERS]   # default llama-3.2-1b, 4 layers
#
# Nothing can be downloaded here, so the checkpoints are `amalgam generate`'s: a base of the
# architecture's real shape (random BF16 weights, truncated to LAYERS layers) and two
# "fine-tunes" of it (the base plus seeded noise), with the real Llama 3 tokenizer
# (scripts/fetch-tokenizers.sh). The texts are real: the README's paragraphs ("prose") and
# the sources' comments ("code"), 64 calibration records each and 16 held out. The
# perplexities of random models say nothing about merging quality; the commands, the times
# and the memory are what this measures. Set LLM_MERGE_DIR to keep the work directory.
set -euo pipefail
cd "$(dirname "$0")/.."
arch=${1:-llama-3.2-1b}
layers=${2:-4}
source bench/bench_util.sh
llm_bench_setup LLM_MERGE_DIR

[ -f "$work/models/base/config.json" ] ||
  timed_step generate "$amalgam" generate --architecture "$arch" --layers "$layers" --models 2 --tokenizer "$tokenizer" \
    -o "$work/models" --force --progress none

/usr/bin/python3 - "$work" <<'PY'
import glob, json, re, sys
work = sys.argv[1]
prose = [p.strip() for p in open("README.md").read().split("\n\n") if len(p.strip()) > 200 and not p.startswith(("|", "```"))]
code = []
for f in sorted(glob.glob("src/**/*.h", recursive=True)):
    block = []
    for line in open(f):
        if line.startswith("//"):
            block.append(line[2:].strip())
        elif block:
            if len(" ".join(block)) > 200:
                code.append(" ".join(block))
            block = []
for name, texts in (("prose", prose), ("code", code)):
    assert len(texts) >= 80, (name, len(texts))
    with open(f"{work}/{name}.calib.jsonl", "w") as c, open(f"{work}/{name}.eval.jsonl", "w") as e:
        for t in texts[:64]:
            c.write(json.dumps({"text": t}) + "\n")
        for t in texts[64:80]:
            e.write(json.dumps({"text": t}) + "\n")
PY

m=$work/models
timed_step stats-model_1-prose "$amalgam" stats "$m/model_1" --data "$work/prose.calib.jsonl" --examples 64 --max-length 256 \
  -o "$work/model_1.stats" --force -q
timed_step stats-model_2-code "$amalgam" stats "$m/model_2" --data "$work/code.calib.jsonl" --examples 64 --max-length 256 \
  -o "$work/model_2.stats" --force -q

cat >"$work/task_arithmetic.yaml" <<EOF
merge_method: task_arithmetic
base_model: $m/base
models:
  - {model: $m/model_1, parameters: {weight: 0.5}}
  - {model: $m/model_2, parameters: {weight: 0.5}}
EOF
cat >"$work/regmean.yaml" <<EOF
merge_method: regmean
parameters: {alpha: 0.5}          # MergeBench's RegMean alpha for decoders
models:
  - {model: $m/model_1, stats: $work/model_1.stats}
  - {model: $m/model_2, stats: $work/model_2.stats}
EOF
cat >"$work/regmean_plusplus.yaml" <<EOF
merge_method: regmean_plusplus
parameters: {alpha: 0.1, examples: 64}   # MergeBench's RegMean++ alpha
models:
  - {model: $m/model_1, data: $work/prose.calib.jsonl}
  - {model: $m/model_2, data: $work/code.calib.jsonl}
EOF
for method in task_arithmetic regmean regmean_plusplus; do
  timed_step "merge-$method" "$amalgam" merge "$work/$method.yaml" "$work/$method" --force -q
done

printf "\n%-18s %12s %12s\n" model "prose ppl" "code ppl"
for model in base model_1 model_2 task_arithmetic regmean regmean_plusplus; do
  dir=$m/$model
  [ -d "$dir" ] || dir=$work/$model
  row=$(printf "%-18s" "$model")
  for data in prose code; do
    "$amalgam" lm eval "$dir" --data "$work/$data.eval.jsonl" --max-length 256 --json -q >"$work/eval.$model.$data"
    row+=$(printf " %12.2f" "$(/usr/bin/python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["perplexity"])' "$work/eval.$model.$data")")
  done
  echo "$row"
done
