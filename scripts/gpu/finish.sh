#!/usr/bin/env bash
# After a GPU call, on the CPU machine: from the files the device returned to the shipped defaults
# and the model card's figures, stage by stage, so the work can stop and continue (stage 2 continues
# its own checkpoints), in this or a later session. A stage is skipped only when its record in $W is
# of the file given now: realism.json and realism_before.json name the sha256 of the generator file
# they measured, shipped-*.json that of the file they shipped from (source_sha256) and of the file
# shipped; the compare stages always call `restorekit compare`, which reuses its finished records of
# the same settings and refuses (exit 2) a folder made with other weights.
#   RETURNED=runs/gpu1 [PART=runs/gpu1b/psp_encoder.safetensors] bash scripts/gpu/finish.sh [STAGE...]
# RETURNED: the first call's files (generator.safetensors, metrics.jsonl, samples.png, …), copied
# out of the device tool's read-only folder; PART: the second call's encoder part, if there was one.
# Stages, in order (default: all):
#   realism         Fréchet figures and the face share of the returned generator → $W/realism.json, and
#                   of the prior shipped now → $W/realism_before.json
#   ship-generator  the generator becomes `stylegan2-faces128` (scripts/ship_embedded_model.py), only
#                   when it is better than the shipped one (dlib Fréchet distance, >= 80% faces;
#                   SHIP_ANYWAY=1: regardless)
#   stage2          the pSp encoder on both cores against the shipped generator (from PART if given)
#   ship-psp        psp_sr's default `psp-sr-faces128`, naming the generator
#   evaluate        compare on the validation split: ×8 and ×4 (bicubic, pix2pixhd, psp_sr, all 420
#                   faces), and ×8 psp_pulse/pulse/psp_sr/bicubic on 47 of them; each again with
#                   3 consistency steps for every learned method (eval_*_cs3)
#   figures         the card's images: samples and the ×8 grid, into docs/images/
#   bars            check_bars.py: issue #18's "done when" bars, pass or fail, and the card's tables;
#                   when it exits non-zero, so does this script, naming the `git restore` that puts the
#                   committed shipped files back (the ship stages wrote over them before the bars)
# Settings: FACES (../shared/data/faces), W (runs/prior128_finish), STAGE2_STEPS (the recipe's 5000;
# 3000 when continuing a GPU part), STAGE2_MINUTES (a time limit for this session's share), KIMG
# (for the data note; read from metrics.jsonl), TRAINED_ON (the data note's hardware; default: the GPU named in RETURNED/run.log; the
# CPU route's snapshot folder as RETURNED: "a 2-core CPU"), EVAL_LIMIT (compare only the first N faces
# of each list: rehearsals; check_bars.py is then given --partial and never exits 0).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
RK=${RK:-.venv/bin/restorekit}
FACES=$(cd "${FACES:-../shared/data/faces}" && pwd)
W=${W:-runs/prior128_finish}
RETURNED=${RETURNED:?set RETURNED to the folder holding the files the GPU call returned}
GEN=$RETURNED/generator.safetensors
PSP_RUN=${PSP_RUN:-runs/prior128_psp}
mkdir -p "$W"
log() { echo "[finish.sh $(date +%H:%M:%S)] $*" | tee -a "$W/finish.log"; }
[ -f "$GEN" ] || { log "no $GEN"; exit 2; }
SHIPPED_GEN=plugins/psp_sr/restorekit_psp_sr/weights/stylegan2_faces128.safetensors

sha_of() { sha256sum "$1" | cut -d' ' -f1; }
GEN_SHA=$(sha_of "$GEN")
field() {  # RECORD KEY: a top-level field of a JSON record in $W (empty when the file or the field is missing)
    [ -s "$1" ] || return 0
    $PY -c "import json, sys; print(json.load(open(sys.argv[1])).get(sys.argv[2]) or '')" "$1" "$2" 2>/dev/null || true
}
stamp() {  # RECORD KEY VALUE: add a field to a JSON record (its .part, before it is moved into place)
    $PY -c "import json, sys; p = sys.argv[1]; d = json.load(open(p)); d[sys.argv[2]] = sys.argv[3]; json.dump(d, open(p, 'w'), indent=2)" "$@"
}
shipped_from() {  # RECORD SHA: whether RECORD shipped the file of sha256 SHA and its shipped file is still the one written
    local file
    [ "$(field "$1" source_sha256)" = "$2" ] || return 1
    file=$(field "$1" file)
    [ -f "$file" ] && [ "$(sha_of "$file")" = "$(field "$1" sha256)" ]
}

