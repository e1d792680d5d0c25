#!/usr/bin/env bash
# The one command a lent GPU runs (from the repository root, with `.gpu/` carried; see README.md):
#   bash scripts/gpu/run.sh
# 1. installs the carried wheels (what the device's Python lacks, and restorekit itself);
# 2. unpacks the faces;
# 3. runs the CUDA-op tests (kernels vs the PyTorch references) in the background, into $OUT;
# 4. trains the face prior (`restorekit train stylegan2`) for TRAIN_MINUTES of wall clock, writing
#    a snapshot into $OUT every `snapshot_minutes` — generator.safetensors (EMA, fp16),
#    samples.png, metrics.jsonl, resume_g/resume_d.safetensors — so a run cut short still returns
#    its latest generator; everything printed goes to $OUT/run.log as well.
# Settings (environment): TRAIN_MINUTES (7), GAN_CONFIG (the prior128 recipe), GAN_SET (extra
# `--set k=v` words, for rehearsals), PYTHON (python3), WORK (/tmp/rk), OPS_TESTS (1), INIT_FROM
# (a snapshot folder to continue from, e.g. an earlier $OUT carried in `.gpu/`), RESUME (1: continue
# the previous call's run on a still-warm machine, exactly, from its checkpoint).
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:?set OUT to the folder whose files come back}
PY=${PYTHON:-python3}
WORK=${WORK:-/tmp/rk}
TRAIN_MINUTES=${TRAIN_MINUTES:-7}
GAN_CONFIG=${GAN_CONFIG:-plugins/psp_sr/recipes/prior128/gan.toml}
export PYTHONUNBUFFERED=1
mkdir -p "$OUT" "$WORK"
T0=$(date +%s)
log() { echo "[run.sh +$(( $(date +%s) - T0 ))s] $*" | tee -a "$OUT/run.log"; }

log "host: $(hostname); $($PY -c 'import sys, torch; print(sys.version.split()[0], "torch", torch.__version__, "cuda", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")' 2>&1)"
if [ ! -d "$WORK/site/restorekit" ]; then  # a warm machine keeps $WORK from the previous call
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$WORK/site" \
        .gpu/whl/*.whl >>"$OUT/run.log" 2>&1 || { log "wheel install failed"; exit 3; }
fi
export PYTHONPATH="$WORK/site${PYTHONPATH:+:$PYTHONPATH}"
export RESTOREKIT_HOME="$WORK/home"
if [ -f .gpu/weights/lpips-alex.safetensors ]; then
    $PY -m restorekit weights import lpips-alex .gpu/weights/lpips-alex.safetensors >>"$OUT/run.log" 2>&1 \
        || log "warning: lpips-alex import failed"
fi
if [ ! -d "$WORK/faces" ]; then
    mkdir -p "$WORK/faces" && tar -xzf .gpu/faces.tgz -C "$WORK/faces" || { log "no faces"; exit 3; }
fi
log "setup done: $(find "$WORK/faces" -name '*.webp' | wc -l) faces; $($PY -m restorekit --version 2>&1 | head -1)"

if [ "${OPS_TESTS:-1}" = 1 ]; then
    ( timeout 300 $PY -m pytest -q -p no:cacheprovider -o addopts="" --import-mode=importlib \
          plugins/psp_sr/tests/test_ops.py "plugins/psp_sr/tests/test_stylegan2.py::test_generator_cuda_kernels_match_reference" \
          > "$WORK/gpu_tests.txt" 2>&1; echo "pytest exit $?" >> "$WORK/gpu_tests.txt"
      tail -c 12000 "$WORK/gpu_tests.txt" > "$OUT/gpu_tests.txt" ) &
    TESTS_PID=$!
fi

INIT=()
[ -n "${INIT_FROM:-}" ] && INIT=(--set "init_from=$INIT_FROM")
# RESUME=1 on a warm machine continues the previous call's run exactly (its checkpoint is in $WORK/run).
[ "${RESUME:-0}" = 1 ] && [ -d "$WORK/run/checkpoints" ] && INIT=(--resume)
# shellcheck disable=SC2086
$PY -m restorekit train stylegan2 --data "$WORK/faces" --config "$GAN_CONFIG" --out "$WORK/run" \
    --set "snapshot_dir=$OUT" --time-limit "$TRAIN_MINUTES" "${INIT[@]}" ${GAN_SET:-} 2>&1 | tee -a "$OUT/run.log"
STATUS=${PIPESTATUS[0]}
log "training exit $STATUS"
if [ -n "${TESTS_PID:-}" ]; then
    wait "$TESTS_PID"
    log "ops tests: $(tail -n 2 "$OUT/gpu_tests.txt" | tr '\n' ' ')"
fi
ls -la "$OUT" | tee -a "$OUT/run.log"
exit "$STATUS"
