#!/usr/bin/env bash
# The one command a lent GPU runs (from the repository root, with `.gpu/` carried; see README.md):
#   bash scripts/gpu/run.sh
# 1. installs the carried wheels (what the device's Python lacks) and makes restorekit's distributions,
#    which run from this checkout, known to importlib.metadata;
# 2. unpacks the faces;
# 3. runs the CUDA-op tests (kernels vs the PyTorch references), then tests/test_cuda_paths.py (methods,
#    metrics, compare and run on cuda against the CPU), in the background, into $OUT;
# 4. trains the face prior (`restorekit train stylegan2`) for TRAIN_MINUTES of wall clock, writing
#    a snapshot into $OUT every `snapshot_minutes` — generator.safetensors (EMA, fp16),
#    samples.png, metrics.jsonl, resume_g/resume_d.safetensors — so a run cut short still returns
#    its latest generator; everything printed goes to $OUT/run.log as well.
# With RACE_MINUTES > 0, step 4 first trains the StyleGAN2 D and the projected (frozen AlexNet) D side
# by side for that long, ranks their snapshots (scripts/gpu/race.py → $OUT/race.json) and continues
# the winner for TRAIN_MINUTES.
# If training fails before its first snapshot (a CUDA-only fault in bf16 autocast or channels-last,
# never run before this machine), the rest of the time goes on without them (`amp=false`,
# `channels_last=false`): the race winner's run continued, or else the recipe (StyleGAN2 D) from
# scratch. A slower run that returns a generator beats a wasted occasion. A race in which neither
# arm trained is skipped.
# Settings (environment): TRAIN_MINUTES (7), RACE_MINUTES (0), GAN_CONFIG (the prior128 recipe), GAN_SET (extra
# `--set k=v` words, for rehearsals), PYTHON (python3), WORK (/tmp/rk), OPS_TESTS (1), INIT_FROM
# (a snapshot folder to continue from, e.g. an earlier $OUT carried in `.gpu/`), RESUME (1: continue
# the previous call's run on a still-warm machine, exactly, from its checkpoint).
set -uo pipefail
cd "$(dirname "$0")/../.."
TRAIN_MINUTES=${TRAIN_MINUTES:-7}
GAN_CONFIG=${GAN_CONFIG:-plugins/psp_sr/recipes/prior128/gan.toml}
# shellcheck source=scripts/gpu/setup.sh
source scripts/gpu/setup.sh
# The wall clock the training may use in all (race + training), counted from here.
END=$(awk -v t="$(date +%s)" -v r="${RACE_MINUTES:-0}" -v m="$TRAIN_MINUTES" 'BEGIN { printf "%d", t + 60 * (r + m) + 30 }')

if [ "${OPS_TESTS:-1}" = 1 ]; then
    # The kernels are built (nvcc, ninja) in a folder of their own: a build the timeout cuts short
    # leaves torch's lock file behind, and any other process building there would wait on it forever.
    # SIGINT first, so that Python's finally blocks release that lock when they can.
    ( export TORCH_EXTENSIONS_DIR="$WORK/ext_tests"
      echo "ninja: $(ninja --version 2>&1 | head -1)" > "$WORK/gpu_tests.txt"
      timeout -s INT -k 20 300 $PY -m pytest -q -p no:cacheprovider -o addopts="" --import-mode=importlib \
          plugins/psp_sr/tests/test_ops.py "plugins/psp_sr/tests/test_stylegan2.py::test_generator_cuda_kernels_match_reference" \
          plugins/psp_sr/tests/test_inference.py::test_optimized_model_on_cuda_equals_plain_on_cpu \
          >> "$WORK/gpu_tests.txt" 2>&1; OPS=$?; echo "pytest exit $OPS" >> "$WORK/gpu_tests.txt"
      tail -c 12000 "$WORK/gpu_tests.txt" > "$OUT/gpu_tests.txt"
      # Then what users run on a GPU, end to end (methods, metrics, compare and run on cuda against
      # the CPU), reusing the kernels just built — within the training's time (END), and not after a
      # build the timeout cut short (its lock file would hold this run's build until the timeout).
      LEFT=$(( END - $(date +%s) - 15 )); [ "$LEFT" -gt 180 ] && LEFT=180
      if [ "$OPS" -ge 124 ] || [ "$LEFT" -lt 60 ]; then
          echo "cuda paths: not run (op tests exit $OPS, $LEFT s left)" >> "$WORK/gpu_tests.txt"
      else
          timeout -s INT -k 10 "$LEFT" $PY -m pytest -q -p no:cacheprovider -o addopts="" --import-mode=importlib -rs \
              tests/test_cuda_paths.py >> "$WORK/gpu_tests.txt" 2>&1; echo "pytest (cuda paths) exit $?" >> "$WORK/gpu_tests.txt"
      fi
      tail -c 12000 "$WORK/gpu_tests.txt" > "$OUT/gpu_tests.txt" ) &
    TESTS_PID=$!
fi

