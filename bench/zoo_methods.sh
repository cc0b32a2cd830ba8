#!/usr/bin/env bash
# Every merge method and MASS on a built zoo, with fixed hyperparameters from the papers (the
# validation-tuned comparison is `amalgam bench`): merge the eight fine-tunes, evaluate each
# task's test split through its probe head, print a markdown table and write
# OUT/zoo_methods.json.
#
#   bench/zoo_methods.sh ZOO [OUT]      # ZOO from `amalgam zoo build -o ZOO`
set -euo pipefail
cd "$(dirname "$0")/.."
zoo=$(realpath "$1")
out=${2:-$(mktemp -d)}
mkdir -p "$out"
amalgam=${AMALGAM:-./build/amalgam}
tasks="mnist fashion letters digits8 shapes gratings count textures"

config() {  # config METHOD GLOBAL_PARAMETERS PER_MODEL_LINE
  echo "merge_method: $1"
  echo "base_model: $zoo/base"
  echo "parameters: {$2}"
  echo "models:"
  for t in $tasks; do
    echo "  - model: $zoo/finetuned/$t"
    if [ -n "$3" ]; then echo "    ${3//TASK/$t}"; fi
  done
}
config linear "weight: 1.0" "" >"$out/linear.yaml"
config task_arithmetic "weight: 1.0, lambda: 0.3" "" >"$out/task_arithmetic.yaml"
config ties "weight: 1.0, density: 0.2, lambda: 1.0" "" >"$out/ties.yaml"
config dare_ties "weight: 1.0, density: 0.2, lambda: 1.0" "" >"$out/dare_ties.yaml"
config tsv "alpha: 1.0" "" >"$out/tsv.yaml"
config regmean "alpha: 0.95, examples: 256" "data: $zoo/data/TASK" >"$out/regmean.yaml"
config regmean_plusplus "alpha: 0.95, examples: 256" "data: $zoo/data/TASK" >"$out/regmean_plusplus.yaml"

evaluate() {  # evaluate NAME CHECKPOINT: every task's test split ("TASK" in CHECKPOINT is the task)
  mkdir -p "$out/eval/$1"
  for t in $tasks; do
    $amalgam eval "${2//TASK/$t}" --task "$zoo/data/$t" --head "$zoo/heads/$t.safetensors" --batch-size 256 --json -q \
      >"$out/eval/$1/$t.json"
  done
}

evaluate base "$zoo/base"
evaluate finetuned "$zoo/finetuned/TASK"
for m in linear task_arithmetic ties dare_ties tsv regmean regmean_plusplus; do
  start=$(date +%s.%N)
  $amalgam merge "$out/$m.yaml" -o "$out/$m" --force -q
  end=$(date +%s.%N)
  echo "{\"merge_seconds\": $(awk "BEGIN {print $end - $start}")}" >"$out/$m.time.json"
  evaluate "$m" "$out/$m"
done

# MASS: a bundle of every task's low-rank factors, routed per image, each task's own head.
{
  echo "base_model: $zoo/base"
  echo "models:"
  for t in $tasks; do echo "  - {model: $zoo/finetuned/$t, head: $zoo/heads/$t.safetensors}"; done
} >"$out/mass.yaml"
start=$(date +%s.%N)
$amalgam mass build "$out/mass.yaml" -o "$out/mass" --force -q
end=$(date +%s.%N)
echo "{\"merge_seconds\": $(awk "BEGIN {print $end - $start}")}" >"$out/mass.time.json"
mkdir -p "$out/eval/mass"
for t in $tasks; do
  $amalgam mass eval "$out/mass" --task "$zoo/data/$t" --batch-size 256 --json -q >"$out/eval/mass/$t.json"
done

/usr/bin/python3 - "$out" $tasks <<'PY'
import json, os, sys
out, tasks = sys.argv[1], sys.argv[2:]
rows = ["base", "finetuned", "linear", "task_arithmetic", "ties", "dare_ties", "tsv", "regmean", "regmean_plusplus",
        "mass"]
report = {}
for r in rows:
    acc = {t: json.load(open(f"{out}/eval/{r}/{t}.json"))["results"][0]["accuracy"] for t in tasks}
    t = f"{out}/{r}.time.json"
    if r == "mass":
        report["mass_routing_accuracy"] = {
            t: json.load(open(f"{out}/eval/mass/{t}.json"))["results"][0]["routing_accuracy"] for t in tasks}
    report[r] = {"accuracy": acc, "average": sum(acc.values()) / len(acc),
                 "merge_seconds": json.load(open(t))["merge_seconds"] if os.path.exists(t) else None}
ft = report["finetuned"]["average"]
print("| method | " + " | ".join(tasks) + " | average | normalized | merge s |")
print("|---" * (len(tasks) + 4) + "|")
for r in rows:
    a = report[r]
    ms = "" if a["merge_seconds"] is None else f"{a['merge_seconds']:.1f}"
    print(f"| {r} | " + " | ".join(f"{a['accuracy'][t]:.3f}" for t in tasks) +
          f" | {a['average']:.4f} | {a['average'] / ft:.3f} | {ms} |")
routing = report["mass_routing_accuracy"]
print("\nMASS routing accuracy (top route is the input's own task): " +
      ", ".join(f"{t} {routing[t]:.3f}" for t in tasks) + f"; average {sum(routing.values()) / len(routing):.3f}")
json.dump(report, open(f"{out}/zoo_methods.json", "w"), indent=2)
PY
