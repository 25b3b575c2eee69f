#!/usr/bin/env bash
# N processes of kdad_jax.main on this machine, joined by jax.distributed (CPU: gloo collectives),
# one CPU device each: the multi-host code path without a cluster, for testing.
#
#   bash launch/local_multiprocess.sh NUM_PROCESSES CONFIG [more kdad_jax.main flags...]
#   bash launch/local_multiprocess.sh 2 configs/efficientad.py:smoke
#   WORKDIR=/tmp/mp PORT=23456 bash launch/local_multiprocess.sh 2 configs/stfpm.py:smoke
#
# Process 0 prints to the terminal and writes results; process i logs to $WORKDIR/process_i.log.
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: $0 NUM_PROCESSES CONFIG [flags...]" >&2
  exit 2
fi
num=$1; config=$2; shift 2
workdir=${WORKDIR:-/tmp/kdad_local_multiprocess}
port=${PORT:-$((20000 + RANDOM % 20000))}
cd "$(dirname "$0")/.."
mkdir -p "$workdir"
export XLA_FLAGS="${XLA_FLAGS:-} --xla_force_host_platform_device_count=${DEVICES_PER_PROCESS:-1}"
pids=()
for ((i = num - 1; i >= 0; i--)); do
  args=(-m kdad_jax.main --config="$config" --workdir="$workdir" --coordinator="localhost:$port"
        --num_processes="$num" --process_id="$i" "$@")
  if [ "$i" -eq 0 ]; then
    python "${args[@]}" &
  else
    python "${args[@]}" >"$workdir/process_$i.log" 2>&1 &
  fi
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do
  wait "$pid" || status=$?
done
if [ "$status" -ne 0 ]; then
  echo "a process failed (exit $status); see $workdir/process_*.log" >&2
fi
exit "$status"
