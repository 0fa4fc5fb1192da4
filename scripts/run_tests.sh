#!/usr/bin/env bash
# Set up (or reuse) the environment, then run the default test suite.
# Extra arguments go to pytest, e.g. scripts/run_tests.sh tests/test_golden.py -x
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
VENV=${MASKFORMER_VENV:-.venv}
# Generated datasets go to a throw-away folder unless the caller chose one.
export DETECTRON2_DATASETS=${DETECTRON2_DATASETS:-$PWD/.cache/datasets}
exec "$VENV/bin/python" -m pytest -q "$@"
