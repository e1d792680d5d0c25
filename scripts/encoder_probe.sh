#!/usr/bin/env bash
# psp_sr's encoder measured on a face prior, in one resumable command, so that encoder variants
# (pSp's one pass, ReStyle's passes, learning rates …) are compared on the same terms: a warm start
# (scripts/psp_warm_start.py) or a given encoder, stage 2 on both cores (`train psp_sr`, torchrun),
# then `compare` ×8 against bicubic on 60 validation faces (every 7th line of faces128/val.txt:
# LPIPS-alex, dlib distance, LR-consistency; the win share is issue #18's "closer to the person
# than bicubic"; scripts/mirrored_identity.py the same on mirrored pairs) and
# scripts/encoder_spread.py (how far the codes leave the average face), with a one-line summary at
# the end, also in OUT/summary.json.
#   GEN=stylegan2-faces128 TAG=restyle2 \
#       SET="restyle_iterations=2" nohup bash scripts/encoder_probe.sh > runs/probe/restyle2.log 2>&1 &
# Settings: GEN (the generator; required), TAG (required), STEPS (stage-2 steps, 5000), WARM
# (warm-start steps, 3000; 0: none), INIT (start stage 2 from this psp_sr model instead of a warm
# start), SET (space-separated KEY=VALUE settings over the recipe's, for the warm start and stage 2
# alike, e.g. "restyle_iterations=2 encoder_backbone=ir_se_small head_channels=128"), RECIPE
# (faces128/stage2_psp.toml), FACES (../shared/data/faces), OUT (runs/probe/TAG), RK, PY, TORCHRUN
# (.venv/bin/…). Each stage is skipped when its result exists, so a call cut short is repeated.
set -euo pipefail
cd "$(dirname "$0")/.."
RK=${RK:-.venv/bin/restorekit}
PY=${PY:-.venv/bin/python}
TORCHRUN=${TORCHRUN:-.venv/bin/torchrun}
GEN=${GEN:?set GEN to the generator file (or weights name) the encoder decodes with}
TAG=${TAG:?set TAG to name this probe}
STEPS=${STEPS:-5000}
WARM=${WARM:-3000}
RECIPE=${RECIPE:-plugins/psp_sr/recipes/faces128/stage2_psp.toml}
FACES=$(cd "${FACES:-../shared/data/faces}" && pwd)
OUT=${OUT:-runs/probe/$TAG}
mkdir -p "$OUT"
log() { echo "[encoder_probe.sh $(date +%H:%M:%S)] $*"; }

SETS=()
for kv in ${SET:-}; do SETS+=(--set "$kv"); done
grep -v "^!" plugins/psp_sr/recipes/faces128/val.txt | sed "s#^#$FACES/#" | grep -v "/#" | grep . | awk 'NR % 7 == 1' \
    > "$OUT/val60.txt"

START=${INIT:-}
if [ -z "$START" ] && [ "$WARM" -gt 0 ]; then
    START=$OUT/warm.safetensors
    if [ ! -f "$START" ]; then
        log "warm start: $WARM steps of W+ regression on the generator's own faces"
        OMP_NUM_THREADS=2 $PY scripts/psp_warm_start.py --generator "$GEN" --config "$RECIPE" \
            --steps "$WARM" --threads 2 --out "$START" "${SETS[@]}"
    fi
fi

MODEL=$OUT/psp/model.safetensors
if [ ! -f "$MODEL" ]; then
    RESUME=()
    [ -d "$OUT/psp/checkpoints" ] && RESUME=(--resume)
    INIT_SET=()
    [ -n "$START" ] && INIT_SET=(--set "init=$START")
    log "stage 2: $STEPS steps on both cores ${RESUME[*]:-}"
    OMP_NUM_THREADS=1 $TORCHRUN --standalone --nproc_per_node 2 -m restorekit train psp_sr --data "$FACES" \
        --config "$RECIPE" --out "$OUT/psp" --set "generator=$GEN" --set "steps=$STEPS" \
        "${SETS[@]}" "${INIT_SET[@]}" "${RESUME[@]}"
fi

if [ ! -s "$OUT/eval_x8/results.json" ]; then
    log "compare ×8 on $(wc -l < "$OUT/val60.txt") validation faces"
    $RK compare --methods psp_sr,bicubic --baseline bicubic --scale 8 --data "@$OUT/val60.txt" \
        --out "$OUT/eval_x8" --metrics lpips_alex_v0.1,identity_dlib_dist,lr_consistency --quiet \
        --opt "psp_sr.weights=$MODEL"
fi
[ -s "$OUT/spread.json" ] || $PY scripts/encoder_spread.py "$MODEL" --data "@$OUT/val60.txt" --json "$OUT/spread.json"
[ -s "$OUT/mirrored.json" ] || $PY scripts/mirrored_identity.py "$OUT/eval_x8" --data "$OUT/val60.txt" \
    --json "$OUT/mirrored.json" > /dev/null

$PY - "$OUT" "$TAG" <<'EOF'
import json, sys
from pathlib import Path

sys.path.insert(0, "scripts/gpu")
from check_bars import DIST, LPIPS, LRC, Run  # noqa: E402

out, tag = Path(sys.argv[1]), sys.argv[2]
run = Run(out / "eval_x8")
closer = run.paired("psp_sr", "bicubic", DIST)
summary = {"tag": tag, "faces": closer.n, "closer_than_bicubic": round(closer.win * closer.n),
           **{f"{m}_{k}": run.mean(m, metric) for m in ("psp_sr", "bicubic")
              for k, metric in (("lpips", LPIPS), ("dlib", DIST), ("lr_consistency", LRC))},
           "mirrored": json.loads((out / "mirrored.json").read_text(encoding="utf-8"))["psp_sr"]["mirrored"],
           "spread": json.loads((out / "spread.json").read_text(encoding="utf-8"))}
mirrored = summary["mirrored"]
(out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
print(f"[encoder_probe.sh] {tag}: ×8 on {closer.n} faces: LPIPS {summary['psp_sr_lpips']:.3f} "
      f"(bicubic {summary['bicubic_lpips']:.3f}), dlib {summary['psp_sr_dlib']:.3f} "
      f"(bicubic {summary['bicubic_dlib']:.3f}), closer than bicubic {summary['closer_than_bicubic']}/{closer.n}, "
      f"LR-consistency {summary['psp_sr_lr_consistency']:.4f}; mirrored pairs: dlib {mirrored['mean']:.3f} "
      f"(bicubic {mirrored['baseline_mean']:.3f}), closer {mirrored['closer_than_baseline']}/{mirrored['faces']}")
EOF
