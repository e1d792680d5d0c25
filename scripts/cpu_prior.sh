#!/usr/bin/env bash
# The face prior on the CPU while no GPU is lent (plugins/psp_sr/recipes/prior128/README.md, "The CPU
# route"), one session's chunk per call: continues the run (creating it the first time) for MINUTES,
# then measures its newest snapshot — Fréchet distances (AlexNet conv5, dlib; NOT FID) and the share
# of 32 samples at truncation 0.7 in which MTCNN finds a face — into PROGRESS/<kimg>kimg.json, with
# the sample grid beside it, so that the sessions' chunks can be compared; and a guide to
# psp_sr's identity on it (scripts/inversion_ceiling.py: the W+ fit of 12 validation faces against
# bicubic ×8, dlib distance) into PROGRESS/<kimg>kimg_fit.json, with its grid, and the same fit
# seeking identity as stage 2 does (--identity 1) into PROGRESS/<kimg>kimg_fitid.json.
#   MINUTES=150 nohup bash scripts/cpu_prior.sh > runs/prior128_cpu/chunk.log 2>&1 &
# A machine's run folder does not outlast it: with KEEP (a folder in the repository) the chunk's
# snapshot — fp16 G, D and EMA G with the image count, ~8 MB — is copied there when the chunk ends,
# to be committed, and a machine with no run folder starts from KEEP's snapshot (`init_from`: the
# networks continue, Adam's moments are rebuilt; the kimg count goes on).
# Settings: MINUTES (required), RUN (runs/prior128_cpu/run), CONFIG (prior128/cpu.toml), FACES
# (../shared/data/faces), THREADS (2), KEEP (none), SET (extra `--set k=v` words: rehearsals, or
# `--set init_widen=true` when KEEP holds a narrower run), REALISM_N (1000 samples), PROGRESS (the
# run's parent folder/progress), RK (.venv/bin/restorekit).
set -euo pipefail
cd "$(dirname "$0")/.."
RK=${RK:-.venv/bin/restorekit}
PY=${PY:-.venv/bin/python}
MINUTES=${MINUTES:?set MINUTES to the minutes of training this call may take}
RUN=${RUN:-runs/prior128_cpu/run}
CONFIG=${CONFIG:-plugins/psp_sr/recipes/prior128/cpu.toml}
FACES=$(cd "${FACES:-../shared/data/faces}" && pwd)
THREADS=${THREADS:-2}
PROGRESS=${PROGRESS:-$(dirname "$RUN")/progress}
mkdir -p "$PROGRESS"
log() { echo "[cpu_prior.sh $(date +%H:%M:%S)] $*"; }

KEEP=${KEEP:-}
KEPT=(resume_g.safetensors resume_d.safetensors generator.safetensors metrics.jsonl)
RESUME=()
if [ -d "$RUN/checkpoints" ]; then
    RESUME=(--resume)
elif [ -n "$KEEP" ] && [ -f "$KEEP/resume_g.safetensors" ]; then
    RESUME=(--set "init_from=$KEEP")
elif [ -n "$KEEP" ] && [ -f "$KEEP/metrics.jsonl" ]; then
    # A kept run whose networks are not in the tree (prior128/README.md, "The CPU route"): starting
    # from nothing here would silently throw its kimg away.
    echo "cpu_prior.sh: $KEEP holds a run's metrics but no resume_g.safetensors: restore its networks" \
         "from the history (prior128/README.md, \"The CPU route\"), or leave KEEP unset for a new run" >&2
    exit 2
fi
log "training $RUN for $MINUTES min on $THREADS threads ${RESUME[*]:-(new run)}"
# shellcheck disable=SC2086
OMP_NUM_THREADS=$THREADS $RK train stylegan2 --data "$FACES" --config "$CONFIG" --out "$RUN" "${RESUME[@]}" \
    --time-limit "$MINUTES" --set "num_threads=$THREADS" ${SET:-}

SNAP=$RUN/snapshot
if [ -n "$KEEP" ]; then
    mkdir -p "$KEEP"
    for f in "${KEPT[@]}"; do cp "$SNAP/$f" "$KEEP/$f.part"; done
    for f in "${KEPT[@]}"; do mv "$KEEP/$f.part" "$KEEP/$f"; done
    log "the snapshot is kept in $KEEP (commit it: the run folder does not outlast this machine)"
fi
KIMG=$($PY -c "import sys; from restorekit.training.plot import read_records; print(round(read_records(sys.argv[1])[-1]['kimg'], 1))" \
       "$SNAP/metrics.jsonl")
grep -v "^!" plugins/psp_sr/recipes/faces128/val.txt | sed "s#^#$FACES/#" | grep -v "/#" | grep . > "$PROGRESS/val.txt"
log "measuring the snapshot at $KIMG kimg"
$RK realism --generator stylegan2 --weights "$SNAP/generator.safetensors" --data "@$PROGRESS/val.txt" \
    --n "${REALISM_N:-1000}" --spaces alex,dlib --detector mtcnn --detect-n 32 --detect-truncation 0.7 --json \
    > "$PROGRESS/${KIMG}kimg.json.part"
mv "$PROGRESS/${KIMG}kimg.json.part" "$PROGRESS/${KIMG}kimg.json"
cp "$SNAP/samples.png" "$PROGRESS/${KIMG}kimg.png"
$PY - "$PROGRESS/${KIMG}kimg.json" <<'EOF'
import json, sys
doc = json.load(open(sys.argv[1]))
figures = ", ".join(f"{f['space']} {f['distance']:.3f}" for f in doc["figures"])
faces = doc.get("faces") or {}
print(f"[cpu_prior.sh] {sys.argv[1]}: Fréchet {figures}; faces found in {faces.get('found')}/{faces.get('n')}")
EOF
log "the W+ fit of 12 validation faces (a guide to psp_sr's identity on this generator)"
$PY scripts/inversion_ceiling.py "$SNAP/generator.safetensors" --data "$PROGRESS/val.txt" --n 12 \
    --json "$PROGRESS/${KIMG}kimg_fit.json" --grid "$PROGRESS/${KIMG}kimg_fit.png"
log "the same fit with stage 2's identity term (what the generator can draw of these people for dlib)"
$PY scripts/inversion_ceiling.py "$SNAP/generator.safetensors" --data "$PROGRESS/val.txt" --n 12 --identity 1 \
    --json "$PROGRESS/${KIMG}kimg_fitid.json" --grid "$PROGRESS/${KIMG}kimg_fitid.png"
