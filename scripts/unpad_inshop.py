"""Writes the In-shop `val` photos as a shop has them: with the flat padding bands that made them
square cut off (about 175x256, model shots in proportion), in the In-shop layout, so that
`fashion eval --layout inshop` measures how the model takes photos that are not square.

Usage: unpad_inshop.py INSHOP_DIR OUT_DIR
Prints how many photos were written and their median width.
"""
import csv
import os
import sys

import numpy as np
from PIL import Image

src, out = sys.argv[1:3]
os.makedirs(out, exist_ok=True)
anno = os.path.join(out, "Anno")
if not os.path.exists(anno):
    os.symlink(os.path.abspath(os.path.join(src, "Anno")), anno)
widths = []
with open(os.path.join(src, "manifest.csv")) as f:
    for r in csv.DictReader(f):
        if r["split"] != "val":
            continue
        a = np.asarray(Image.open(os.path.join(src, r["path"])).convert("RGB")).astype(np.int16)
        w = a.shape[1]
        # A padding column is one flat colour from top to bottom.
        flat = (a.max(0) - a.min(0)).max(1) <= 6
        left, right = 0, w
        while left < w // 2 and flat[left]:
            left += 1
        while right > w // 2 and flat[right - 1]:
            right -= 1
        dst = os.path.join(out, r["path"])
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        Image.fromarray(a[:, left:right].astype(np.uint8)).save(dst, quality=95)
        widths.append(right - left)
if not widths:
    sys.exit("unpad_inshop: no val photos in the manifest")
print(f"unpadded {len(widths)} val photos; median width {int(np.median(widths))} of 256")
