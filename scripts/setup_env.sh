#!/usr/bin/env bash
# Create (or reuse) the project virtual environment and install everything:
# pinned requirements, detectron2 (the user's own build when importable, else the
# pure-Python sal-detectron2 redistribution), and this package in editable mode.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${MASKFORMER_VENV:-.venv}
PYTHON=${PYTHON:-python3}

if [ ! -x "$VENV/bin/python" ]; then
  # A detectron2 already importable by the host Python (an official build) is kept visible.
  if "$PYTHON" -c "import detectron2" >/dev/null 2>&1; then
    "$PYTHON" -m venv --system-site-packages "$VENV"
  else
    "$PYTHON" -m venv "$VENV"
  fi
fi
PY="$VENV/bin/python"
"$PY" -m pip install -q -r requirements.txt 2>&1 | grep -v "^WARNING: Location" || true
"$PY" -c "import torch, torchvision, scipy, cv2, panopticapi" 
# Test set-up only (tests/test_hf_interop.py compares with transformers' MaskFormer; never a runtime
# dependency): transformers and the few packages its import needs, --no-deps so that nothing
# replaces torch or numpy.
"$PY" -m pip install -q --no-deps transformers==5.23.0 huggingface-hub==2.4.0 tokenizers==0.23.3 \
    regex==2026.11.19 httpx2==2.16.2 httpcore2==2.16.2 anyio==4.16.0 h11==0.16.0 idna==3.20 \
    truststore==0.10.5 2>&1 | grep -v "^WARNING: Location" || true
"$PY" -c "from transformers import MaskFormerForInstanceSegmentation"
# The serve extra's pinned packages (tools/serve.py), --no-deps for the same reason; and, for the
# test of the service's page only, selenium with what its import needs (it drives Debian's
# chromium, which .ci/run installs; it never downloads a browser or driver).
"$PY" -m pip install -q --no-deps -r requirements-serve.txt 2>&1 | grep -v "^WARNING: Location" || true
"$PY" -m pip install -q --no-deps selenium==4.50.0 urllib3==2.8.0 certifi==2026.10.19.post1 \
    websocket-client==1.9.2 2>&1 | grep -v "^WARNING: Location" || true
"$PY" -c "import fastapi, uvicorn, python_multipart, selenium.webdriver"

if ! "$PY" -c "import detectron2" >/dev/null 2>&1; then
  # The wheel is tagged for Python 3.10 but its Python code runs on 3.11; its compiled _C is never loaded.
  "$PY" -m pip install -q --no-deps --python-version 3.10 --only-binary=:all: \
      --target .deps/detectron2 sal-detectron2==0.7.2 2>&1 | grep -v "^WARNING: Location" || true
  SITE=$("$PY" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
  echo "$PWD/.deps/detectron2" > "$SITE/detectron2_sal.pth"
fi
"$PY" -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | grep -v "^WARNING: Location" || true
"$PY" -c "import maskformer, detectron2; print('maskformer environment ready: detectron2', detectron2.__version__)"
