r"""Per-image comparison of two methods in a `restorekit compare` results.json (model-card figures).

Usage: python scripts/identity_win_rate.py report/results.json --a psp_sr --b bicubic \
           [--metric identity_dlib_dist --lower-is-better] [--match REGEX]
Prints the mean of the metric for each method over images where both have a value, and the share of
images where A beats B (ties count half); --match keeps the images whose name matches (e.g.
'^\d+$' for the FFHQ faces of the faces128 split).
"""

from __future__ import annotations

import argparse
import json
import math


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("results")
    ap.add_argument("--a", required=True)
    ap.add_argument("--b", required=True)
    ap.add_argument("--metric", default="identity_dlib_dist")
    ap.add_argument("--lower-is-better", action="store_true")
    ap.add_argument("--match", default=None, help="regular expression on the image name")
    args = ap.parse_args()
    doc = json.load(open(args.results))
    by: dict[str, dict[str, float]] = {args.a: {}, args.b: {}}
    for row in doc["images"]:
        if row["method"] in by and row["status"] == "ok" and row["seed"] in (None, 0):
            v = row["metrics"].get(args.metric)
            if isinstance(v, (int, float)) and math.isfinite(v):
                by[row["method"]][row["image"]] = float(v)
    common = sorted(set(by[args.a]) & set(by[args.b]))
    if args.match is not None:
        import re

        common = [k for k in common if re.search(args.match, k)]
    if not common:
        raise SystemExit(f"no image has {args.metric} for both {args.a} and {args.b}")
    a = [by[args.a][k] for k in common]
    b = [by[args.b][k] for k in common]
    sign = -1 if args.lower_is_better else 1
    wins = sum(1.0 if sign * (x - y) > 0 else 0.5 if x == y else 0.0 for x, y in zip(a, b))
    print(json.dumps({"metric": args.metric, "images": len(common), f"mean_{args.a}": sum(a) / len(a),
                      f"mean_{args.b}": sum(b) / len(b), f"win_rate_{args.a}": wins / len(common)}, indent=2))


if __name__ == "__main__":
    main()
