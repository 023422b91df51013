#!/usr/bin/env bash
# The GPU visit in one command: install the carried wheels over the machine's own torch, run bench/gpu.py.
#
#   bash bench/gpu_run.sh [arguments for bench/gpu.py]
#
# Needs .gpu-wheelhouse/ (made here by `make gpu-wheelhouse`, carried to the machine beside the working tree).
# Writes gpu.json, gpu.log and gpu_install.log into $OUT when it is set (the device runner's folder that
# comes back), else into reports/bench/. The wheels go into a venv with --system-site-packages, so the
# machine's torch and torchvision are used; without venv or pip, the wheels whose module is missing are
# unpacked into a folder on PYTHONPATH (bench/gpu_wheelhouse.py install). Exits with bench/gpu.py's status.
set -uo pipefail
cd "$(dirname "$0")/.."
WHEELS="${GPU_WHEELHOUSE:-.gpu-wheelhouse}"
DEST="${OUT:-reports/bench}"
PY="${PYTHON:-python3}"
VENV="${GPU_VENV:-${TMPDIR:-/tmp}/slic-gpu-venv}"
mkdir -p "$DEST"
LOG="$DEST/gpu_install.log"
: > "$LOG"

RUN_PY="$PY"
if [ -f "$WHEELS/requirements.txt" ]; then
  if "$PY" -m venv --system-site-packages "$VENV" >>"$LOG" 2>&1 \
     && "$VENV/bin/python" -m pip install --no-index --find-links "$WHEELS" -r "$WHEELS/requirements.txt" >>"$LOG" 2>&1; then
    RUN_PY="$VENV/bin/python"
  else
    echo "venv/pip install failed (see $LOG); unpacking the missing wheels instead" | tee -a "$LOG"
    SITE="${VENV}-site"
    "$PY" bench/gpu_wheelhouse.py install "$WHEELS" "$SITE" >>"$LOG" 2>&1
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
  fi
else
  echo "no $WHEELS/requirements.txt: running with what the machine has" | tee -a "$LOG"
fi

REF=()
[ -f "$WHEELS/reference/flow_pairs.npz" ] && REF=(--reference "$WHEELS/reference")
"$RUN_PY" bench/gpu.py --out "$DEST/gpu.json" ${REF[@]+"${REF[@]}"} "$@" 2>&1 | tee "$DEST/gpu.log"
exit "${PIPESTATUS[0]}"
