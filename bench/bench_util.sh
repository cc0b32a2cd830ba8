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
