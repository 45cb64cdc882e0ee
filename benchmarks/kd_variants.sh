#!/usr/bin/env bash
# Issue 4 comparisons on SST-2, one run at a time, 1 epoch each (the shipped recipes train 3):
# plain KD (random order) vs curriculum, RKD on vs off, multi-teacher vs the reference teacher.
# The second teacher is fine-tuned first (recipes/sst2-teacher-seed1.yaml, 1 epoch).
#   bash benchmarks/kd_variants.sh [OUT=runs/kd-variants]
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/kd-variants}
mkdir -p "$OUT"
S=.venv/bin/slimformer
ONE_EPOCH=(--set stages.0.distill.epochs=1 --set stages.0.distill.eval_every=500 --overwrite)
for name in kd curriculum rkd; do
  $S run "recipes/sst2-$name.yaml" --output "$OUT/$name-1ep" "${ONE_EPOCH[@]}" > "$OUT/$name-1ep.log" 2>&1
done
[ -f runs/sst2-teacher-seed1/report.json ] || \
  $S run recipes/sst2-teacher-seed1.yaml --output runs/sst2-teacher-seed1 --overwrite > "$OUT/teacher-seed1.log" 2>&1
$S run recipes/sst2-multi-teacher.yaml --output "$OUT/multi-teacher-1ep" "${ONE_EPOCH[@]}" > "$OUT/multi-teacher-1ep.log" 2>&1
# the second teacher alone (it is the stronger one on dev), for "multi-teacher vs the best single"
$S run recipes/sst2-kd.yaml --output "$OUT/kd-teacher2-1ep" --set teacher.model=runs/sst2-teacher-seed1/model \
  "${ONE_EPOCH[@]}" > "$OUT/kd-teacher2-1ep.log" 2>&1
.venv/bin/python - "$OUT" <<'PY'
import json, sys
from pathlib import Path
for run in sorted(Path(sys.argv[1]).glob("*/report.json")):
    r = json.loads(run.read_text())
    best = r["stages"][0].get("best") or {}
    print(f"{run.parent.name}: dev accuracy {r['student']['metrics']['accuracy']:.4f} "
          f"(best step {best.get('step')}), epoch {r['stages'][0]['epoch_seconds']} s")
PY
