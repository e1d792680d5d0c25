#!/usr/bin/env bash
# Stage 2 on a lent GPU: the pSp encoder trained against the face prior, generator frozen
# (plugins/psp_sr/recipes/prior128/stage2_gpu.toml), for STAGE2_MINUTES of wall clock. Run from
# the repository root with `.gpu/` carried, prepared with WITH_DLIB=1 (the identity loss's dlib
# descriptor):
#   STAGE2_MINUTES=2.5 bash scripts/gpu/stage2.sh
# It is meant as the second command on a machine still warm from run.sh (the setup is then
# skipped and the prior is the run's last EMA snapshot, $WORK/run/snapshot/generator.safetensors);
# on a fresh machine set GEN to a carried generator file.
# Into $OUT: psp_encoder.safetensors (the encoder part, fp16; rebuilt on the CPU machine with
# `scripts/gpu/psp_parts.py join`), stage2_log.jsonl, stage2_val.png, run.log.
set -uo pipefail
cd "$(dirname "$0")/../.."
STAGE2_MINUTES=${STAGE2_MINUTES:?set STAGE2_MINUTES}
# shellcheck source=scripts/gpu/setup.sh
source scripts/gpu/setup.sh

GEN=${GEN:-$WORK/run/snapshot/generator.safetensors}
[ -f "$GEN" ] || { log "no generator at $GEN (set GEN)"; exit 3; }
[ -f .gpu/weights/dlib_face_recognition_resnet_model_v1.safetensors ] \
    || { log "no dlib descriptor in .gpu/weights (prepare.sh with WITH_DLIB=1)"; exit 3; }
log "stage 2 for ${STAGE2_MINUTES} min against $GEN ($(sha256sum "$GEN" | cut -c1-16)…)"
RUN=$WORK/psp
RESUME=()
[ -d "$RUN/checkpoints" ] && RESUME=(--resume)  # a second call on the same warm machine continues
# shellcheck disable=SC2086
$PY -m restorekit train psp_sr --data "$WORK/faces" --config "${STAGE2_CONFIG:-plugins/psp_sr/recipes/prior128/stage2_gpu.toml}" \
    --out "$RUN" --set "generator=$GEN" --time-limit "$STAGE2_MINUTES" --quiet "${RESUME[@]}" ${STAGE2_SET:-} 2>&1 \
    | grep -v '━' | tee -a "$OUT/run.log"
STATUS=${PIPESTATUS[0]}
log "stage 2 exit $STATUS; last log line: $(tail -n 1 "$RUN/log.jsonl" 2>/dev/null)"
# The run stops at its time limit with a checkpoint; exporting it ends the schedule at that step.
CKPT=$(ls "$RUN"/checkpoints/step_*.pt 2>/dev/null | sort | tail -n 1)
STEP=$(basename "${CKPT:-}" .pt | sed -n 's/^step_0*//p')
if [ -n "$STEP" ]; then
    $PY -m restorekit train psp_sr --out "$RUN" --resume --steps "$STEP" --quiet 2>&1 | tail -n 2 | tee -a "$OUT/run.log"
    $PY scripts/gpu/psp_parts.py split "$RUN/model.safetensors" "$GEN" "$OUT/psp_encoder.safetensors" 2>&1 | tee -a "$OUT/run.log"
    [ -f "$RUN/log.jsonl" ] && cp "$RUN/log.jsonl" "$OUT/stage2_log.jsonl"  # none before the first log_every steps
    VAL=$(ls -t "$RUN"/val/*.png 2>/dev/null | head -n 1)
    [ -n "$VAL" ] && cp "$VAL" "$OUT/stage2_val.png"
fi
ls -la "$OUT" | tee -a "$OUT/run.log"
[ -f "$OUT/psp_encoder.safetensors" ] || exit 4
exit "$STATUS"
