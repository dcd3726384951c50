# HAProxy from Debian's package (2.6), the load balancer in front of the tscale replicas of
# ../docker-compose.replicated.yml; its configuration is mounted (haproxy.cfg).
FROM debian:bookworm
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends haproxy \
 && apt-get clean && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin
# The package's haproxy user; it binds 8080 (unprivileged), so it needs no capability.
USER haproxy
EXPOSE 8080
STOPSIGNAL SIGUSR1
ENTRYPOINT ["/usr/sbin/haproxy", "-W", "-db", "-f", "/etc/haproxy/haproxy.cfg"]
