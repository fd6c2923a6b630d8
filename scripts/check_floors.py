"""Fails when the built-in model's validation numbers fall under the floors.

Usage: check_floors.py INSHOP_VAL.json FPI_VAL_APPAREL.json
"""
import json
import sys

inshop = json.load(open(sys.argv[1]))
fpi = json.load(open(sys.argv[2]))

view = inshop["view"]
five = ["front", "side", "back", "full", "flat"]
support = sum(view["per_class"][c]["support"] for c in five if c in view["per_class"])
right = sum(view["per_class"][c]["recall"] * view["per_class"][c]["support"] for c in five if c in view["per_class"])
view_five = right / support if support else 0.0

checks = [
    ("In-shop category top-1", inshop["category"]["accuracy"], 0.70),
    ("In-shop category top-3", inshop["category"]["top3"], 0.90),
    ("In-shop category macro-F1", inshop["category"]["macro_f1"], 0.55),
    ("In-shop view top-1", view["accuracy"], 0.75),
    ("In-shop view top-1 on front/side/back/full/flat", view_five, 0.85),
    ("FPI apparel article type top-1", fpi["article_type"]["accuracy"], 0.88),
]
failed = 0
for name, value, floor in checks:
    ok = value >= floor
    failed += not ok
    print(f"{'ok  ' if ok else 'FAIL'} {name}: {value:.4f} (floor {floor})")
print(f"floors: {len(checks) - failed} passed, {failed} failed")
sys.exit(1 if failed else 0)
