# syntax=docker/dockerfile:1
# mailhook's container image: dependencies and the TypeScript build in throwaway stages, a slim non-root runtime.
#   docker build -t mailhook .
#   docker run -v ./mailhook.yaml:/etc/mailhook/mailhook.yaml:ro -v mailhook-spool:/var/lib/mailhook \
#     -e MAILHOOK_ROUTE_<NAME>_SECRET=whsec_… -p 25:2525 mailhook
# Configuration: a mounted file at /etc/mailhook/mailhook.yaml; secrets and listen addresses from MAILHOOK_* variables
# (README.md, "Environment variables"). The spool (SQLite database and message files) lives on the volume.

# Node 26: the current LTS (Node 24 is in maintenance until April 2028 and works the same; CI runs the suite on both).
ARG NODE_IMAGE=node:26-trixie-slim

# Production dependencies. better-sqlite3 is native: a prebuilt binary when one matches, else compiled here.
FROM ${NODE_IMAGE} AS deps
WORKDIR /app
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 make g++ \
 && rm -rf /var/lib/apt/lists/*
COPY package.json package-lock.json ./
# --ignore-scripts keeps the package's own "prepare" (a build, without sources here) from running;
# better-sqlite3 is then compiled here, never taken prebuilt: on Node 24 and 26 it must be built against an ObjectWrap
# header without per-object cleanup hooks, or it can abort the process (README, "Known issue"; the script says why).
# npm's own node-gyp is called directly: `npm rebuild --build-from-source` is a config npm 12 will refuse.
COPY scripts/objectwrap-compat.sh /tmp/objectwrap-compat.sh
RUN npm ci --omit=dev --ignore-scripts --no-audit --no-fund \
 && node -e 'process.stdout.write(JSON.stringify(process.config, null, 2))' > /usr/local/include/node/config.gypi \
 && bash /tmp/objectwrap-compat.sh /usr/local \
 && cd node_modules/better-sqlite3 \
 && node "$(npm root -g)/npm/node_modules/node-gyp/bin/node-gyp.js" rebuild --release --nodedir=/usr/local

# The TypeScript build: src/ → dist/.
FROM ${NODE_IMAGE} AS build
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --ignore-scripts --no-audit --no-fund
COPY tsconfig.json ./
COPY src ./src
RUN npm run build

# Runtime: no compilers, no dev dependencies, not root.
FROM ${NODE_IMAGE} AS runtime
# MALLOC_MMAP_THRESHOLD_: glibc otherwise keeps the memory of large messages in its heap after they are freed
# (its mmap threshold grows to the largest block freed); bench/README.md, "Memory", has the measurement.
ENV NODE_ENV=production \
    MALLOC_MMAP_THRESHOLD_=131072 \
    MAILHOOK_SMTP_LISTEN=0.0.0.0:2525 \
    MAILHOOK_HTTP_LISTEN=0.0.0.0:8025 \
    MAILHOOK_SPOOL_PATH=/var/lib/mailhook/spool.db
WORKDIR /app
COPY --from=deps /app/node_modules ./node_modules
COPY --from=build /app/dist ./dist
COPY package.json ./
COPY bin ./bin
COPY src/http/dashboard/assets ./src/http/dashboard/assets
# The embedded default (a local sink); mount your own file over it.
COPY config/mailhook.yaml /etc/mailhook/mailhook.yaml
# The node image's unprivileged user (uid 1000) owns the spool; port 2525 needs no capability.
RUN mkdir -p /var/lib/mailhook && chown node:node /var/lib/mailhook
USER node
VOLUME ["/var/lib/mailhook"]
EXPOSE 2525 8025
# Liveness of the HTTP listener, on the port MAILHOOK_HTTP_LISTEN names.
HEALTHCHECK --interval=30s --timeout=5s --start-period=15s --retries=3 \
  CMD ["node", "-e", "const l=process.env.MAILHOOK_HTTP_LISTEN||'127.0.0.1:8025';fetch('http://127.0.0.1:'+l.slice(l.lastIndexOf(':')+1)+'/healthz').then(r=>process.exit(r.ok?0:1),()=>process.exit(1))"]
# SIGTERM reaches node directly (exec form): SMTP stops taking mail, deliveries in flight finish, the spool closes.
ENTRYPOINT ["node", "/app/bin/mailhook"]
CMD ["serve", "--config", "/etc/mailhook/mailhook.yaml"]
