# syntax=docker/dockerfile:1
# corral agent image. Build from the repository root:
#   docker build -f deploy/docker/agent.Dockerfile -t corral-agent .
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
RUN python -m venv /opt/corral \
    && /opt/corral/bin/pip install --no-compile .

FROM python:3.11.10-slim-bookworm@sha256:5148c0e4bbb64271bca1d3322360ebf4bfb7564507ae32dd639322e4952a6b16
LABEL org.opencontainers.image.title="corral-agent" \
      org.opencontainers.image.description="Proves an instance is a faithful copy of its image"
COPY --from=build /opt/corral /opt/corral
ENV PATH=/opt/corral/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    CORRAL_AGENT_DATA_DIR=/var/lib/corral-agent
# Non-root by default. To watch a host, the agent must read files of every
# owner: run it as UID 0 with every capability dropped except DAC_READ_SEARCH
# and the host root mounted read-only, e.g.
#   docker run --user 0 --cap-drop ALL --cap-add DAC_READ_SEARCH --read-only \
#     -v /:/host:ro,rslave --tmpfs /var/lib/corral-agent corral-agent \
#     run --root /host --controller corral.example.internal:7070
# (Kubernetes: deploy/kubernetes/agent-daemonset.yaml does the same.)
USER 10001
EXPOSE 9471
ENTRYPOINT ["corral-agent"]
CMD ["run", "--root", "/host", "--image-json", "/host/usr/share/corral/image/image.json", "--metrics-listen", "0.0.0.0:9471"]
