# syntax=docker/dockerfile:1
# One image, two entry points: `prewarm run` (daemon) and `prewarm agent` (GPU agent).
#   docker build -t prewarm:daemon .                              # daemon: no torch, small
#   docker build -t prewarm:agent --build-arg VARIANT=agent .     # agent: + torch (CUDA build)
# The install steps are hack/install-image.sh, which CI runs too, so what CI proves is what builds.
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ARG VARIANT=daemon
WORKDIR /src
COPY requirements-runtime.lock requirements-agent.lock pyproject.toml README.md ./
COPY hack/install-image.sh hack/
COPY common common
COPY forecaster forecaster
COPY planner planner
COPY actuator actuator
COPY gpu_agent gpu_agent
COPY protos protos
COPY prewarm prewarm
RUN ./hack/install-image.sh /opt/prewarm "${VARIANT}"

FROM ${PYTHON_IMAGE}
ARG VARIANT=daemon
LABEL org.opencontainers.image.title="prewarm" \
      org.opencontainers.image.description="Predictive pre-warming for ML model serving" \
      org.opencontainers.image.licenses="Apache-2.0" \
      io.prewarm.variant="${VARIANT}"
RUN groupadd --system --gid 65532 prewarm \
 && useradd --system --uid 65532 --gid prewarm --no-create-home --shell /usr/sbin/nologin prewarm
COPY --from=build /opt/prewarm /opt/prewarm
ENV PATH=/opt/prewarm/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 65532:65532
EXPOSE 8080 9400 50061 50071
ENTRYPOINT ["prewarm"]
CMD ["run"]
