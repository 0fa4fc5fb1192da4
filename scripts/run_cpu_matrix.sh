#!/usr/bin/env bash
# The golden, speed-option, fast-inference, export, kernel and criterion tests under each CPU kernel setting a user's
# machine may select (float rounding differs between them; the tests must pass under all).
# Extra arguments go to pytest. Prints one line of counts per setting; exits non-zero if any failed.
set -uo pipefail
cd "$(dirname "$0")/.."
VENV=${MASKFORMER_VENV:-.venv}
export DETECTRON2_DATASETS=${DETECTRON2_DATASETS:-$PWD/.cache/datasets}
TESTS=(tests/test_golden.py tests/test_speed_options.py tests/test_fast_inference.py tests/test_export.py
       tests/test_kernels.py tests/test_criterion.py)
# aten's kernels of a capability need these CPU flags: forced on a CPU without them, they stop the
# process with an illegal instruction, so such a setting is skipped (oneDNN's ISA is only a cap)
declare -A NEEDS=([ATEN_CPU_CAPABILITY=avx2]="avx2 fma"
                  [ATEN_CPU_CAPABILITY=avx512]="avx512f avx512bw avx512vl avx512dq")
FLAGS=" $(grep -m1 '^flags' /proc/cpuinfo 2>/dev/null | cut -d: -f2) "
status=0
for setting in ATEN_CPU_CAPABILITY=default ATEN_CPU_CAPABILITY=avx2 ATEN_CPU_CAPABILITY=avx512 \
               ONEDNN_MAX_CPU_ISA=SSE41 ONEDNN_MAX_CPU_ISA=AVX2; do
  missing=""
  if [ "$FLAGS" != "  " ]; then
    for flag in ${NEEDS[$setting]:-}; do
      case "$FLAGS" in *" $flag "*) ;; *) missing="$missing $flag" ;; esac
    done
  fi
  if [ -n "$missing" ]; then
    echo "$setting: skipped, this CPU lacks$missing"
    continue
  fi
  summary=$(env "$setting" "$VENV/bin/python" -m pytest -q -p no:cacheprovider "${TESTS[@]}" "$@" 2>&1 | tail -n 1)
  echo "$setting: $summary"
  case "$summary" in *failed*|*error*|"") status=1 ;; esac
done
exit $status
