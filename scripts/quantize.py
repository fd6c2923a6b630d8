"""Writes the int8 variant of a fashion model (`models/default-int8.onnx` is this script's output
for `models/default.onnx`).

The backbone's convolutions are quantised with ONNX Runtime's static quantiser: QDQ format,
per-channel int8 weights, uint8 activations, ranges calibrated (min/max) on training photos.
Each convolution is quantised together with the ReLU6 (`Clip`) behind it, so its output is
quantised over the ReLU6's range [0, 6]: quantised alone, the convolution's raw output spans
about [-100, 100] and keeps only a handful of levels where ReLU6 lets values through, which cost
2 points of category accuracy. The stem convolution (it sees the photo itself), the garment
mask's convolutions and every head stay in float. Labels, preprocessing and the training
summary are kept in the metadata, so `fashion` reads the int8 file like any other model, with
or without its second look (`--fast`).

Usage: quantize.py MODEL.onnx OUT.onnx DATA_DIR [CALIBRATION_PHOTOS]
DATA_DIR holds inshop/ and fpi/ with their manifest.csv; calibration photos are drawn (seeded)
from their train splits only. The same inputs give the same file.
"""
import csv
import json
import os
import random
import sys
import tempfile

import numpy as np
import onnx
from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat,
                                      QuantType, quantize_static)
from onnxruntime.quantization.shape_inference import quant_pre_process
from PIL import Image

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "bench"))
from reference import fit_square, input_side  # noqa: E402  (the benchmark reference's square)

BATCH = 16
# Prefix of the nodes that make a model's second look (`fashion`'s mirror.rs), which `--fast`
# removes by name; the quantiser names its nodes after the tensors they read.
LOOK_PREFIX = "flip/"


def train_photos(data, count):
    photos = []
    for name in ("inshop", "fpi"):
        manifest = os.path.join(data, name, "manifest.csv")
        if not os.path.isfile(manifest):
            sys.exit(f"{manifest} is missing: DATA_DIR must hold inshop/ and fpi/")
        with open(manifest) as f:
            photos += [os.path.join(data, name, r["path"]) for r in csv.DictReader(f)
                       if r["split"] == "train"]
    random.Random(7).shuffle(photos)
    return photos[:count]


class Reader(CalibrationDataReader):
    """The model's input for the calibration photos, prepared as `bench/reference.py` does."""

    def __init__(self, photos, info):
        self.photos, self.pre, self.i = photos, info["preprocess"], 0
        self.side = input_side(info)

    def load(self, path):
        img = Image.open(path).convert("RGB")
        img = fit_square(img, self.pre.get("fit", "crop"), self.pre["resize_shorter"])
        nw, nh = img.size
        left, top = round((nw - self.side) / 2), round((nh - self.side) / 2)
        a = np.asarray(img.crop((left, top, left + self.side, top + self.side)), np.float32)
        a = (a - np.array(self.pre["mean"], np.float32)) / np.array(self.pre["std"], np.float32)
        return a.transpose(2, 0, 1)

    def get_next(self):
        if self.i >= len(self.photos):
            return None
        chunk = self.photos[self.i:self.i + BATCH]
        self.i += BATCH
        return {"input": np.stack([self.load(p) for p in chunk])}


def nodes_to_quantize(graph):
    """Every convolution but the stem and the mask's, with the Clip right behind each."""
    convs = [n for n in graph.node if n.op_type == "Conv"]
    chosen = {n.name for n in convs[1:] if not n.name.startswith("mask.")}
    made_by = {o: n.name for n in graph.node for o in n.output}
    clips = [n.name for n in graph.node
             if n.op_type == "Clip" and made_by.get(n.input[0]) in chosen]
    return sorted(chosen) + clips


def flush_every(batches):
    """How many batches' activations the calibrator holds before it folds them into its ranges.
    Bounded, or 256 photos of a two-look model fill 24 GB; never a divisor of the batch count,
    because ONNX Runtime's calibrator fails when nothing is left over at the end."""
    return next(k for k in range(5, batches + 2) if batches % k)


def keep_look_out(graph, original_initializers):
    """The quantiser names its nodes and scales after the tensors they read, some of which are
    the second look's (`flip/pair/...`). They belong to the network, so they are renamed out of
    the look's prefix: `--fast` removes what carries it."""
    renamed = {}
    for t in graph.initializer:
        if t.name.startswith(LOOK_PREFIX) and t.name not in original_initializers:
            renamed[t.name] = t.name = "qdq/" + t.name
    for n in graph.node:
        if n.name.startswith(LOOK_PREFIX) and n.op_type in ("QuantizeLinear", "DequantizeLinear"):
            n.name = "qdq/" + n.name
        for i, name in enumerate(n.input):
            n.input[i] = renamed.get(name, name)


def fnv1a(data):
    """64-bit FNV-1a, as `fashion`'s hash module."""
    h = 0xcbf29ce484222325
    for b in data:
        h = ((h ^ b) * 0x100000001b3) & 0xFFFFFFFFFFFFFFFF
    return h


def main():
    src, dst, data = sys.argv[1:4]
    count = int(sys.argv[4]) if len(sys.argv) > 4 else 256
    model = onnx.load(src)
    meta = {p.key: p.value for p in model.metadata_props}
    info = json.loads(meta["fashion"])
    photos = train_photos(data, count)
    if len(photos) < count:
        sys.exit(f"only {len(photos)} training photos under {data}, {count} asked for")
    with tempfile.TemporaryDirectory() as tmp:
        prepped = os.path.join(tmp, "prepped.onnx")
        quant_pre_process(src, prepped, skip_symbolic_shape=True)
        quantize_static(
            prepped, dst, Reader(photos, info),
            quant_format=QuantFormat.QDQ, per_channel=True,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            op_types_to_quantize=["Conv", "Clip"], nodes_to_quantize=nodes_to_quantize(model.graph),
            calibrate_method=CalibrationMethod.MinMax,
            extra_options={"CalibMaxIntermediateOutputs": flush_every(-(-count // BATCH))},
        )
    out = onnx.load(dst)
    keep_look_out(out.graph, {i.name for i in model.graph.initializer})
    info["name"] += "-int8"
    info["training"]["quantized"] = (
        f"int8: static QDQ, per-channel weights, convolutions with their ReLU6, "
        f"min/max of {count} train photos")
    # Which float model this is the int8 copy of (a test checks the shipped pair matches).
    with open(src, "rb") as f:
        info["training"]["quantized_from_fnv1a"] = f"{fnv1a(f.read()):016x}"
    del out.metadata_props[:]
    for k, v in meta.items():
        p = out.metadata_props.add()
        p.key, p.value = k, json.dumps(info) if k == "fashion" else v
    onnx.save(out, dst)
    print(f"wrote {dst}: {os.path.getsize(dst) / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
