"""Primary colour of each full-resolution apparel photo against its 224x224 catalogue copy.

Usage: colour_consistency.py FULLRES_MANIFEST FULL.jsonl SMALL.jsonl OUT.json
FULL.jsonl and SMALL.jsonl are `fashion classify --format jsonl` outputs for the full photos and
for the catalogue copies (`fpi/images/<id>.jpg`). Prints the share of apparel products whose
primary colour name (and family) is the same on both, lists the others, and writes the shares
to OUT.json for check_floors.py.
"""
import csv
import json
import os
import sys

manifest, full_path, small_path, out_path = sys.argv[1:5]


def by_id(path):
    out = {}
    for line in open(path):
        r = json.loads(line)
        if "colour" in r:
            out[os.path.splitext(os.path.basename(r["path"]))[0]] = r["colour"]["primary"]
    return out


full, small = by_id(full_path), by_id(small_path)
rows = [r for r in csv.DictReader(open(manifest)) if r["master_category"] == "Apparel"]
same_name = same_family = 0
for r in rows:
    a, b = full.get(r["id"]), small.get(r["id"])
    if a is None or b is None:
        sys.exit(f"colour consistency: no colour for product {r['id']} in both outputs")
    same_name += a["name"] == b["name"]
    same_family += a["family"] == b["family"]
    if a["name"] != b["name"]:
        print(f"{r['id']} ({r['article_type']}, {r['base_colour']}): full {a['name']} / copy {b['name']}")
n = len(rows)
print(f"apparel: {n}; same primary colour name {same_name} ({same_name / n:.1%}), same family {same_family} ({same_family / n:.1%})")
json.dump({"apparel": n, "same_name": same_name / n, "same_family": same_family / n}, open(out_path, "w"))
