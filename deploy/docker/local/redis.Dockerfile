# Redis from Debian's redis-server package, for machines where the upstream redis:7.2 image
# cannot be pulled (deploy/compose/local-images.yml). Compose passes the same command line
# as to the upstream image.
ARG BASE_IMAGE=pdm-federation-base:bookworm
FROM ${BASE_IMAGE}
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends redis-server \
    && apt-get clean && rm -rf /var/lib/apt/lists/* /usr/share/doc/* /usr/share/man/* \
    && mkdir -p /data && chown redis:redis /data
WORKDIR /data
# hadolint ignore=DL3066
USER redis
EXPOSE 6379
HEALTHCHECK --interval=5s --timeout=3s --retries=10 \
    CMD ["sh", "-c", "redis-cli ping | grep -q PONG"]
CMD ["redis-server"]
