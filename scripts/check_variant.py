"""Checks that a faster variant of the built-in model (the int8 one) stays within one point of the
built-in model's top-1 accuracy on every head, on the same validation photos.

Usage: check_variant.py NAME INSHOP_VAL.json FPI_VAL_APPAREL.json VARIANT_INSHOP_VAL.json VARIANT_FPI_VAL_APPAREL.json
Each file is a `fashion eval --json` report.
"""
import json
import sys

MARGIN = 0.01
# (report, head): the heads each validation split measures.
HEADS = [(0, "category"), (0, "view"), (1, "article_type"), (1, "colour_family")]

name = sys.argv[1]
default = [json.load(open(p)) for p in sys.argv[2:4]]
variant = [json.load(open(p)) for p in sys.argv[4:6]]
failed = 0
for report, head in HEADS:
    want, got = default[report][head]["accuracy"], variant[report][head]["accuracy"]
    ok = got >= want - MARGIN
    failed += not ok
    print(f"{'ok' if ok else 'FAIL':5} {head}: {name} {got:.4f}, built-in {want:.4f} "
          f"({100 * (got - want):+.2f} points, at most {100 * MARGIN:.0f} below)")
print(f"{name}: {len(HEADS) - failed} of {len(HEADS)} heads within {100 * MARGIN:.0f} point")
sys.exit(1 if failed else 0)
