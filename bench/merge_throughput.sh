#!/usr/bin/env bash
# Data-free merge throughput: 8 generated BF16 checkpoints of about 1.3 GB each (plus the
# base) merged with linear, task_arithmetic and ties, against
#   - the page-cache read bound: `cat` of the same input bytes to /dev/null, and
#   - the same merges written in NumPy (bench/numpy_merge.py), a Python user's reference.
# amalgam is timed as a user runs it (with the merge audit, merge_report.json) and with
# --no-audit. Each timing is the median of RUNS runs (default 3); peak RSS from GNU time. Also peak RSS of
# linear with 2, 4 and 8 models: it must not grow with the number of models.
# A second table attributes the gap to the read bound: the time to write and fsync an output
# of the same size (dd), and amalgam writing its output to tmpfs (/dev/shm) instead of disk.
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

read_bound() {  # bytes files... -> GB/s, median of RUNS
  for _ in $(seq "$RUNS"); do time_cmd cat "$@" | awk '{print $1}'; done | median
}
cat_models=$(read_bound $models)
cat_all=$(read_bound $all)

echo
printf "%-16s %10s %10s %10s %8s %10s %8s %10s %10s %10s %9s\n" method input_GB cat_s amalgam_s of_bound no_audit_s of_bound numpy_s speedup rss_MB numpy_rss
for method in linear task_arithmetic ties; do
  write_config $method $MODELS
  if [ $method = linear ]; then bytes=$model_bytes; bound=$cat_models; else bytes=$all_bytes; bound=$cat_all; fi
  a_runs=(); q_runs=(); n_runs=()
  for _ in $(seq "$RUNS"); do
    fresh_output "$DATA/out-amalgam-$method"
    a_runs+=("$(time_cmd $amalgam merge "$DATA/$method-$MODELS.yaml" -o "$DATA/out-amalgam-$method" --quiet)")
    fresh_output "$DATA/out-amalgam-$method"
    q_runs+=("$(time_cmd $amalgam merge "$DATA/$method-$MODELS.yaml" -o "$DATA/out-amalgam-$method" --quiet \
      --no-audit)")
    if [ -z "${SKIP_NUMPY:-}" ]; then
      fresh_output "$DATA/out-numpy-$method.safetensors"
      n_runs+=("$(time_cmd /usr/bin/python3 bench/numpy_merge.py $method "$DATA/out-numpy-$method.safetensors" \
        "$fam/base" $(for i in $(seq 1 $MODELS); do echo "$fam/model_$i"; done))")
    else
      n_runs+=("0 0")
    fi
  done
  a_s=$(printf "%s\n" "${a_runs[@]}" | awk '{print $1}' | median)
  q_s=$(printf "%s\n" "${q_runs[@]}" | awk '{print $1}' | median)
  a_rss=$(printf "%s\n" "${a_runs[@]}" | awk '{print $2}' | sort -g | tail -1)
  n_s=$(printf "%s\n" "${n_runs[@]}" | awk '{print $1}' | median)
  n_rss=$(printf "%s\n" "${n_runs[@]}" | awk '{print $2}' | sort -g | tail -1)
  awk -v m=$method -v b="$bytes" -v c="$bound" -v a="$a_s" -v q="$q_s" -v n="$n_s" -v r="$a_rss" -v nr="$n_rss" 'BEGIN {
    if (n == 0) printf "%-16s %10.2f %10.2f %10.2f %8.2f %10.2f %8.2f %10s %10s %10.0f %9s\n", m, b/1e9, c, a, c/a, q, c/q, "-", "-", r/1024, "-"
    else printf "%-16s %10.2f %10.2f %10.2f %8.2f %10.2f %8.2f %10.2f %9.1fx %10.0f %9.0f\n", m, b/1e9, c, a, c/a, q, c/q, n, n/a, r/1024, nr/1024 }'
done

echo
out_mb=$(( $(bytes_of "$DATA"/out-amalgam-linear/*.safetensors) / 1000000 ))
write_s=$(for _ in $(seq "$RUNS"); do
  sync
  time_cmd dd if=/dev/zero of="$DATA/.write-test" bs=1M count="$out_mb" conv=fsync | awk '{print $1}'
  rm -f "$DATA/.write-test"
done | median)
echo "where the time goes: writing + fsyncing an output of the same size ($out_mb MB) with dd takes $write_s s"
printf "%-16s %10s %14s %12s %14s\n" method amalgam_s cat+write_s of_that amalgam_tmpfs_s
for method in linear task_arithmetic ties; do
  if [ $method = linear ]; then bound=$cat_models; else bound=$cat_all; fi
  a_s=$(for _ in $(seq "$RUNS"); do
    fresh_output "$DATA/out-amalgam-$method"
    time_cmd $amalgam merge "$DATA/$method-$MODELS.yaml" -o "$DATA/out-amalgam-$method" --quiet | awk '{print $1}'
  done | median)
  shm_s=$(for _ in $(seq "$RUNS"); do
    fresh_output /dev/shm/amalgam-bench-out
    time_cmd $amalgam merge "$DATA/$method-$MODELS.yaml" -o /dev/shm/amalgam-bench-out --quiet | awk '{print $1}'
  done | median)
  rm -rf /dev/shm/amalgam-bench-out
  awk -v m=$method -v a="$a_s" -v c="$bound" -v w="$write_s" -v t="$shm_s" 'BEGIN {
    printf "%-16s %10.2f %14.2f %12.2f %14.2f\n", m, a, c + w, (c + w) / a, t }'
done

echo
echo "peak RSS of linear by number of models (largest tensor: 32000 x 2048 BF16 = 131 MB):"
for count in 2 4 8; do
  write_config linear $count
  fresh_output "$DATA/out-amalgam-linear-$count"
  r=$(time_cmd $amalgam merge "$DATA/linear-$count.yaml" -o "$DATA/out-amalgam-linear-$count" --quiet)
  echo "  $count models: $(echo "$r" | awk '{printf "%.0f MB", $2/1024}')"
done
echo
echo "cat read bound: $(awk -v b="$model_bytes" -v s="$cat_models" 'BEGIN {printf "%.2f GB/s", b/1e9/s}') (8 models);" \
  "of_bound = cat_s / amalgam_s (target >= 0.6); speedup = numpy_s / amalgam_s (target >= 3)"
