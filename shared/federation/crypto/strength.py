"""Refuse weak secrets at start-up: known placeholders, too short, or easy to guess (zxcvbn)."""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

from federation.errors import ConfigError

__all__ = ["KNOWN_PLACEHOLDERS", "check_secret", "check_url_password", "is_placeholder"]

#: Values that ship in this repository or PySyft's defaults: public, so never a secret.
KNOWN_PLACEHOLDERS = frozenset(
    {
        "replace-with-a-long-random-passphrase",
        "replace-with-a-random-salt",
        "replace-with-a-datasite-admin-password",
        "replace-with-a-grafana-password",
        "pdmfed-demo-only-passphrase",
        "pdmfed-demo-salt",
        "changethis",
        "changeme",
        "password",
        "secret",
        "admin",
    }
)
#: Words that mark a template value someone forgot to replace.
_PLACEHOLDER_MARKERS = (
    "replace-with",
    "replace_with",
    "change-me",
    "changeme",
    "changethis",
    "dev-only",
    "placeholder",
    "example",
)
#: zxcvbn only looks at this many characters (its matching is quadratic); longer is stronger.
_ZXCVBN_MAX_CHARS = 72


def _guesses_log10(value: str) -> float:
    from zxcvbn import zxcvbn

    return float(zxcvbn(value[:_ZXCVBN_MAX_CHARS])["guesses_log10"])


def is_placeholder(value: str) -> bool:
    """Whether ``value`` is a public template/default value rather than a chosen secret."""
    lowered = value.strip().lower()
    return lowered in KNOWN_PLACEHOLDERS or any(m in lowered for m in _PLACEHOLDER_MARKERS)


def check_secret(
    value: str, name: str, *, min_chars: int = 16, min_guesses_log10: float = 14.0
) -> str:
    """Return ``value`` if it is a usable secret; ConfigError naming ``name`` (never the value).

    Refused: known placeholders (and values containing a template marker such as
    ``replace-with``), fewer than ``min_chars`` characters, and values zxcvbn guesses in fewer
    than 10**min_guesses_log10 tries (repeats, sequences, keyboard walks, common words). A
    random string of n characters scores about 10**n, so the defaults ask for ~16 random ones.
    """
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{name} is empty")
    if is_placeholder(value):
        raise ConfigError(f"{name} is a public placeholder value: set a random secret")
    if len(value) < min_chars:
        raise ConfigError(f"{name} is too weak: {len(value)} characters, need at least {min_chars}")
    if _guesses_log10(value) < min_guesses_log10:
        raise ConfigError(
            f"{name} is too weak: easy to guess (repeats, sequences or common words); "
            "use a random value, e.g. from `pdmfed keys init`"
        )
    return value


def check_url_password(url: str | None, name: str) -> None:
    """Refuse a broker/store URL (``scheme://user:password@host``) whose password is a placeholder.

    Only placeholders: the strength of these passwords is enforced where they are set (keys
    init, the rendered broker definitions, the Redis ACL file), and RabbitMQ's own ``guest``
    works on loopback only.
    """
    if not url:
        return
    try:
        password = urlsplit(url).password
    except ValueError as exc:
        raise ConfigError(f"{name} is not a valid URL") from exc
    if password is not None and is_placeholder(unquote(password)):
        raise ConfigError(
            f"the password in {name} is a public placeholder value: set a random secret"
        )
