#!/usr/bin/env bash
# Data-free merge throughput: 8 generated BF16 checkpoints of about 1.3 GB each (plus the
# base) merged with linear, task_arithmetic and ties, against
#   - the page-cache read bound: `cat` of the same input bytes to /dev/null, and
#   - the same merges written in NumPy (bench/numpy_merge.py), a Python user's reference.
# amalgam is timed as a user runs it (with the merge audit, merge_report.json) and with
# --no-audit. Each timing is the median of RUNS runs (default 3); peak RSS from GNU time. Also peak RSS of
# linear with 2, 4 and 8 models: it must not grow with the number of models.
# Each amalgam run is paired with a `cat` of its inputs just before it, and the ratio is
# taken per pair: this VM's speed drifts by tens of percent over minutes. Then the output's
# own bound: writing and syncing as many bytes with dd.
#
#   bench/merge_throughput.sh [DATA_DIR]     (default bench-data/, about 15 GB of disk)
#   SKIP_NUMPY=1 bench/merge_throughput.sh   (amalgam only, a few minutes)
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-bench-data}
RUNS=${RUNS:-3}
MODELS=8

bash scripts/setup-deps.sh
command -v /usr/bin/time >/dev/null || { DEBIAN_FRONTEND=noninteractive apt-get install -y -q time >/dev/null; }
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j "$(nproc)" >/dev/null
amalgam=$PWD/build/amalgam

fam=$DATA/family
if [ ! -d "$fam" ]; then
  echo "== generating $MODELS fine-tunes and a base (once)"
  $amalgam generate -o "$fam" --models $MODELS --layers 10 --hidden 2048 --intermediate 5504 --vocab 32000 \
    --max-shard-size 1GB
fi

write_config() {  # method count
  local method=$1 count=$2
  {
    echo "merge_method: $method"
    [ "$method" != linear ] && echo "base_model: $fam/base"
    echo "models:"
    for i in $(seq 1 "$count"); do
      echo "  - model: $fam/model_$i"
      case $method in
        ties) echo "    parameters: {weight: 1.0, density: 0.2}" ;;
        *) echo "    parameters: {weight: 1.0}" ;;
      esac
    done
    [ "$method" != linear ] && echo "parameters: {lambda: 0.3, normalize: true}"
    echo "dtype: bfloat16"
  } >"$DATA/$method-$count.yaml"
}

source bench/bench_util.sh
bytes_of() { cat "$@" | wc -c; }

