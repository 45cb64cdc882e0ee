#!/usr/bin/env bash
# Issue 4 measurements on SST-2 (teacher ../shared/models/minilm-l6-sst2), two runs at a time on
# 2 cores (accuracy only: the latencies in these reports are not comparable, runs overlap).
#   bash benchmarks/data_distill.sh [OUT=runs/dd]
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/dd}
mkdir -p "$OUT"
S=.venv/bin/slimformer
lane_a() {
  $S run recipes/sst2-data-distill.yaml --output "$OUT/data-distill" --overwrite > "$OUT/data-distill.log" 2>&1
  for seed in 0 1 2; do
    $S run recipes/sst2-select30.yaml --output "$OUT/select30-entropy-s$seed" --overwrite \
      --set seed=$seed > "$OUT/select30-entropy-s$seed.log" 2>&1
  done
}
lane_b() {
  $S run recipes/sst2-5k-labels.yaml --output "$OUT/5k-labels" --overwrite > "$OUT/5k-labels.log" 2>&1
  for seed in 0 1 2; do
    $S run recipes/sst2-select30.yaml --output "$OUT/select30-random-s$seed" --overwrite \
      --set seed=$seed --set stages.0.distill.selection.criterion=random \
      --set stages.0.distill.selection.class_balanced=false \
      --set stages.0.distill.selection.sampling=top --set stages.0.distill.selection.skip_top=0 \
      --set stages.0.distill.selection.seed=$seed > "$OUT/select30-random-s$seed.log" 2>&1
  done
}
lane_a & lane_b & wait
.venv/bin/python - "$OUT" <<'PY'
import json, sys, pathlib
out = pathlib.Path(sys.argv[1])
for run in sorted(out.iterdir()):
    rep = run / "report.json"
    if rep.is_file():
        r = json.loads(rep.read_text())
        print(f"{run.name:28s} accuracy {r['student']['metrics']['accuracy']:.4f}  retained {r.get('retained')}")
PY
