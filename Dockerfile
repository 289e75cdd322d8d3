# syntax=docker/dockerfile:1
# The serving image: `vidt serve` on onnxruntime, without torch (the server never imports it).
#
#   make image                 # CPU: python:3.11-slim, onnxruntime
#   make image-gpu             # CUDA 13 + cuDNN 9 base, onnxruntime-gpu
#   make image-gpu-offline     # the offline base, onnxruntime-gpu[cuda,cudnn]: CUDA from PyPI
#   make image-base-offline    # no registry: a Debian base from mmdebstrap, then the CPU image
#   docker run -p 50051:50051 -v $PWD/policy.onnx:/models/policy.onnx:ro \
#       -v $PWD/token:/run/secrets/vidt_token:ro vidt-serve:cpu
#
# One Dockerfile for Docker and podman/buildah 1.28: the variant is a base image and a package
# name given as build arguments (older buildah cannot pick a stage by an argument's value).
# Mounted paths: the model at /models/policy.onnx; a bearer token at /run/secrets/vidt_token
# (readable by uid or gid 10001, see SECURITY.md), or a TLS pair at /run/secrets/tls.crt and
# /run/secrets/tls.key. Inside the container the server binds 0.0.0.0, so it refuses to start
# without a token or TLS unless --insecure is added on purpose. The port is VIDT_PORT (50051):
# the server and the HEALTHCHECK both read it.

ARG BASE=python:3.11-slim

# ---- build: a wheel of the project (no dependencies resolved here)
FROM ${BASE} AS build
ARG PIP_CERT
RUN command -v python3 >/dev/null && python3 -m venv --help >/dev/null 2>&1 \
    || (apt-get update && apt-get install -y --no-install-recommends python3 python3-venv \
        && rm -rf /var/lib/apt/lists/*)
WORKDIR /src
COPY pyproject.toml README.md ./
COPY vidt ./vidt
COPY serving ./serving
COPY cli ./cli
COPY proto ./proto
RUN python3 -m venv /tmp/build \
    && /tmp/build/bin/pip wheel --no-cache-dir ${PIP_CERT:+--cert "$PIP_CERT"} --no-deps \
        --wheel-dir /wheels .

# ---- the image
FROM ${BASE} AS runtime
ARG PIP_CERT
ARG ORT_PACKAGE=onnxruntime
RUN command -v python3 >/dev/null && python3 -m venv --help >/dev/null 2>&1 \
    || (apt-get update && apt-get install -y --no-install-recommends python3 python3-venv \
        && rm -rf /var/lib/apt/lists/*)
COPY --from=build /wheels /wheels
COPY constraints.txt docker/constraints-cuda.txt docker/requirements-serve.txt \
    docker/healthcheck.py /opt/vidt/
# The project wheel without its training dependencies (torch, minari, h5py, tensorboard),
# then exactly what serving needs, and exactly one onnxruntime package, at the tested versions.
# ORT_PACKAGE=onnxruntime-gpu[cuda,cudnn] also brings CUDA and cuDNN as NVIDIA's wheels (under
# site-packages/nvidia/*/lib): the dynamic linker is told where they are, so onnxruntime's CUDA
# provider finds them on any base. The driver (libcuda) always comes from the host.
RUN python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir ${PIP_CERT:+--cert "$PIP_CERT"} \
        -c /opt/vidt/constraints.txt -c /opt/vidt/constraints-cuda.txt \
        -r /opt/vidt/requirements-serve.txt "${ORT_PACKAGE}" \
    && /opt/venv/bin/pip install --no-cache-dir --no-deps /wheels/*.whl \
    && rm -rf /wheels \
    && libs=$(find /opt/venv -path '*/site-packages/nvidia/*/lib' -type d | sort) \
    && if [ -n "$libs" ]; then echo "$libs" > /etc/ld.so.conf.d/vidt-cuda-wheels.conf \
        && ldconfig; fi
# A fixed uid and gid (10001) for mounted secrets, and a home (onnxruntime and Python look
# for one).
RUN groupadd --system --gid 10001 vidt \
    && useradd --system --uid 10001 --gid 10001 --home-dir /home/vidt --create-home \
        --shell /usr/sbin/nologin vidt \
    && mkdir -p /models && chown vidt:vidt /models
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 HOME=/home/vidt VIDT_PORT=50051
USER 10001:10001
EXPOSE 50051 9090
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python3", "/opt/vidt/healthcheck.py"]
ENTRYPOINT ["vidt", "serve"]
CMD ["--model", "/models/policy.onnx", "--host", "0.0.0.0", \
     "--auth-token-file", "/run/secrets/vidt_token", "--metrics-port", "9090"]
