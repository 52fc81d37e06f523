# syntax=docker/dockerfile:1
# corral controller image. Build from the repository root:
#   docker build -f deploy/docker/controller.Dockerfile -t corral-controller .
#
# The base is pinned by digest (never a moving tag). This digest was published
# for python:3.11.10-slim-bookworm; it could not be pulled or re-checked where
# this file was written, so re-resolve it before a release
# (`docker buildx imagetools inspect python:3.11-slim-bookworm`) and let a
# digest-pinning bot keep it current.
FROM python:3.11.10-slim-bookworm@sha256:5148c0e4bbb64271bca1d3322360ebf4bfb7564507ae32dd639322e4952a6b16 AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY agent/ agent/
COPY controller/ controller/
COPY protos/ protos/
# The PostgreSQL and provider extras are small and let one image serve every setup.
RUN python -m venv /opt/corral \
    && /opt/corral/bin/pip install --no-compile ".[postgres,aws,docker,tls]"

FROM python:3.11.10-slim-bookworm@sha256:5148c0e4bbb64271bca1d3322360ebf4bfb7564507ae32dd639322e4952a6b16
LABEL org.opencontainers.image.title="corral-controller" \
      org.opencontainers.image.description="Checks agent reports; taints and replaces drifted instances"
COPY --from=build /opt/corral /opt/corral
ENV PATH=/opt/corral/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
WORKDIR /var/lib/corral
RUN chown 10001:10001 /var/lib/corral
USER 10001:10001
VOLUME ["/var/lib/corral"]
# gRPC (agents, operators) and Prometheus metrics.
EXPOSE 7070 9470
# Asks the standard gRPC health service, as Kubernetes' grpc probes do.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import grpc, sys; from grpc_health.v1 import health_pb2 as h, health_pb2_grpc as g; ch = grpc.insecure_channel('127.0.0.1:7070'); r = g.HealthStub(ch).Check(h.HealthCheckRequest(), timeout=4); sys.exit(r.status != h.HealthCheckResponse.SERVING)"]
ENTRYPOINT ["corral-controller"]
CMD ["serve", "--listen", "0.0.0.0:7070", "--metrics-listen", "0.0.0.0:9470", "--data-dir", "/var/lib/corral"]
