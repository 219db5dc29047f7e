# Prometheus from Debian's prometheus package, for machines where the upstream prom/prometheus
# image cannot be pulled (deploy/compose/local-images.yml). Same entrypoint contract as the
# upstream image: compose passes only flags; the config is mounted at /etc/prometheus.
ARG BASE_IMAGE=pdm-federation-base:bookworm
FROM ${BASE_IMAGE}
# policy-rc.d: the package must not try to start a daemon inside the build.
# hadolint ignore=DL3008
RUN printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d \
    && apt-get update \
    && apt-get install -y --no-install-recommends prometheus \
    && apt-get clean && rm -rf /var/lib/apt/lists/* /usr/share/doc/* /usr/share/man/* /usr/sbin/policy-rc.d \
    && mkdir -p /prometheus && chown prometheus:prometheus /prometheus
WORKDIR /prometheus
# hadolint ignore=DL3066
USER prometheus
EXPOSE 9090
HEALTHCHECK --interval=10s --timeout=3s --retries=10 \
    CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9090/-/ready', timeout=2)"]
ENTRYPOINT ["/usr/bin/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]
