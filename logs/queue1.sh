#!/bin/sh
cd /work/main
while pgrep -f "real.py --seeds 7 8 9 --rows intra_video slic_video" >/dev/null; do sleep 20; done
.venv/bin/python bench/real.py --seeds 7 8 9 --rows intra_video_nce slic_nce slic_supcon --no-classify --no-mlflow --work data/bench/real --out reports/bench/real_val/nce.json > logs/real_nce.log 2>&1
.venv/bin/python bench/ablation.py --biases 0.5 --seeds 7 8 9 --modes intra_video slic --params /tmp/params_nce.yaml --work data/bench/ablation_b05_nce --no-mlflow --out reports/bench/ablation_val/nce.json > logs/synth_nce.log 2>&1
