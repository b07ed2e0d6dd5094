# syntax=docker/dockerfile:1
#
# One image for every Ebb service and the queue sidecar. The entrypoint is `python -m`, so a
# container picks its service by module name:
#
#   docker run IMAGE                                   # ebb.controller (the default)
#   docker run IMAGE ebb.autoscaler --grpc-port 8091
#   docker run IMAGE ebb.queue --http-port 8013 --app-port 8080 ...
#
# The Helm chart (helm/ebb) sets `args: ["ebb.<service>", ...]` on each container.
# Build from the repository root:  docker build -t ebb:0.1.0 .

ARG PYTHON_IMAGE=python:3.11-slim

# --- build: the project wheel and every dependency's wheel --------------------------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY gen ./gen
COPY services ./services
RUN pip wheel --wheel-dir /wheels .

# --- runtime ------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="ebb" \
      org.opencontainers.image.description="Ebb: controller, autoscaler, activator, webhook and queue sidecar" \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
# A fixed, numeric non-root user so Kubernetes' runAsNonRoot can verify it (65532, the
# "nonroot" uid of distroless images; the chart runs every pod as this uid).
RUN groupadd --system --gid 65532 ebb \
 && useradd --system --uid 65532 --gid 65532 --home-dir /home/ebb --create-home \
            --shell /usr/sbin/nologin ebb
# Installed as root and byte-compiled at install time, so the code is read-only to the
# service user and the root filesystem can be mounted read-only.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-index --find-links /wheels ebb
USER 65532:65532
WORKDIR /home/ebb
# controller gRPC, gateway listener (Envoy, not in this image), autoscaler, activator HTTP and
# gRPC, webhook gRPC and HTTPS, queue (in revision pods).
EXPOSE 8090 8091 8012 8092 8093 8443 8013
ENTRYPOINT ["python", "-m"]
CMD ["ebb.controller"]
