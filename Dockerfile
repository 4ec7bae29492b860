# syntax=docker/dockerfile:1
# The agentmesh image: `agentmesh scheduler` or `agentmesh node` (docker-compose.yml runs
# both). Python 3.11 with the package installed as `pip install .` installs it, and, for
# the nodes' gemini executor, Node.js 20 with the Gemini CLI at the version the Makefile
# pins. It runs as an unprivileged user.
#
# Not built on the development machine, which has no Docker engine: tests/test_deployment.py
# checks this file against the Makefile and pyproject.toml and builds the package from
# exactly the files copied here.

FROM node:20-bookworm-slim AS node

FROM python:3.11-slim-bookworm

# Keep equal to GEMINI_CLI_VERSION in the Makefile (a test checks it).
ARG GEMINI_CLI_VERSION=0.61.0

# Node.js 20 and npm from the official image: the same Debian release, so the same libc.
COPY --from=node /usr/local/bin/node /usr/local/bin/node
COPY --from=node /usr/local/lib/node_modules /usr/local/lib/node_modules
RUN ln -s ../lib/node_modules/npm/bin/npm-cli.js /usr/local/bin/npm \
    && ln -s ../lib/node_modules/npm/bin/npx-cli.js /usr/local/bin/npx

# What a node's inventory commands and the Gemini CLI's tools expect to find on a host,
# bubblewrap for the sandbox every task runs in, and a C compiler for its Landlock launcher.
RUN apt-get update \
    && apt-get install --yes --no-install-recommends ca-certificates git iproute2 procps \
        bubblewrap gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*

RUN npm install --global --no-audit --no-fund "@google/gemini-cli@${GEMINI_CLI_VERSION}" \
    && npm cache clean --force

# The package, built from the files pyproject.toml names (a test builds a wheel from
# exactly these and compares it with the checkout's).
WORKDIR /tmp/agentmesh-build
COPY pyproject.toml README.md ./
COPY src ./src
COPY generated ./generated
COPY schema ./schema
RUN pip install --no-cache-dir . \
    && rm -rf /tmp/agentmesh-build

RUN useradd --create-home --uid 1000 --user-group agentmesh
USER agentmesh
WORKDIR /home/agentmesh
# The data directory holds a node's agent id: mount a volume there to keep it.
RUN mkdir -p /home/agentmesh/data
ENV AGENTMESH_DATA_DIR=/home/agentmesh/data \
    PYTHONUNBUFFERED=1

EXPOSE 50050 50051
ENTRYPOINT ["agentmesh"]
CMD ["--help"]
