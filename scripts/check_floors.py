"""Checks the built-in model's validation numbers.

Two levels per number:
- target: the floor the product aims for. A number under it is reported as SHORT.
- guard: the number the committed model reaches, less a small margin. A number under it fails
  the run: a change made the model worse.
A number marked "max" is a ceiling instead (lower is better).
Both are listed in scripts/floors.json.
Usage: check_floors.py INSHOP_VAL.json FPI_VAL_APPAREL.json COLOUR_CONSISTENCY.json INSHOP_VAL_UNPADDED.json
"""
import json
import os
import sys

inshop = json.load(open(sys.argv[1]))
fpi = json.load(open(sys.argv[2]))
consistency = json.load(open(sys.argv[3]))
unpadded = json.load(open(sys.argv[4]))
floors = json.load(open(os.path.join(os.path.dirname(__file__), "floors.json")))

view = inshop["view"]
five = [c for c in ["front", "side", "back", "full", "flat"] if c in view["per_class"]]
support = sum(view["per_class"][c]["support"] for c in five)
right = sum(view["per_class"][c]["recall"] * view["per_class"][c]["support"] for c in five)

values = {
    "inshop_category_top1": inshop["category"]["accuracy"],
    "inshop_category_top3": inshop["category"]["top3"],
    "inshop_category_macro_f1": inshop["category"]["macro_f1"],
    "inshop_view_top1": view["accuracy"],
    "inshop_view_top1_front_side_back_full_flat": right / support if support else 0.0,
    "fpi_apparel_article_type_top1": fpi["article_type"]["accuracy"],
    "fpi_apparel_colour_family_top1": fpi["colour_family"]["accuracy"],
    "inshop_mask_mean_iou": inshop["mask"]["learned"]["mean_iou"],
    "inshop_mask_on_skin_or_background": inshop["mask"]["learned"]["leak"],
    "fpi_apparel_product_shot_mask_mean_iou": fpi["product_shots"]["learned"]["mean_iou"],
    "fullres_apparel_same_primary_colour": consistency["same_name"],
    "inshop_unpadded_category_top1": unpadded["category"]["accuracy"],
    "inshop_unpadded_view_top1": unpadded["view"]["accuracy"],
}
failed = short = 0
for name, value in values.items():
    f = floors[name]
    sign = -1 if f.get("max") else 1
    if sign * value < sign * f["guard"]:
        status = "FAIL"
        failed += 1
    elif sign * value < sign * f["target"]:
        status = "SHORT"
        short += 1
    else:
        status = "ok"
    kind = "at most" if f.get("max") else "target"
    print(f"{status:5} {name}: {value:.4f} ({kind} {f['target']}, guard {f['guard']})")
print(f"floors: {len(values) - failed} passed, {failed} failed ({short} under target)")
sys.exit(1 if failed else 0)
