#!/usr/bin/env bash
# SST-2 plain-KD benchmark (issue: foundation). Three runs of recipes/sst2-kd.yaml:
#   1. cold cache: the teacher runs during epoch 1 only (compare epoch_seconds[0] vs [1]);
#   2. same recipe again: the teacher runs zero times (report: teacher_forward_examples = 0);
#   3. kill -9 in the middle of training, then the same command with --resume.
# Usage: bash benchmarks/sst2_kd.sh [OUT_ROOT]   (about 40 minutes on 2 cores)
#   SKIP_COLD=1 CACHE=~/.cache/slimformer: reuse an existing run 1 and its cache
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/bench-sst2}
CACHE=${CACHE:-$OUT/cache}
SF=.venv/bin/slimformer
mkdir -p "$OUT"
lscpu | grep "Model name" | tee "$OUT/cpu.txt"

[ "${SKIP_COLD:-0}" = 1 ] || rm -rf "$CACHE"
[ "${SKIP_COLD:-0}" = 1 ] || $SF run recipes/sst2-kd.yaml --output "$OUT/run1" --overwrite --cache-dir "$CACHE"
$SF run recipes/sst2-kd.yaml --output "$OUT/run2" --overwrite --cache-dir "$CACHE"

# 3: start, kill -9 once the run is past its 2,500th step (checkpoints every 500), resume.
rm -rf "$OUT/run3" "$OUT/run3.incomplete"
$SF run recipes/sst2-kd.yaml --output "$OUT/run3" --cache-dir "$CACHE" > "$OUT/run3.log" 2>&1 &
pid=$!
until ls "$OUT"/run3.incomplete/stages/0-distill/checkpoints/step-0000250* >/dev/null 2>&1; do
  sleep 5
done
sleep 20
kill -9 $pid || true
wait $pid || true
echo "killed with -9 after checkpoint 2500"
$SF run recipes/sst2-kd.yaml --output "$OUT/run3" --cache-dir "$CACHE" --resume

.venv/bin/python - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
for name in ("run1", "run2", "run3"):
    try:
        r = json.load(open(f"{out}/{name}/report.json"))
    except FileNotFoundError:
        continue
    s = r["stages"][0]
    print(name, "teacher acc", r["teacher"]["metrics"]["accuracy"], "student acc",
          r["student"]["metrics"]["accuracy"], "retained", r["retained"], "speedup", r["speedup"],
          "epoch_s", s["epoch_seconds"], "teacher_forward", s["teacher_forward_examples"],
          "resumed_from", s["resumed_from_step"])
PY
