#!/usr/bin/env bash
# One-GPU check (mmembed installed): the quickstart with the bf16-mixed GPU trainer config, a re-test
# from the saved config, then the retrieval-metric benchmark on CUDA.
#   bash scripts/check_gpu.sh [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${1:-runs/gpu_check}"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
START=$(date +%s)
python3 -m mmembed fit -c experiments/quickstart.yaml -c experiments/base/trainer_gpu.yaml \
  --trainer.logger.init_args.save_dir="$OUT_DIR" --trainer.enable_progress_bar=false --data.init_args.num_workers=6
RUN=$(ls -td "$OUT_DIR"/quickstart/version_* | head -n 1)
python3 -m mmembed test -c "$RUN/config.yaml" --ckpt_path "$RUN/checkpoints/best.ckpt"
echo ">> GPU quickstart (fit + test) took $(( $(date +%s) - START )) s"
python3 scripts/bench_retrieval.py --device cuda --sizes small,large
