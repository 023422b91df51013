#!/usr/bin/env bash
# The GPU visit in one command: install the carried wheels over the machine's own torch, run bench/gpu.py.
#
#   bash bench/gpu_run.sh [arguments for bench/gpu.py]
#
# Needs .gpu-wheelhouse/ (made here by `make gpu-wheelhouse`, carried to the machine beside the working tree).
# Writes gpu.json, gpu.log and gpu_install.log into $OUT when it is set (the device runner's folder that
# comes back), else into reports/bench/. The wheels whose module the machine lacks are unpacked into a folder put
# first on PYTHONPATH (bench/gpu_wheelhouse.py install), so the machine's own torch and torchvision are used. (A
# venv with --system-site-packages does not do: there python3 is itself a venv, /opt/torch/.venv, and a venv made
# from it sees the base interpreter's packages, without torch; seen on the H200 on 2026-11-30.)
# Exits with bench/gpu.py's status.
set -uo pipefail
cd "$(dirname "$0")/.."
WHEELS="${GPU_WHEELHOUSE:-.gpu-wheelhouse}"
DEST="${OUT:-reports/bench}"
PY="${PYTHON:-python3}"
SITE="${GPU_SITE:-${TMPDIR:-/tmp}/slic-gpu-site}"
mkdir -p "$DEST"
LOG="$DEST/gpu_install.log"
: > "$LOG"

if [ -f "$WHEELS/requirements.txt" ]; then
  if "$PY" bench/gpu_wheelhouse.py install "$WHEELS" "$SITE" >>"$LOG" 2>&1; then
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
  else
    echo "unpacking the wheels of $WHEELS failed (see $LOG): running with what the machine has" | tee -a "$LOG"
  fi
else
  echo "no $WHEELS/requirements.txt: running with what the machine has" | tee -a "$LOG"
fi

REF=()
[ -f "$WHEELS/reference/flow_pairs.npz" ] && REF=(--reference "$WHEELS/reference")
"$PY" bench/gpu.py --out "$DEST/gpu.json" ${REF[@]+"${REF[@]}"} "$@" 2>&1 | tee "$DEST/gpu.log"
exit "${PIPESTATUS[0]}"
