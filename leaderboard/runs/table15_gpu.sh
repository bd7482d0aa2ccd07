#!/usr/bin/env bash
# GPU runbook (one prepared script, about 10 minutes on one CUDA GPU): the CUDA tests, then the
# four Table 15 defenses (normal, mat, sep_pos, sep_neg) trained with the reference 25-epoch
# recipes on real Fashion-MNIST and scored at `quick` with guided backprop, four at once.
# Entries, their checkpoints, the CUDA tests' output and a timing table go into one folder.
#
#   OUT=gpu-table15 XRBENCH_DATA=/path/with/the/four/idx/files bash leaderboard/runs/table15_gpu.sh
#
# Needs: a Python with torch (CUDA build) and this checkout's dependencies (PYTHON, default
# python3); Fashion-MNIST's four idx files (.gz or not) in $XRBENCH_DATA, flat or in
# torchvision's layout, or where Debian's dataset-fashion-mnist installs them. Offline is fine.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python3}
OUT=${OUT:-gpu-table15}
mkdir -p "$OUT"
export XRBENCH_OFFLINE=1 XRBENCH_CACHE="$OUT/cache"
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device: this runbook is for a GPU machine')"
"$PY" -c "import xrbench" 2>/dev/null || "$PY" -m pip install -q --no-deps --no-build-isolation -e .
"$PY" -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0))" | tee "$OUT/device.txt"
start=$(date +%s)
"$PY" -m pytest -q -p no:cacheprovider tests/test_cuda.py 2>&1 | tee "$OUT/cuda-tests.txt"
echo "cuda tests: $(( $(date +%s) - start )) s" | tee -a "$OUT/device.txt"
"$PY" leaderboard/runs/table15.py --device cuda --jobs 4 --out "$OUT/results" 2>&1 | tee "$OUT/table15.log"
echo "total: $(( $(date +%s) - start )) s" | tee -a "$OUT/device.txt"
