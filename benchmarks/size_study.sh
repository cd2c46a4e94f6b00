#!/usr/bin/env bash
# The input-size study of benchmarks/README.md ("Input size, training length and the
# probe-to-student gap"): the default DCAM (mask + AdaBN) and STFPM (+ AdaBN), 3 seeds, at 128,
# 192 and 256 px, with the teacher probe beside each, then the read-out levers on the same runs.
# EPOCHS=20 is dcam-train's default (about an hour on 2 CPU cores); EPOCHS=6 the first,
# undertrained table (38 min).
set -euo pipefail
cd "$(dirname "$0")/.."
EPOCHS=${EPOCHS:-20}
TAG=${TAG:-$(date +%Y%m%d)}
for size in 128 192 256; do
  .venv/bin/python benchmarks/accuracy.py --configs dcam-mask+adabn,stfpm+adabn --seeds 0,1,2 \
    --image-size "$size" --epochs "$EPOCHS" --no-fp16 --work "runs/size-$size-e$EPOCHS" --reuse \
    --tag "$TAG-size-$size-e$EPOCHS"
  .venv/bin/python benchmarks/levers.py "runs/size-$size-e$EPOCHS"/*-s? --tag "$TAG-size-$size-e$EPOCHS"
done