# Validation lists (absolute paths; @lists are read relative to their own folder).
grep -v "^!" plugins/psp_sr/recipes/faces128/val.txt | sed "s#^#$FACES/#" | grep -v "/#" | grep . > "$W/val.txt"
grep /ffhq128/ "$W/val.txt" > "$W/val_ffhq.txt"  # check_bars.py: the per-source win shares
# 47 faces from both sources, for the slow methods; not the 47 (NR % 9 == 1) psp_pulse's defaults were chosen on
awk 'NR % 9 == 5' "$W/val.txt" > "$W/val_pulse.txt"
KIMG=${KIMG:-$($PY -c "import sys; from restorekit.training.plot import read_records; print(round(read_records(sys.argv[1])[-1]['kimg']))" "$RETURNED/metrics.jsonl" 2>/dev/null || echo '?')}
# The GPU the run trained on, as setup.sh logged it ("… cuda True NVIDIA H100 80GB HBM3").
GPU_NAME=$(grep -m1 "host:" "$RETURNED/run.log" 2>/dev/null | sed -n 's/.* cuda True //p' || true)
TRAINED_ON=${TRAINED_ON:-${GPU_NAME:+one $GPU_NAME}}
NOTE="FFHQ thumbnails + All-Age-Faces, 128 px, faces128/val.txt held out; $KIMG kimg on ${TRAINED_ON:-one GPU}"
METRICS=psnr_y_crop,ssim_y_crop,lpips_alex_v0.1,identity_dlib_dist,lr_consistency

realism_of() {  # OUT SHA WHAT [--weights FILE]: the card's realism figures of a generator (default: the
    # shipped one) whose file has sha256 SHA; an OUT of another file (an earlier run's) is measured again
    local out=$1 sha=$2 what=$3; shift 3
    if [ "$(field "$out" generator_sha256)" = "$sha" ]; then
        log "realism of $what: $out is of this file (sha256 ${sha:0:12}…)"; return
    fi
    log "realism of $what (1000 samples, alex + dlib, mtcnn on 32 samples at truncation 0.7)"
    $RK realism --generator stylegan2 "$@" --data "@$W/val.txt" --n 1000 --spaces alex,dlib \
        --detector mtcnn --detect-n 32 --detect-truncation 0.7 --json > "$out.part"
    stamp "$out.part" generator_sha256 "$sha"
    mv "$out.part" "$out"
}

stage_realism() {
    realism_of "$W/realism.json" "$GEN_SHA" "$GEN" --weights "$GEN"
    # The prior shipped now, measured the same way: ship-generator replaces it only by a better one
    # (once the returned generator is the shipped one, there is nothing to compare).
    shipped_from "$W/shipped-generator.json" "$GEN_SHA" \
        || realism_of "$W/realism_before.json" "$(sha_of "$SHIPPED_GEN")" "the shipped prior, for comparison"
}

# The ship stages are skipped on their record in $W, not on the registry entries: those are
# committed, and a new run (e.g. a GPU prior replacing the CPU route's) must ship over them. A record
# counts only when it shipped the file given now and its shipped file is still the one it wrote.
stage_ship_generator() {
    if shipped_from "$W/shipped-generator.json" "$GEN_SHA"; then log "ship-generator: $GEN is shipped already"; return; fi
    # Never replace the shipped prior by a worse one (a short or failed GPU run): the returned generator
    # must have the lower Fréchet distance in dlib's face-descriptor space, and a face in >= 80% of
    # the samples. SHIP_ANYWAY=1 ships it regardless.
    if [ "${SHIP_ANYWAY:-0}" != 1 ]; then
        realism_of "$W/realism.json" "$GEN_SHA" "$GEN" --weights "$GEN"  # (this stage alone: measured here)
        realism_of "$W/realism_before.json" "$(sha_of "$SHIPPED_GEN")" "the shipped prior, for comparison"
        if ! $PY - "$W/realism.json" "$W/realism_before.json" <<'PYEOF'
import json, sys
new, old = (json.load(open(p)) for p in sys.argv[1:3])
fig = lambda r, s: next(f["distance"] for f in r["figures"] if f["space"].startswith(s))
better = fig(new, "dlib") < fig(old, "dlib") and new["faces"]["share"] >= 0.8
print(f"returned: dlib {fig(new, 'dlib'):.4f}, alex {fig(new, 'alex'):.2f}, faces {new['faces']['share']:.0%}; "
      f"shipped: dlib {fig(old, 'dlib'):.4f}, alex {fig(old, 'alex'):.2f}, faces {old['faces']['share']:.0%}")
sys.exit(0 if better else 1)
PYEOF
        then
            log "the returned generator is not better than the shipped prior (above): not shipped (SHIP_ANYWAY=1 ships it)"
            exit 3
        fi
    fi
    log "ship the generator ($NOTE)"
    $PY scripts/ship_embedded_model.py stylegan2 "$GEN" --data-note "$NOTE" > "$W/shipped-generator.json.part"
    stamp "$W/shipped-generator.json.part" source_sha256 "$GEN_SHA"  # check_bars.py: realism.json is of this file
    mv "$W/shipped-generator.json.part" "$W/shipped-generator.json"
}

