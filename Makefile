# fashion: build, demo, tests and the real-data gates.
SHELL := bash
CARGO ?= cargo
DATA ?= ../shared/data
WEIGHTS ?= ../shared/weights
FASHION := target/release/fashion
PHOTOS ?= $(if $(wildcard $(DATA)/fullres/images),$(DATA)/fullres/images,samples)
export ORT_DYLIB_PATH := $(CURDIR)/vendor/onnxruntime/libonnxruntime.so

.PHONY: demo test build onnxruntime venv gates clean

## Build and classify the sample photos with the built-in model.
demo: build
	$(FASHION) classify $(PHOTOS) --format table

## Run every test that needs nothing outside this repository.
test: onnxruntime
	$(CARGO) test --workspace --locked

build: onnxruntime
	$(CARGO) build --release --locked

## The pinned ONNX Runtime library, from the official `onnxruntime` wheel on PyPI.
onnxruntime:
	./scripts/fetch-onnxruntime.sh

## Python environment for cross-checks against ONNX Runtime's Python API.
venv: .venv/.done
.venv/.done: scripts/requirements.txt
	python3 -m venv .venv
	.venv/bin/pip install --quiet -r scripts/requirements.txt
	touch $@

## Real-data gates: golden parity, accuracy floors on the validation splits, Python parity.
gates: build venv
	./scripts/gates.sh "$(DATA)" "$(WEIGHTS)"

clean:
	$(CARGO) clean
	rm -rf vendor .venv .cache
