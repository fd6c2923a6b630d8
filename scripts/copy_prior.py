"""Gives a model's head the log prior (`prior_heads`) of the same head in another model, trained
from the same data with the head named in `prior_heads`: the prior depends only on the training
photos' labels and `[heads] class_balance`, not on the trained weights. This is how the built-in
model got its category prior without training its layers again (see the model card).

The prior is added to the head's output bias, as `fashion train` folds it in, and recorded in the
head's metadata (`log_prior`) and in the training config (`prior_heads`).

Usage: copy_prior.py MODEL.onnx PRIOR_FROM.onnx HEAD OUT.onnx
"""
import json
import sys

import numpy as np
import onnx
from onnx import numpy_helper


def info_of(model):
    return json.loads({p.key: p.value for p in model.metadata_props}["fashion"])


def head_of(info, name):
    for h in info["heads"]:
        if h["name"] == name:
            return h
    sys.exit(f"no head {name!r} (heads: {', '.join(h['name'] for h in info['heads'])})")


def main():
    if len(sys.argv) != 5:
        sys.exit(__doc__)
    src, prior_from, name, dst = sys.argv[1:]
    model = onnx.load(src)
    info = info_of(model)
    head = head_of(info, name)
    given = head_of(info_of(onnx.load(prior_from, load_external_data=False)), name)
    if head.get("log_prior"):
        sys.exit(f"{src}: head {name!r} has a log prior already")
    if given["labels"] != head["labels"] or not given.get("log_prior"):
        sys.exit(f"{prior_from}: head {name!r} has other labels or no log prior")
    prior = np.array(given["log_prior"], dtype=np.float32)
    bias = next(i for i in model.graph.initializer if i.name == f"{name}.b2")
    bias.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(bias) + prior, bias.name))
    head["log_prior"] = given["log_prior"]
    info["training"]["config"]["prior_heads"] = sorted(
        set(info["training"]["config"].get("prior_heads", [])) | {name})
    for p in model.metadata_props:
        if p.key == "fashion":
            p.value = json.dumps(info)
    onnx.save(model, dst)


if __name__ == "__main__":
    main()
