# NATS server with JetStream from Debian's package (nats-server 2.9), for the replicated
# deployment (../docker-compose.replicated.yml). Built from Debian rather than pulled, so the
# deployment needs no registry but Debian's archive.
FROM debian:bookworm
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends nats-server \
 && apt-get clean && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin
# The package's unprivileged nats user owns the JetStream store on the /data volume.
RUN install -d -o nats -g nats -m 0750 /data
VOLUME ["/data"]
USER nats
# 4222 clients, 6222 cluster routes, 8222 monitoring (/varz, /jsz, /healthz).
EXPOSE 4222 6222 8222
ENTRYPOINT ["/usr/sbin/nats-server"]
