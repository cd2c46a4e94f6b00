#!/usr/bin/env bash
# The input-size study of benchmarks/README.md ("Input size and the probe-to-student gap"): the
# default DCAM (mask + AdaBN) and STFPM (+ AdaBN), 3 seeds, at 128, 192 and 256 px, with the
# teacher probe beside each, then the read-out levers on the same runs. EPOCHS=20 for dcam-train's
# default schedule (about 4x the 38 minutes of EPOCHS=6 on 2 CPU cores).
set -euo pipefail
cd "$(dirname "$0")/.."
EPOCHS=${EPOCHS:-6}
TAG=${TAG:-$(date +%Y%m%d)}
for size in 128 192 256; do
  .venv/bin/python benchmarks/accuracy.py --configs dcam-mask+adabn,stfpm+adabn --seeds 0,1,2 \
    --image-size "$size" --epochs "$EPOCHS" --no-fp16 --work "runs/size-$size-e$EPOCHS" --reuse \
    --tag "$TAG-size-$size-e$EPOCHS"
  .venv/bin/python benchmarks/levers.py "runs/size-$size-e$EPOCHS"/*-s? --tag "$TAG-size-$size-e$EPOCHS"
done
