#!/usr/bin/env bash
# One prepared GPU session (see docs/BENCHMARKS.md): pretrain the phantom backbone (shipped + a
# classification-only control), real-data two-phase training check, benchmark. Writes to $OUT.
# Needs the real images copied into the git-ignored .realdata/train/{NORMAL,PNEUMONIA} (carried to the machine).
set -u
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
PATIENTS=${PATIENTS:-16000}; EPOCHS=${EPOCHS:-24}
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, torchvision, sklearn, scipy, pandas; print('torch', torch.__version__, torchvision.__version__)"
# 1) pretrained backbone (label + lesion-map pretext) and a control without the lesion-map pretext
timeout 150 python3 scripts/pretrain_phantom_backbone.py --patients $PATIENTS --epochs $EPOCHS \
  --out "$OUT/phantom_resnet18_pretrained.pt" --report "$OUT/pretrain_aux.json" 2>&1 | tee "$OUT/pretrain_aux.log"
timeout 90 python3 scripts/pretrain_phantom_backbone.py --patients $PATIENTS --epochs $EPOCHS --aux-weight 0 \
  --out /tmp/cls_only.pt --report "$OUT/pretrain_cls_only.json" 2>&1 | tail -25
# 2) real data (train folder only: patient-wise val), full profile at 224 px
for W in phantom none; do
  WP=$W; [ $W = phantom ] && WP="$OUT/phantom_resnet18_pretrained.pt"
  CXR_PROJECT_ROOT=/tmp/real_$W timeout 50 python3 -m utils.train.pipeline --profile full --data-dir .realdata \
    --no-test --weights "$WP" --device cuda --report "$OUT/real_$W.json" 2>&1 | grep -v "it/s\]" | tail -6
done
# 3) benchmark on this GPU at 224 px, real JPEGs for the data path
timeout 60 python3 -m benchmarks.bench --device cuda --size 224 --data-dir .realdata --out "$OUT/bench_gpu.json" 2>&1 | tail -40
ls -la "$OUT"
