# Ward: one image for every component (`ward control`, `ward proxy`, `ward ingress`, …).
#   docker build -t ghcr.io/ward-mesh/ward:0.1.0 .
# Node.js 20.20 on Debian 12 (bookworm), slim. For reproducible builds pin the digest too:
#   FROM node:20.20.2-bookworm-slim@sha256:<digest> (docker buildx imagetools inspect node:20.20.2-bookworm-slim)
ARG NODE_IMAGE=node:20.20.2-bookworm-slim

# --- build: compile TypeScript to dist/ --------------------------------------------------------
FROM ${NODE_IMAGE} AS build
WORKDIR /src
COPY package.json package-lock.json ./
# --ignore-scripts: "prepare" would build before the sources are copied; the build runs below.
RUN npm ci --ignore-scripts --no-audit --no-fund
COPY tsconfig.json tsconfig.build.json ./
COPY core ./core
COPY ca ./ca
COPY discovery ./discovery
COPY proxy ./proxy
COPY ingress ./ingress
COPY cli ./cli
RUN npm run build

# --- production dependencies only ------------------------------------------------------------
FROM ${NODE_IMAGE} AS deps
WORKDIR /app
COPY package.json package-lock.json ./
# --ignore-scripts: no lifecycle script of Ward's ("prepare" would need the dev tools) or of a
# dependency runs; the runtime dependencies are plain JavaScript.
RUN npm ci --omit=dev --ignore-scripts --no-audit --no-fund && npm cache clean --force

# --- runtime -------------------------------------------------------------------------------------
FROM ${NODE_IMAGE} AS runtime
ENV NODE_ENV=production
WORKDIR /app
COPY --from=deps /app/node_modules ./node_modules
COPY --from=deps /app/package.json ./package.json
COPY --from=build /src/dist ./dist
# `ward` on the PATH, for exec probes (`ward probe http://127.0.0.1:9443/healthz`) and kubectl exec.
# main.js starts with "#!/usr/bin/env node" and the build made it executable.
RUN ln -s /app/dist/cli/main.js /usr/local/bin/ward
# The "nonroot" user of distroless images; the manifests run as 65532:65532 too.
USER 65532:65532
# CA 8443, discovery 8444; node proxy 15008 inbound, 15001 outbound; ingress 8443 https, 8080 http.
EXPOSE 8443 8444 15008 15001 8080
ENTRYPOINT ["node", "/app/dist/cli/main.js"]
CMD ["--help"]
