# Two commands for a new user: `make demo` and `make test`. Both create .venv when missing.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PIP    := $(BIN)/python -m pip --disable-pip-version-check
TORCH  := torch==2.13.0

.PHONY: install test lint proto bench soak demo clean gpu-check gpu-wheels results \
	image image-gpu image-gpu-offline image-base-offline image-haproxy image-smoke \
	image-fleet-smoke

SOAK_SECONDS ?= 600

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# torch first, pinned, so the project's range never pulls a multi-GB CUDA build.
$(STAMP): pyproject.toml constraints.txt | $(BIN)/python
	$(PIP) install -q $(TORCH)
	$(PIP) install -q -c constraints.txt -e '.[dev]'
	@touch $@

install: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .

# Regenerate the gRPC code from the contract (committed; a test fails when it is stale).
proto: $(STAMP)
	$(BIN)/python scripts/gen_proto.py

bench: $(STAMP)
	$(BIN)/python benchmarks/collect_speed.py

# A longer load and fault run against a real server; not part of CI.
soak: $(STAMP)
	PYTHONPATH=tests:tests/reliability $(BIN)/python scripts/soak.py --duration $(SOAK_SECONDS)

# Everything CUDA in one call (scripts/gpu_check.py); on a machine without CUDA: one line, exit 0.
gpu-check: $(STAMP)
	$(BIN)/python scripts/gpu_check.py

# Python 3.12 wheels of what the borrowed GPU machine lacks (its image has CUDA torch, numpy,
# onnx, onnxruntime, matplotlib, h5py, pytest, click, tqdm, tensorboard, prometheus-client;
# the device tool's KINDS.md lists them), into .gpu-wheels/ (~25 MB) to travel with the tree.
# grpc and protobuf travel pinned: the generated vidt/v1 code refuses older runtimes.
# There, scripts/gpu_device.sh installs them and runs the check.
GPU_WHEELS := gymnasium farama-notifications mujoco mujoco-core glfw minari \
	grpcio==1.85.3 grpcio-health-checking==1.85.1 grpcio-reflection==1.85.1 protobuf==7.36.2
gpu-wheels: $(STAMP)
	rm -rf .gpu-wheels
	$(PIP) download -q --no-deps --only-binary=:all: --python-version 3.12 \
		--implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
		--platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any \
		-d .gpu-wheels $(GPU_WHEELS)
	@du -sh .gpu-wheels

# Every committed report (benchmarks/sweeps/results/NAME) again from its committed runs
# (benchmarks/sweeps/runs/NAME); tests/test_results.py fails when this would change a table.
results: $(STAMP)
	@for runs in benchmarks/sweeps/runs/*/; do \
		name=$$(basename $$runs); \
		echo "vidt report benchmarks/sweeps/runs/$$name --out benchmarks/sweeps/results/$$name"; \
		$(BIN)/vidt report benchmarks/sweeps/runs/$$name \
			--out benchmarks/sweeps/results/$$name > /dev/null || exit 1; \
	done

demo: $(STAMP)
	$(BIN)/python scripts/demo.py

clean:
	rm -rf $(VENV) build *.egg-info

# The serving image (Dockerfile): Docker when its daemon answers, else podman (which keeps the
# HEALTHCHECK only in Docker's format). Flags a machine needs go in from outside, e.g. on a VM
# with hybrid cgroups, no CAP_SYS_RESOURCE and a TLS-inspecting proxy (docs/deploy.md):
#   make image ENGINE=podman BUILD_FLAGS="--runtime runc --ulimit nofile=20000:20000 ..."
ENGINE      ?= $(shell docker info >/dev/null 2>&1 && echo docker || echo podman)
IMAGE       ?= vidt-serve
BASE        ?= python:3.11-slim
GPU_BASE    ?= nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04
GPU_ORT     ?= onnxruntime-gpu
OFFLINE_BASE = localhost/vidt-base:bookworm
BUILD_FLAGS ?=
RUN_FLAGS   ?=
FORMAT       = $(if $(findstring podman,$(ENGINE)),--format docker)

image:
	$(ENGINE) build $(FORMAT) $(BUILD_FLAGS) --build-arg BASE=$(BASE) -t $(IMAGE):cpu .

image-gpu:
	$(ENGINE) build $(FORMAT) $(BUILD_FLAGS) --build-arg BASE=$(GPU_BASE) \
		--build-arg "ORT_PACKAGE=$(GPU_ORT)" -t $(IMAGE):gpu .

# No registry: the base from Debian's packages (mmdebstrap), then the CPU image on it.
image-base-offline:
	ENGINE=$(ENGINE) docker/base-offline.sh $(OFFLINE_BASE)
	$(MAKE) image BASE=$(OFFLINE_BASE)

# No registry, no CUDA base image: the GPU image on the offline base (made when missing), with
# CUDA 13 and cuDNN 9 from PyPI's NVIDIA wheels (onnxruntime-gpu's extras, pinned by
# docker/constraints-cuda.txt).
image-gpu-offline:
	$(ENGINE) image inspect $(OFFLINE_BASE) >/dev/null 2>&1 \
		|| ENGINE=$(ENGINE) docker/base-offline.sh $(OFFLINE_BASE)
	$(MAKE) image-gpu GPU_BASE=$(OFFLINE_BASE) GPU_ORT='onnxruntime-gpu[cuda,cudnn]'

# HAProxy from Debian's package on the offline base (made when missing), for the fleet smoke.
HAPROXY_IMAGE ?= vidt-haproxy:bookworm
image-haproxy:
	$(ENGINE) image inspect $(OFFLINE_BASE) >/dev/null 2>&1 \
		|| ENGINE=$(ENGINE) docker/base-offline.sh $(OFFLINE_BASE)
	$(ENGINE) build $(FORMAT) $(BUILD_FLAGS) --build-arg BASE=$(OFFLINE_BASE) \
		-f docker/haproxy.Containerfile -t $(HAPROXY_IMAGE) docker

# Run the image with an exported model and a token on a free loopback port, as a user would.
image-smoke: $(STAMP)
	$(BIN)/python scripts/image_smoke.py --engine $(ENGINE) --image $(IMAGE):cpu \
		--run-flags "$(RUN_FLAGS)"

# deploy/kubernetes/ played with `podman kube play` on loopback: replicas on one model
# repository behind HAProxy, episodes through it, a version promoted under them.
image-fleet-smoke: $(STAMP)
	$(BIN)/python scripts/fleet_smoke.py --engine $(ENGINE) --image $(IMAGE):cpu \
		--haproxy-image $(HAPROXY_IMAGE) --run-flags "$(RUN_FLAGS)"
