#!/usr/bin/env bash
# The flywheel demo, after the main job has prepared the data (`bash scripts/main.sh`, or just
# `slm-swap prepare --source bfcl --train 80 --test 24`); it does not use the main job's adapters:
#   bash scripts/flywheel.sh            # FLYWHEEL_BATCH, FLYWHEEL_STEPS, FLYWHEEL_ROUNDS to resize
# The gateway (route mode) over the scripted teacher (NOT A MODEL: gold answers, a few wrong on
# purpose) and the UNTRAINED embedded model:
#   round 0: a batch of BFCL requests replayed through it: nearly everything falls back, the gateway
#            writes its records;
#   then one flywheel round on those records (`slm_swap.app.flywheel.run_round`, what
#   `slm-swap flywheel --track toolcall` runs): rows, fine-tune, evaluate on held-out traffic, gate,
#   calibrate, promote into the demo's registry;
#   round 1: a FRESH batch (rows no earlier batch held) replayed with the promoted adapter and policy;
#   round 2: the same once more.
# It ends with the per-round table (coverage, the gateway's accuracy next to hosted alone) and the chart
# slm_swap/06_gateway/flywheel_gain/flywheel_gain.png (bench/flywheel_gain.py, which runs all of it).
# 24 requests a round and 20 steps keep it within about 15 minutes on 2 CPU cores. The gate promotes a
# candidate only when it beats the promoted adapter on the held-out traffic, and the gateway serves an
# SLM answer only where the calibration shows the target accuracy with 95% confidence: on this CPU the
# 135M model learns too little in 20 steps for that, so expect accuracy held and coverage 0
# (docs/benchmarks.md#the-flywheel).
set -euo pipefail
. "$(dirname "$0")/demo_env.sh"

track=toolcall
for split in train val test; do
  if [ ! -f "slm_swap/02_dataset/$track/$split.jsonl" ]; then
    echo "no prepared data (slm_swap/02_dataset/$track/$split.jsonl): run \`bash scripts/main.sh\` first" >&2
    exit 2
  fi
done
echo "hosted side: a SCRIPTED STAND-IN, NOT A MODEL (gold answers, every 12th wrong, every 15th cut off)."

python bench/flywheel_gain.py --track "$track" --rounds "${FLYWHEEL_ROUNDS:-2}" \
  --batch "${FLYWHEEL_BATCH:-24}" --max-steps "${FLYWHEEL_STEPS:-20}" --heldout-per-round 6 \
  --work slm_swap/06_gateway/flywheel_gain
