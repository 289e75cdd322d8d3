# syntax=docker/dockerfile:1
# The serving image: `vidt serve` on onnxruntime, without torch (the server never imports it).
#
#   docker build -t vidt-serve .                          # CUDA 13 + cuDNN 9, onnxruntime-gpu
#   docker build -t vidt-serve:cpu --build-arg VARIANT=cpu .
#   docker run -p 50051:50051 -v $PWD/policy.onnx:/models/policy.onnx:ro \
#       -v $PWD/token:/run/secrets/vidt_token:ro vidt-serve
#
# Mounted paths: the model at /models/policy.onnx; a bearer token at /run/secrets/vidt_token,
# or a TLS pair at /run/secrets/tls.crt and /run/secrets/tls.key (override the command:
# `--model /models/policy.onnx --host 0.0.0.0 --tls-cert /run/secrets/tls.crt --tls-key
# /run/secrets/tls.key`). Inside the container the server binds 0.0.0.0, so it refuses to
# start without a token or TLS unless you add --insecure on purpose.
#
# onnxruntime-gpu 1.31 needs CUDA 13 and cuDNN 9; without a GPU it logs an error and falls
# back to the CPU, and the server reports the provider it really runs on.

ARG VARIANT=gpu

# ---- build: a wheel of the project (no dependencies resolved here)
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY vidt ./vidt
COPY serving ./serving
COPY cli ./cli
COPY proto ./proto
RUN pip wheel --no-deps --wheel-dir /wheels .

# ---- runtime bases
FROM nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04 AS base-gpu
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
ENV ORT_PACKAGE=onnxruntime-gpu

FROM python:3.11-slim AS base-cpu
ENV ORT_PACKAGE=onnxruntime

# ---- the image
FROM base-${VARIANT} AS runtime
COPY --from=build /wheels /wheels
COPY docker/requirements-serve.txt docker/healthcheck.py /opt/vidt/
# The project wheel without its training dependencies (torch, minari, h5py, tensorboard),
# then exactly what serving needs, and exactly one onnxruntime package.
RUN python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir -r /opt/vidt/requirements-serve.txt "${ORT_PACKAGE}" \
    && /opt/venv/bin/pip install --no-cache-dir --no-deps /wheels/*.whl \
    && rm -rf /wheels
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1
RUN useradd --system --uid 10001 --no-create-home vidt && mkdir -p /models && chown vidt /models
USER vidt
EXPOSE 50051 9090
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python3", "/opt/vidt/healthcheck.py", "127.0.0.1:50051"]
ENTRYPOINT ["vidt", "serve"]
CMD ["--model", "/models/policy.onnx", "--host", "0.0.0.0", "--port", "50051", \
     "--auth-token-file", "/run/secrets/vidt_token", "--metrics-port", "9090"]
