#!/usr/bin/env bash
# The digits benchmark on a GPU with the CPU rows' step counts (docs/benchmarks.md, "Every family
# on digits"), for a session with a lent GPU: the families not yet run there. Each family's steps
# are those its CPU row trained (the budget's worth, or the early-stopping cap); results append
# to $OUT/digits_gpu.jsonl (or ./digits_gpu.jsonl). Four families were run in session 9 (realnvp,
# maf, made, diffusion); this is the rest. About 10 minutes of an H200 is the estimate, unmeasured.
set -u
export PYTHONPATH=src PYTHONUNBUFFERED=1
out=${OUT:-.}/digits_gpu.jsonl
run() {  # family steps [extra options...]
  local family=$1 steps=$2
  shift 2
  timeout 240 python3 benchmarks/bench_digits.py --families "$family" --device cuda --steps "$steps" \
    --threads 16 --grid-dir /tmp/gpu_grids --out "$out" "$@" 2>&1 | tail -3
}
run nsf 1500 --validate-every 50 --patience 10
run vae 6000 --validate-every 50 --patience 10
run fm 3766
run gan 1227
run coop 1200
run triangle 5059
run ebm 6000
run wgan-gp 2000  # its session-10 CPU row (the 120-second row had 230 steps); last, the longest
