# syntax=docker/dockerfile:1
# The cachewarm command as a container image. The container's command is cachewarm's arguments:
#   docker build -t registry.example/cachewarm:0.1.0 .
#   docker run --rm registry.example/cachewarm:0.1.0 controller serve --topology /config/cluster.yaml …
#
# Node 22 is the Node the project is tested on (package.json "engines": >=22.12). Node 24 works
# the same way: --build-arg NODE_MAJOR=24.
ARG NODE_MAJOR=22

# Build: the dev dependencies (TypeScript) compile the project, and `npm pack` makes the same
# tarball the npm registry would get (prepack runs `tsc -p tsconfig.build.json`).
FROM node:${NODE_MAJOR}-bookworm-slim AS build
WORKDIR /src
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY tsconfig.json tsconfig.build.json topology.schema.json README.md LICENSE ./
COPY bin ./bin
COPY controller ./controller
COPY dumper ./dumper
COPY populator ./populator
COPY shared ./shared
RUN mkdir /pkg && npm pack --pack-destination /pkg

# Run: that tarball installed with its production dependencies only, as an npm user installs it.
FROM node:${NODE_MAJOR}-bookworm-slim
# tini as PID 1 passes SIGTERM on to cachewarm (which stops cleanly on it) and reaps children
# (a controller's local populators).
RUN apt-get update \
 && apt-get install -y --no-install-recommends tini \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /pkg/ /tmp/pkg/
RUN npm install --global --omit=dev --no-audit --no-fund /tmp/pkg/cachewarm-*.tgz \
 && rm -rf /tmp/pkg /root/.npm
# The base image's unprivileged user, uid 1000.
USER node
WORKDIR /home/node
# The controller's API, the sidecar's API, the metrics listener (--metrics-listen).
EXPOSE 11300 11299 9464
ENTRYPOINT ["/usr/bin/tini", "--", "cachewarm"]
CMD ["--help"]
