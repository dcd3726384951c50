# tscale container image: build stage (compile + unit tests), then a small runtime stage.
#
#   docker build -t tscale .          (or: podman build -t tscale .)
#   docker run -p 127.0.0.1:8080:8080 -v tscale-data:/data tscale
#
# Configuration is the daemon's own TSCALE_* environment (SPEC §3); deploy/docker-compose.yml
# sets the rest (tokens as secrets, models, published port). Operations: deploy/README.md.

FROM debian:bookworm AS build
# The -dev side of the Makefile's DEB_PKGS (python3/curl are only for the e2e tests, run by CI
# outside the image). Its own layer, so editing sources does not re-download packages.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
      gcc libc6-dev make pkg-config libuv1-dev libmicrohttpd-dev libjansson-dev libsqlite3-dev check \
      libnats-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# The unit tests run here so an image is never built from code that fails them on this
# platform; ASan and e2e runs stay in CI (`make test`), which is where their cost belongs.
RUN make -j2 build/tscaled \
 && make -j2 unit \
 && strip -o /tscaled build/tscaled

FROM debian:bookworm
# Runtime libraries only: no compiler, no shell tools beyond the base image, no curl
# (the HEALTHCHECK is the binary's own `tscaled healthcheck`).
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
      libuv1 libmicrohttpd12 libjansson4 libsqlite3-0 libnats3.4 \
 && apt-get clean && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin
# A fixed uid/gid, so host-side files (secrets, bind-mounted models) can be granted to it.
RUN groupadd --system --gid 10001 tscale \
 && useradd --system --uid 10001 --gid tscale --home-dir /data --no-create-home \
      --shell /usr/sbin/nologin tscale \
 && install -d -o tscale -g tscale -m 0750 /data \
 && install -d -m 0755 /models
COPY --from=build /tscaled /usr/local/bin/tscaled
# Fails the build here, not at start-up, when a runtime library is missing.
RUN tscaled help >/dev/null

# Listen on all interfaces inside the container (publish the port on 127.0.0.1 on the host;
# see deploy/docker-compose.yml); the database lives on the /data volume.
ENV TSCALE_LISTEN=0.0.0.0:8080 \
    TSCALE_DB=/data/tscale.db
VOLUME ["/data"]
WORKDIR /data
USER 10001:10001
EXPOSE 8080
# SIGTERM: stop accepting, finish queued work, take the final snapshot, exit 0 (SPEC §3).
# Give it time: docker stop -t 60 / compose stop_grace_period.
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["tscaled", "healthcheck", "--timeout", "4"]
ENTRYPOINT ["tscaled"]
CMD ["serve"]
