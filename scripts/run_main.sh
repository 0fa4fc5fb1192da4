#!/usr/bin/env bash
# The main command: set up the environment, then train and evaluate MaskFormer on the built-in
# synthetic datasets (semantic, then panoptic; generated on first use under $DETECTRON2_DATASETS)
# and print their metrics. Each run takes about 10 minutes on 2 CPU cores.
#
#   scripts/run_main.sh                        # both runs, outputs in output/synthetic_*
#   scripts/run_main.sh SOLVER.MAX_ITER 100    # extra config overrides for both runs
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup_env.sh
PY="${MASKFORMER_VENV:-.venv}/bin/python"
export DETECTRON2_DATASETS="${DETECTRON2_DATASETS:-datasets}"
OUT="${MASKFORMER_OUTPUT:-output}"

for task in sem_seg panoptic; do
  echo "=== training and evaluating configs/synthetic/maskformer_R18_${task}.yaml"
  "$PY" train_net.py --config-file "configs/synthetic/maskformer_R18_${task}.yaml" \
    OUTPUT_DIR "$OUT/synthetic_${task}" "$@"
done

"$PY" - "$OUT" <<'PYEOF'
import json, sys
from pathlib import Path

out = Path(sys.argv[1])
shown = {"sem_seg": ("mIoU", "fwIoU", "mACC", "pACC"), "panoptic_seg": ("PQ", "SQ", "RQ", "PQ_th", "PQ_st")}
for task in ("sem_seg", "panoptic"):
    results = json.loads((out / f"synthetic_{task}" / "eval_results.json").read_text())
    for group, names in shown.items():
        if group in results:
            line = "  ".join(f"{n} {results[group][n]:.1f}" for n in names)
            print(f"synthetic {task:8s} {group:13s} {line}")
PYEOF