models=$(for i in $(seq 1 $MODELS); do echo "$fam/model_$i"/*.safetensors; done)
all="$models $(echo "$fam"/base/*.safetensors)"
cat $all >/dev/null  # warm the page cache
model_bytes=$(bytes_of $models)
all_bytes=$(bytes_of $all)

time_cmd() {  # prints "seconds max_rss_kb" of the command
  /usr/bin/time -f "%e %M" -o "$DATA/.time" "$@" >/dev/null 2>"$DATA/.stderr" || { cat "$DATA/.stderr"; exit 1; }
  cat "$DATA/.time"
}

seconds_of_cat() { time_cmd cat "$@" | awk '{print $1}'; }

echo
echo "each run: cat of the method's inputs, then amalgam with the audit, with --no-audit, NumPy;"
echo "of_bound is the median over runs of cat_s / amalgam_s, each pair measured back to back"
printf "%-16s %10s %10s %10s %8s %10s %8s %10s %10s %10s %9s\n" method input_GB cat_s amalgam_s of_bound no_audit_s of_bound numpy_s speedup rss_MB numpy_rss
for method in linear task_arithmetic ties; do
  write_config $method $MODELS
  if [ $method = linear ]; then bytes=$model_bytes; inputs=$models; else bytes=$all_bytes; inputs=$all; fi
  c_runs=(); a_runs=(); q_runs=(); n_runs=(); ratio_a=(); ratio_q=()
  for _ in $(seq "$RUNS"); do
    fresh_output "$DATA/out-amalgam-$method"
    c=$(seconds_of_cat $inputs)
    a=$(time_cmd $amalgam merge "$DATA/$method-$MODELS.yaml" -o "$DATA/out-amalgam-$method" --quiet)
    fresh_output "$DATA/out-amalgam-$method"
    c2=$(seconds_of_cat $inputs)
    q=$(time_cmd $amalgam merge "$DATA/$method-$MODELS.yaml" -o "$DATA/out-amalgam-$method" --quiet --no-audit)
    c_runs+=("$c" "$c2") a_runs+=("$a") q_runs+=("$q")
    ratio_a+=("$(awk -v c="$c" -v a="${a%% *}" 'BEGIN {print c / a}')")
    ratio_q+=("$(awk -v c="$c2" -v a="${q%% *}" 'BEGIN {print c / a}')")
    if [ -z "${SKIP_NUMPY:-}" ]; then
      fresh_output "$DATA/out-numpy-$method.safetensors"
      n_runs+=("$(time_cmd /usr/bin/python3 bench/numpy_merge.py $method "$DATA/out-numpy-$method.safetensors" \
        "$fam/base" $(for i in $(seq 1 $MODELS); do echo "$fam/model_$i"; done))")
    else
      n_runs+=("0 0")
    fi
  done
  c_s=$(printf "%s\n" "${c_runs[@]}" | median)
  a_s=$(printf "%s\n" "${a_runs[@]}" | awk '{print $1}' | median)
  q_s=$(printf "%s\n" "${q_runs[@]}" | awk '{print $1}' | median)
  ra=$(printf "%s\n" "${ratio_a[@]}" | median)
  rq=$(printf "%s\n" "${ratio_q[@]}" | median)
  a_rss=$(printf "%s\n" "${a_runs[@]}" | awk '{print $2}' | sort -g | tail -1)
  n_s=$(printf "%s\n" "${n_runs[@]}" | awk '{print $1}' | median)
  n_rss=$(printf "%s\n" "${n_runs[@]}" | awk '{print $2}' | sort -g | tail -1)
  awk -v m=$method -v b="$bytes" -v c="$c_s" -v a="$a_s" -v q="$q_s" -v ra="$ra" -v rq="$rq" -v n="$n_s" -v r="$a_rss" -v nr="$n_rss" 'BEGIN {
    if (n == 0) printf "%-16s %10.2f %10.2f %10.2f %8.2f %10.2f %8.2f %10s %10s %10.0f %9s\n", m, b/1e9, c, a, ra, q, rq, "-", "-", r/1024, "-"
    else printf "%-16s %10.2f %10.2f %10.2f %8.2f %10.2f %8.2f %10.2f %9.1fx %10.0f %9.0f\n", m, b/1e9, c, a, ra, q, rq, n, n/a, r/1024, nr/1024 }'
done

echo
# The output's own bound: the same number of bytes written the way amalgam writes them
# (8 MB blocks past the page cache) and made durable.
out_mb=$(( $(bytes_of "$DATA"/out-amalgam-linear/*.safetensors) / 1000000 ))
write_s=$(for _ in $(seq "$RUNS"); do
  sync
  time_cmd dd if=/dev/zero of="$DATA/.write-test" bs=8M count="$(( out_mb / 8 ))" oflag=direct conv=fsync | awk '{print $1}'
  rm -f "$DATA/.write-test"
done | median)
echo "write bound: dd of the output's $out_mb MB in 8 MB blocks (oflag=direct) and fsync: $write_s s"
echo

echo
echo "peak RSS of linear by number of models (largest tensor: 32000 x 2048 BF16 = 131 MB):"
for count in 2 4 8; do
  write_config linear $count
  fresh_output "$DATA/out-amalgam-linear-$count"
  r=$(time_cmd $amalgam merge "$DATA/linear-$count.yaml" -o "$DATA/out-amalgam-linear-$count" --quiet)
  echo "  $count models: $(echo "$r" | awk '{printf "%.0f MB", $2/1024}')"
done
echo
echo "of_bound = cat_s / amalgam_s (target >= 0.6); speedup = numpy_s / amalgam_s (target >= 3)"
