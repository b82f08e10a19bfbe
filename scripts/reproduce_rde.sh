#!/usr/bin/env bash
# Reproduce RDE's main table for one dataset: noise rates 0, 0.2, 0.5 (and 0.8 with ALL_RATES=1),
# fit with the paper's settings, then test the best and the last checkpoint from the saved config.
#   bash scripts/reproduce_rde.sh cuhk_pedes /data/CUHK-PEDES /ckpt/ViT-B-16.pt [extra CLI args]
# Datasets: cuhk_pedes | icfg_pedes | rstpreid. Needs one GPU (experiments/base/trainer_gpu.yaml).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -lt 3 ]; then
  echo "usage: bash scripts/reproduce_rde.sh {cuhk_pedes|icfg_pedes|rstpreid} DATASET_ROOT CLIP_CHECKPOINT [extra args]" >&2
  exit 2
fi
NAME=$1; ROOT=$2; CLIP=$3; shift 3
CONFIG=experiments/rde/$NAME.yaml
[ -f "$CONFIG" ] || { echo "no config $CONFIG" >&2; exit 2; }
RATES="0.0 0.2 0.5"; [ "${ALL_RATES:-0}" = 1 ] && RATES="0.0 0.2 0.5 0.8"
for RATE in $RATES; do
  GMM=light
  # the reference's GMM settings: strict above 40% noise and for RSTPReid
  if [ "$NAME" = rstpreid ] || awk "BEGIN{exit !($RATE > 0.4)}"; then GMM=strict; fi
  SAVE=runs/reproduce_rde/$NAME/noise_$RATE
  python -m mmembed fit -c experiments/base/trainer_gpu.yaml -c "$CONFIG" \
    --data.init_args.root="$ROOT" --model.init_args.encoder.init_args.pretrained="$CLIP" \
    --data.init_args.caption_noise.init_args.rate="$RATE" --model.init_args.gmm=$GMM \
    --trainer.logger.init_args.save_dir="$SAVE" "$@"
  RUN=$(ls -td "$SAVE"/*/version_* | head -n 1)
  for CKPT in best last; do
    echo ">> $NAME noise $RATE, $CKPT checkpoint"
    python -m mmembed test -c "$RUN/config.yaml" --ckpt_path "$RUN/checkpoints/$CKPT.ckpt"
  done
done
