#!/usr/bin/env bash
# The digits benchmark on a GPU with the CPU rows' step counts (docs/benchmarks.md, "Every family
# on digits"), for a session with a lent GPU: the eight families session 9 had no time for
# (it ran realnvp, maf, made, diffusion). Each family's steps are those its CPU row trained (the
# budget's worth, or the early-stopping cap). To fit a 15-minute device lease the families run
# in two lanes side by side, 8 CPU threads each (so a row's train seconds include the other
# lane's share of the GPU), then the U-Net step profile (benchmarks/profile_unet_step.py).
# Results append to $OUT/digits_gpu.jsonl; logs go to $OUT/lane_*.log, grids to $OUT/grids.tgz.
set -u
export PYTHONPATH=src PYTHONUNBUFFERED=1
OUT=${OUT:-.}
out=$OUT/digits_gpu.jsonl
run() {  # family steps [extra options...]
  local family=$1 steps=$2
  shift 2
  timeout 300 python3 benchmarks/bench_digits.py --families "$family" --device cuda --steps "$steps" \
    --threads 8 --grid-dir /tmp/gpu_grids --out "$out" "$@" 2>&1 | grep -v '^USDT' | tail -4
}
lane_a() {
  run fm 3766
  run nsf 1500 --validate-every 50 --patience 10
  run gan 1227
  run wgan-gp 2000  # its session-10 CPU row (the 120-second row had 230 steps)
  timeout 120 python3 benchmarks/profile_unet_step.py --device cuda --batch-size 4096 \
    --out "$OUT/profile_unet_step.json" 2>&1 | grep -v '^USDT'
}
lane_b() {
  run ebm 6000
  run coop 1200
  run triangle 5059
  run vae 6000 --validate-every 50 --patience 10
}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python3 -c "import torch; print('torch', torch.__version__)"
python3 -c "from genmodels.image_metrics import digit_classifier as d; d()"  # cache it once for both lanes
SECONDS=0
lane_a >"$OUT/lane_a.log" 2>&1 &
lane_b >"$OUT/lane_b.log" 2>&1 &
wait
echo "both lanes done in ${SECONDS}s"
tar czf "$OUT/grids.tgz" -C /tmp gpu_grids 2>/dev/null
tail -n 30 "$OUT"/lane_*.log