VAL=${VAL:-plugins/psp_sr/recipes/faces128/val.txt}
ALEX=$PWD/.gpu/weights/lpips-alex.safetensors
INIT=()
[ -n "${INIT_FROM:-}" ] && INIT=(--set "init_from=$INIT_FROM")
TRAIN=(train stylegan2 --data "$WORK/faces" --config "$GAN_CONFIG")
RACE_MINUTES=${RACE_MINUTES:-0}
if [ "${RESUME:-0}" = 1 ] && [ -d "$WORK/run/checkpoints" ]; then
    INIT=(--resume)  # a warm machine: continue the previous call's run exactly
elif [ "$RACE_MINUTES" != 0 ]; then
    # Which discriminator reaches faces sooner? Both train side by side on the GPU for the same
    # wall-clock minutes; the more realistic snapshot (Fréchet distance to the validation faces)
    # continues, the other is dropped. The figures come back in race.json. The distance is taken in
    # dlib's face-descriptor space when prepare.sh brought it (WITH_DLIB=1): the projected arm's D
    # is trained on AlexNet features, so AlexNet's own space would favour it by construction.
    RACE_SPACE=(--space alex_conv5 --weights "$ALEX")
    DLIB=$PWD/.gpu/weights/dlib_face_recognition_resnet_model_v1.safetensors
    [ -f "$DLIB" ] && RACE_SPACE=(--space dlib128 --weights "$DLIB")
    log "race: StyleGAN2 D vs projected AlexNet D, ${RACE_MINUTES} min side by side"
    # shellcheck disable=SC2086
    $PY -m restorekit "${TRAIN[@]}" --out "$WORK/race_stylegan2" --time-limit "$RACE_MINUTES" ${GAN_SET:-} \
        > "$WORK/race_stylegan2.log" 2>&1 &
    P1=$!
    # shellcheck disable=SC2086
    $PY -m restorekit "${TRAIN[@]}" --out "$WORK/race_projected" --time-limit "$RACE_MINUTES" \
        --set d_arch=projected --set r1_gamma=0 --set d_backbone="$ALEX" ${GAN_SET:-} > "$WORK/race_projected.log" 2>&1 &
    P2=$!
    wait $P1; wait $P2
    for arm in stylegan2 projected; do tail -n 4 "$WORK/race_$arm.log" | sed "s/^/[race $arm] /" | tee -a "$OUT/run.log"; done
    WINNER=$($PY scripts/gpu/race.py --data "$WORK/faces" --val "$VAL" --out "$OUT/race.json" "${RACE_SPACE[@]}" \
             stylegan2="$WORK/race_stylegan2/snapshot" projected="$WORK/race_projected/snapshot" 2>>"$OUT/run.log" \
             | tee -a "$OUT/run.log" | tail -n 1)
    case "$WINNER" in stylegan2|projected) ;; *)
        WINNER=stylegan2; [ -d "$WORK/race_stylegan2/checkpoints" ] || WINNER=projected
        [ -d "$WORK/race_$WINNER/checkpoints" ] || WINNER=none
        log "race: no ranking; continuing $WINNER";;
    esac
    log "race winner: $WINNER"
    if [ "$WINNER" = none ]; then
        log "race: neither arm trained (their last lines are above); training the recipe without a race"
    else
        rm -rf "$WORK/run" && mv "$WORK/race_$WINNER" "$WORK/run"
        [ "$WINNER" = projected ] && TRAIN+=(--set d_arch=projected --set r1_gamma=0 --set d_backbone="$ALEX")
        INIT=(--resume)
    fi
fi
# shellcheck disable=SC2086
$PY -m restorekit "${TRAIN[@]}" --out "$WORK/run" --set "snapshot_dir=$OUT" --time-limit "$TRAIN_MINUTES" \
    "${INIT[@]}" ${GAN_SET:-} 2>&1 | tee -a "$OUT/run.log"
STATUS=${PIPESTATUS[0]}
log "training exit $STATUS"
LEFT=$(( END - $(date +%s) ))
if [ "$STATUS" != 0 ] && [ ! -f "$OUT/generator.safetensors" ] && [ "$LEFT" -ge 60 ]; then
    MIN=$(awk -v s="$LEFT" 'BEGIN { printf "%.2f", (s - 20) / 60 }')
    if ls "$WORK/run/checkpoints"/step_*.pt >/dev/null 2>&1; then
        SAFE=(--out "$WORK/run" --resume)  # the race winner's run, continued
        log "no snapshot yet: continuing the run without bf16 autocast and channels-last, $MIN min"
    else
        SAFE=(--out "$WORK/run_safe" --set d_arch=stylegan2)
        log "no snapshot yet: training again from scratch without bf16 autocast and channels-last, $MIN min"
    fi
    # shellcheck disable=SC2086
    $PY -m restorekit "${TRAIN[@]}" --set "snapshot_dir=$OUT" --time-limit "$MIN" ${GAN_SET:-} \
        --set amp=false --set channels_last=false "${SAFE[@]}" 2>&1 | tee -a "$OUT/run.log"
    STATUS=${PIPESTATUS[0]}
    log "safe training exit $STATUS"
fi
if [ -n "${TESTS_PID:-}" ]; then
    wait "$TESTS_PID"
    log "ops tests: $(tail -n 2 "$OUT/gpu_tests.txt" | tr '\n' ' ')"
fi
ls -la "$OUT" | tee -a "$OUT/run.log"
exit "$STATUS"
