"""The model card's grid: LR | method outputs… | HR for validation faces of a `restorekit compare` run.

Usage: python scripts/model_card_grid.py RUN_DIR --data @list.txt --methods bicubic,psp_sr \
           --n 16 --out docs/images/grid.jpg
Faces are taken evenly from the run's images in name order (so both data sources appear); the LR
input is shown nearest-neighbour enlarged. One row per face, labelled columns. A method of another
compare run on the same data and scale is named ``OTHER_RUN_DIR::method=label`` (e.g. the same
method with other weights).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from PIL import Image, ImageDraw

from restorekit.images import list_inputs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run", type=Path)
    ap.add_argument("--data", required=True, help="the compare run's --data (to find the HR files)")
    ap.add_argument("--methods", required=True, help="comma-separated; NAME=LABEL renames a column")
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--tile", type=int, default=128)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--quality", type=int, default=88)
    args = ap.parse_args()
    doc = json.loads((args.run / "results.json").read_text())
    # "name" or "name=column label" (e.g. pix2pixhd=plain CNN)
    pairs = [m.split("=", 1) if "=" in m else [m, m] for m in args.methods.split(",")]
    methods = [name for name, _ in pairs]
    hr_files = {item.stem: item.path for item in list_inputs(args.data)}

    def ok_outputs(run: Path, rows: list[dict], key: str | None = None) -> dict[tuple[str, str], Path]:
        return {(key or r["method"], r["image"]): run / r["output"] for r in rows
                if r["status"] == "ok" and r["seed"] in (None, 0)}

    outputs = ok_outputs(args.run, doc["images"])
    for name in methods:
        if "::" in name:
            other, method = name.split("::", 1)
            rows = json.loads((Path(other) / "results.json").read_text())["images"]
            outputs.update(ok_outputs(Path(other), [r for r in rows if r["method"] == method], key=name))
    names = sorted({img for m, img in outputs if all((k, img) in outputs for k in methods)})
    picked = [names[round(i * (len(names) - 1) / max(args.n - 1, 1))] for i in range(args.n)]
    lr_dir = next((args.run / "inputs").iterdir())
    t, head = args.tile, 18
    cols = ["LR", *(label for _, label in pairs), "HR"]
    grid = Image.new("RGB", (t * len(cols), head + t * len(picked)), "white")
    draw = ImageDraw.Draw(grid)
    for c, label in enumerate(cols):
        draw.text((c * t + 4, 3), label, fill="black")
    for r, name in enumerate(picked):
        tiles = [Image.open(lr_dir / f"{name}.png").convert("RGB").resize((t, t), Image.NEAREST)]
        tiles += [Image.open(outputs[m, name]).convert("RGB").resize((t, t), Image.BICUBIC)
                  for m in methods]
        tiles.append(Image.open(hr_files[name]).convert("RGB").resize((t, t), Image.BICUBIC))
        for c, tile in enumerate(tiles):
            grid.paste(tile, (c * t, head + r * t))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    grid.save(args.out, quality=args.quality)
    print(f"{args.out}: {len(picked)} faces × {len(cols)} columns")


if __name__ == "__main__":
    main()