stage_stage2() {
    [ -f "$PSP_RUN/model.safetensors" ] && return
    local args=(--set generator=stylegan2-faces128) steps=${STAGE2_STEPS:-5000}
    if [ -n "${PART:-}" ]; then
        [ -f "$W/psp_init.safetensors" ] || $PY scripts/gpu/psp_parts.py join "$PART" "$GEN" "$W/psp_init.safetensors"
        args+=(--set "init=$W/psp_init.safetensors"); steps=${STAGE2_STEPS:-3000}
    fi
    [ -d "$PSP_RUN/checkpoints" ] && args=(--resume)
    log "stage 2: $steps steps into $PSP_RUN ${STAGE2_MINUTES:+(at most $STAGE2_MINUTES min now)}"
    OMP_NUM_THREADS=1 ${TORCHRUN:-.venv/bin/torchrun} --standalone --nproc_per_node 2 -m restorekit train psp_sr \
        --data "$FACES" --config plugins/psp_sr/recipes/faces128/stage2_psp.toml --out "$PSP_RUN" \
        --steps "$steps" "${args[@]}" ${STAGE2_MINUTES:+--time-limit "$STAGE2_MINUTES"} --quiet
    [ -f "$PSP_RUN/model.safetensors" ] || { log "stage 2 stopped before its last step: run this stage again"; exit 3; }
}

stage_ship_psp() {
    local steps model_sha
    model_sha=$(sha_of "$PSP_RUN/model.safetensors")
    if shipped_from "$W/shipped-psp.json" "$model_sha"; then log "ship-psp: $PSP_RUN/model.safetensors is shipped already"; return; fi
    steps=$($PY -c "import sys; from restorekit.training.plot import read_records; print(read_records(sys.argv[1])[-1]['step'])" "$PSP_RUN/log.jsonl")
    log "ship psp_sr ($steps steps)"
    $PY scripts/ship_embedded_model.py psp_sr "$PSP_RUN/model.safetensors" --generator stylegan2-faces128 \
        --data-note "as stylegan2-faces128; stage 2: $steps steps, batch 8${PART:+, continuing a GPU stage 2}" \
        > "$W/shipped-psp.json.part"
    stamp "$W/shipped-psp.json.part" source_sha256 "$model_sha"
    mv "$W/shipped-psp.json.part" "$W/shipped-psp.json"
}

compare() {  # OUT METHODS SCALE LIST [extra…]
    local out=$1 methods=$2 scale=$3 list=$4 faces; shift 4
    faces=$(wc -l < "$list")
    if [ -n "${EVAL_LIMIT:-}" ] && [ "$EVAL_LIMIT" -lt "$faces" ]; then faces="the first $EVAL_LIMIT (EVAL_LIMIT) of $faces"; fi
    # Always called, never skipped on an existing results.json (that of a failed or earlier run):
    # compare reuses its finished records of the same settings, so a finished run costs little.
    log "compare ×$scale $methods on $faces faces → $out"
    # One thread, as the card's figures: PULSE's and psp_pulse's outputs depend on the thread count
    # (float summation order, amplified by their search), and the card's ms/face are one thread's.
    OMP_NUM_THREADS=1 $RK compare --methods "$methods" --baseline bicubic --scale "$scale" --data "@$list" --out "$out" \
        --metrics "$METRICS" --quiet ${EVAL_LIMIT:+--limit "$EVAL_LIMIT"} "$@" || {
        local rc=$?
        log "compare into $out exited $rc (failed faces, or a folder made with other weights: compare's message above): stopped"
        exit "$rc"
    }
}

