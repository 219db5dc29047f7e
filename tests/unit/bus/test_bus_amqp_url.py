"""An AMQP URL is checked before any connection: scheme, host, port; the password is never echoed."""

from __future__ import annotations

import pytest
from federation.bus.url import AmqpTarget, parse_amqp_url
from federation.errors import ConfigError


@pytest.mark.parametrize(
    ("url", "message"),
    [
        (
            "127.0.0.1:5672",
            "PDMFED_AMQP_URL has no scheme: expected amqp://user:password@host:5672/vhost",
        ),
        (
            "http://guest:s3cret@rabbit:5672/",
            "PDMFED_AMQP_URL has scheme 'http://': RabbitMQ needs amqp:// or amqps://",
        ),
        (
            "amqp://guest:s3cret@:5672/",
            "PDMFED_AMQP_URL has no host: expected amqp://user:password@host:5672/vhost",
        ),
        (
            "amqp://guest:s3cret@rabbit:99999/",
            "PDMFED_AMQP_URL has an invalid port: Port out of range 0-65535",
        ),
        ("", "PDMFED_AMQP_URL has no scheme: expected amqp://user:password@host:5672/vhost"),
    ],
)
def test_when_the_url_is_not_an_amqp_url__the_error_says_what_is_wrong_without_the_password(
    url, message
):
    with pytest.raises(ConfigError) as err:
        parse_amqp_url(url)
    assert str(err.value) == message
    assert "s3cret" not in str(err.value)


@pytest.mark.parametrize(
    ("url", "target"),
    [
        ("amqp://pdmfed:pw@rabbitmq:5672/", AmqpTarget("amqp", "rabbitmq", 5672, "/", "pdmfed")),
        ("amqp://u:pw@rabbitmq/prod", AmqpTarget("amqp", "rabbitmq", 5672, "prod", "u")),
        (
            "amqps://u:pw@broker.example:5671/%2F",
            AmqpTarget("amqps", "broker.example", 5671, "/", "u"),
        ),
        ("AMQP://127.0.0.1", AmqpTarget("amqp", "127.0.0.1", 5672, "/", "guest")),
    ],
)
def test_when_the_url_is_valid__host_port_vhost_and_user_are_read(url, target):
    assert parse_amqp_url(url) == target
    assert parse_amqp_url(url).where == f"{target.host}:{target.port}"
