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

# MASS: a bundle of every task's low-rank factors; every task's test split routed per image and
# per batch, each task's own head; MASS_ROUTER adds a third run with router overrides (for
# example MASS_ROUTER="--routing-layer 2 --routing-rank 8", chosen on the val split).
{
  echo "base_model: $zoo/base"
  echo "models:"
  for t in $tasks; do echo "  - {model: $zoo/finetuned/$t, head: $zoo/heads/$t.safetensors}"; done
} >"$out/mass.yaml"
start=$(date +%s.%N)
$amalgam mass build "$out/mass.yaml" -o "$out/mass" --force -q
end=$(date +%s.%N)
echo "{\"merge_seconds\": $(awk "BEGIN {print $end - $start}")}" >"$out/mass.time.json"
task_args=""
for t in $tasks; do task_args="$task_args --task $zoo/data/$t"; done
$amalgam mass eval "$out/mass" $task_args --route sample --batch-size 256 --json -q >"$out/mass_sample.json"
$amalgam mass eval "$out/mass" $task_args --route batch --batch-size 256 --json -q >"$out/mass_batch.json"
if [ -n "${MASS_ROUTER:-}" ]; then
  # shellcheck disable=SC2086  # MASS_ROUTER is a list of options
  $amalgam mass eval "$out/mass" $task_args $MASS_ROUTER --batch-size 256 --json -q >"$out/mass_tuned.json"
fi

/usr/bin/python3 - "$out" "${MASS_ROUTER:-}" $tasks <<'PY'
import json, os, sys
out, mass_router, tasks = sys.argv[1], sys.argv[2], sys.argv[3:]
rows = ["base", "finetuned", "linear", "task_arithmetic", "ties", "dare_ties", "tsv", "regmean", "regmean_plusplus"]
report = {}
for r in rows:
    acc = {t: json.load(open(f"{out}/eval/{r}/{t}.json"))["results"][0]["accuracy"] for t in tasks}
    t = f"{out}/{r}.time.json"
    report[r] = {"accuracy": acc, "average": sum(acc.values()) / len(acc),
                 "merge_seconds": json.load(open(t))["merge_seconds"] if os.path.exists(t) else None}
mass_runs = [("mass_sample", "mass (per-sample routing)"), ("mass_batch", "mass (batch routing)")]
if mass_router:
    mass_runs.append(("mass_tuned", f"mass ({mass_router})"))
build_seconds = json.load(open(f"{out}/mass.time.json"))["merge_seconds"]
for key, label in mass_runs:
    j = json.load(open(f"{out}/{key}.json"))
    res = {r["task"]: r for r in j["results"]}
    mean = lambda field: sum(res[t][field] for t in tasks) / len(tasks)
    acc = {t: res[t]["accuracy"] for t in tasks}
    report[key] = {"label": label, "accuracy": acc, "average": sum(acc.values()) / len(acc),
                   "merge_seconds": build_seconds, "routing_accuracy": mean("routing_accuracy"),
                   "own_task_selected": mean("own_task_selected"), "first_pass_accuracy": mean("first_pass_accuracy"),
                   "router": j["router"], "latency": j["latency"], "bundle_to_base": j["bundle_to_base"],
                   "sizes": j["sizes"]}
    rows.append(key)
ft = report["finetuned"]["average"]
print("| method | " + " | ".join(tasks) + " | average | normalized | merge s |")
print("|---" * (len(tasks) + 4) + "|")
for r in rows:
    a = report[r]
    ms = "" if a["merge_seconds"] is None else f"{a['merge_seconds']:.1f}"
    print(f"| {a.get('label', r)} | " + " | ".join(f"{a['accuracy'][t]:.3f}" for t in tasks) +
          f" | {a['average']:.4f} | {a['average'] / ft:.3f} | {ms} |")
print()
for key, label in mass_runs:
    a = report[key]
    lat = a["latency"]
    print(f"{label}: routing accuracy {a['routing_accuracy']:.3f} (chance {1 / len(tasks):.3f}), own task selected "
          f"{a['own_task_selected']:.3f}, first pass (TSV-M) {a['first_pass_accuracy']:.4f}; "
          f"{1e3 * lat['seconds_per_image']:.3f} ms/image against {1e3 * lat['merged_seconds_per_image']:.3f} for a "
          f"merged model ({lat['ratio']:.2f}x; {lat['forwards']} second-pass forwards, cache {lat['cache_hits']} hits / "
          f"{lat['cache_misses']} misses, batch 256)")
s = report["mass_sample"]["sizes"]
print(f"MASS bundle {s['bundle'] / 1e6:.2f} MB = {report['mass_sample']['bundle_to_base']:.2f}x the base "
      f"(factors {s['factors'] / s['base']:.2f}x), against {s['all_finetunes'] / s['base']:.0f}x for every fine-tune")
json.dump(report, open(f"{out}/zoo_methods.json", "w"), indent=2)
PY