stage_evaluate() {
    for k in 8 4; do
        compare "$W/eval_x$k" bicubic,pix2pixhd,psp_sr "$k" "$W/val.txt"
    done
    compare "$W/eval_pulse_x8" psp_pulse,pulse,psp_sr,bicubic 8 "$W/val_pulse.txt"
    # The same with 3 back-projection steps for every learned method (psp_pulse has them by default):
    # how much of each method's figures is its low frequencies (check_bars.py's second set of tables).
    for k in 8 4; do
        compare "$W/eval_x${k}_cs3" bicubic,pix2pixhd,psp_sr "$k" "$W/val.txt" \
            --opt pix2pixhd.consistency_steps=3 --opt psp_sr.consistency_steps=3
    done
    compare "$W/eval_pulse_x8_cs3" psp_pulse,pulse,psp_sr,bicubic 8 "$W/val_pulse.txt" \
        --opt pulse.consistency_steps=3 --opt psp_sr.consistency_steps=3
}

stage_figures() {
    mkdir -p docs/images
    $PY -c "from PIL import Image; import sys; Image.open(sys.argv[1]).convert('RGB').save(sys.argv[2], quality=90)" \
        "$RETURNED/samples.png" docs/images/stylegan2-faces128-samples.jpg
    $PY scripts/model_card_grid.py "$W/eval_x8" --data "@$W/val.txt" \
        --methods "bicubic,pix2pixhd,psp_sr,$W/eval_x8_cs3::psp_sr=psp_sr + 3 steps" \
        --n 16 --out docs/images/psp-sr-faces128-grid-x8.jpg
    $PY scripts/model_card_grid.py "$W/eval_pulse_x8" --data "@$W/val_pulse.txt" \
        --methods bicubic,psp_sr,pulse,psp_pulse --n 8 --out docs/images/psp-pulse-faces128-grid-x8.jpg
    log "figures: docs/images/stylegan2-faces128-samples.jpg, psp-sr-faces128-grid-x8.jpg, psp-pulse-faces128-grid-x8.jpg"
}

# What the ship and figures stages write over in the working tree (committed files): the paths a
# failed check puts back.
shipped_paths() {
    $PY - "$W" <<'PYEOF'
import json, os, sys
from pathlib import Path
paths = [p for rec in sorted(Path(sys.argv[1]).glob("shipped-*.json"))
         for p in (lambda d: [d.get("file"), d.get("golden"), d.get("entry")])(json.loads(rec.read_text()))]
paths += [f"docs/images/{n}" for n in ("stylegan2-faces128-samples.jpg", "psp-sr-faces128-grid-x8.jpg",
                                        "psp-pulse-faces128-grid-x8.jpg")]
paths.append("registry/plugins/restorekit-psp-sr.toml")  # (ship adds a new entry's name there)
print(" ".join(dict.fromkeys(os.path.relpath(p) for p in paths if p)))
PYEOF
}

stage_bars() {
    local rc=0
    $PY scripts/gpu/check_bars.py "$W" ${EVAL_LIMIT:+--partial} | tee "$W/bars.md" || rc=$?
    [ "$rc" = 0 ] && return
    local why=("" "some bars fail" "an input is missing or unusable" "a partial evaluation (EVAL_LIMIT)")
    log "check_bars.py exited $rc (${why[$rc]:-error}): the shipped files in the working tree are NOT to be committed; put the committed ones back with: git restore -- $(shipped_paths)"
    exit "$rc"
}

STAGES=("$@")
[ ${#STAGES[@]} -eq 0 ] && STAGES=(realism ship-generator stage2 ship-psp evaluate figures bars)
for s in "${STAGES[@]}"; do
    case "$s" in
        realism|ship-generator|stage2|ship-psp|evaluate|figures|bars) "stage_${s//-/_}";;
        *) echo "finish.sh: unknown stage '$s'" >&2; exit 2;;
    esac
done
log "done: ${STAGES[*]}"
