#!/usr/bin/env bash
# The README's torchrun command (2 gloo ranks on CPU, a short fm run) N times in a row: counts the
# runs that exit non-zero, and keeps the stderr of each failure in $OUT (default ./torchrun_exit).
# Run two copies side by side to load a 2-core machine: the exit abort fixed in session 10 (a gloo
# worker outliving the interpreter) showed in about 1 of 50 runs that way, and rarely when alone.
#     bash benchmarks/torchrun_exit.sh 120 & bash benchmarks/torchrun_exit.sh 120; wait
set -u
n=${1:-50}
out=${OUT:-./torchrun_exit}
mkdir -p "$out"
export OMP_NUM_THREADS=1 PYTHONWARNINGS=ignore
fails=0
for i in $(seq 1 "$n"); do
  port=$((20000 + RANDOM % 20000))
  run="$out/run.$$"
  rm -rf "$run"
  if ! python -m torch.distributed.run --nproc_per_node 2 --master_addr 127.0.0.1 --master_port "$port" \
    -m genmodels train fm --data 8gaussians --steps 20 --batch-size 64 --device cpu --no-progress \
    --out "$run" --hidden 16 --depth 2 >/dev/null 2>"$out/stderr.$$"; then
    fails=$((fails + 1))
    mv "$out/stderr.$$" "$out/failure.$$.$i.txt"
  fi
  echo "run $i/$n: $fails failed"
done
rm -rf "$out/run.$$" "$out/stderr.$$"
echo "$fails of $n runs failed"
