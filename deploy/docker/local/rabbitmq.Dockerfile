# RabbitMQ from Debian's rabbitmq-server package, for machines where the upstream
# rabbitmq:3.13 image cannot be pulled (deploy/compose/local-images.yml). Configuration,
# plugins and definitions are mounted at /etc/rabbitmq/ exactly as for the upstream image.
ARG BASE_IMAGE=pdm-federation-base:bookworm
FROM ${BASE_IMAGE}
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends rabbitmq-server \
    && apt-get clean && rm -rf /var/lib/apt/lists/* /usr/share/doc/* /usr/share/man/*
# Logs to stdout; the node runs in the foreground as the rabbitmq user (the /usr/sbin
# wrapper would hide its logs behind su).
ENV RABBITMQ_LOGS=- \
    RABBITMQ_SASL_LOGS=- \
    HOME=/var/lib/rabbitmq
# hadolint ignore=DL3066
USER rabbitmq
EXPOSE 5672 15672 15692
HEALTHCHECK --interval=10s --timeout=10s --start-period=20s --retries=12 \
    CMD ["rabbitmq-diagnostics", "-q", "check_port_connectivity"]
CMD ["/usr/lib/rabbitmq/bin/rabbitmq-server"]
