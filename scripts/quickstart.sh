#!/usr/bin/env bash
# The embedded default: install, train a tiny CLIP on SynthPedes, then test it
# from the saved config and the best checkpoint.
source "$(dirname "$0")/_env.sh"
START=$(date +%s)
mmembed fit -c experiments/quickstart.yaml "$@"
RUN=$(ls -td runs/quickstart/version_* | head -n 1)
echo ">> testing $RUN with its saved config and best checkpoint"
mmembed test -c "$RUN/config.yaml" --ckpt_path "$RUN/checkpoints/best.ckpt"
TEST_RUN=$(ls -td runs/quickstart/version_* | head -n 1)
echo ">> fit run:  $RUN (checkpoints, open_clip_model.pt, open_clip_config.json)"
echo ">> test run: $TEST_RUN (ranked_test.png)"
echo ">> quickstart took $(( $(date +%s) - START )) s after install"
