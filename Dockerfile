# llm-throttle: the proxy (default target), and the dispatcher companion (target "dispatcher",
# which adds the Hermes Agent CLI it drives). Build: docker build -t llm-throttle .
FROM python:3.11-slim AS proxy

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
# README.m[d]: the package's readme, copied when present (the glob keeps the build going without).
COPY pyproject.toml README.m[d] ./
COPY proxy ./proxy
COPY loadtest ./loadtest
RUN pip install . \
    && cd / && rm -rf /src \
    && useradd --system --uid 10001 --user-group --home-dir /home/llmthrottle --create-home \
       llmthrottle

USER 10001:10001
WORKDIR /home/llmthrottle
EXPOSE 8080
CMD ["llm-throttle", "serve", "--config", "/etc/llm-throttle/config.yaml"]


FROM proxy AS dispatcher
ARG HERMES_AGENT_VERSION=0.19.0
USER root
RUN pip install "hermes-agent==${HERMES_AGENT_VERSION}"
USER 10001:10001
EXPOSE 8090
CMD ["llm-throttle", "dispatch", "--help"]
