"""The connector's datasite registry: datasite id -> URL, account and password file, from its own files.

A campaign names datasite ids only. Where a datasite lives and which credential the connector
sends it come from this registry, which only the connector's operator writes (``pdmfed keys
init`` writes one); no message can add an entry, change a URL or name a secret.

    {"datasites": {"factory-1": {"url": "http://factory-1:8080",
                                 "email": "connector@pdm-factory.com",
                                 "password_file": "factory-1.password"}}}

A relative ``password_file`` is relative to the registry file's directory. Passwords are read
when the connector logs in, so a rotated file is used at the next login. The registry file
is re-read when it changes (checked at each lookup) and on SIGHUP; a file that no longer
parses leaves the registry as it was and says why.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import yaml

from federation.crypto.signing import check_sender_name
from federation.errors import ConfigError, DatasiteError
from federation.runtime.private_files import open_private, private_dir

__all__ = [
    "REGISTRY_FILE",
    "DatasiteEntry",
    "DatasiteRegistry",
    "UnknownDatasite",
    "write_registry",
]

log = logging.getLogger(__name__)

#: The registry's file name in the directory ``write_registry`` fills.
REGISTRY_FILE = "datasites.json"
_FIELDS = {"url", "email", "password_file"}


class UnknownDatasite(DatasiteError):
    """A message named a datasite id the connector's registry does not hold."""

    reason = "unknown_datasite"


@dataclass(frozen=True)
class DatasiteEntry:
    """One datasite as the connector's operator configured it."""

    datasite_id: str
    url: str
    email: str
    password_file: Path

    def password(self) -> str:
        """The account's password, read now (DatasiteError if the file is missing or empty)."""
        try:
            value = self.password_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise DatasiteError(
                f"cannot read the password file of datasite {self.datasite_id}: {exc.strerror}"
            ) from exc
        if not value:
            raise DatasiteError(f"the password file of datasite {self.datasite_id} is empty")
        return value


def _entry(datasite_id: object, raw: object, base: Path, where: str) -> DatasiteEntry:
    if not isinstance(datasite_id, str):
        raise ConfigError(f"{where}: datasite ids must be strings")
    try:
        check_sender_name(datasite_id)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from exc
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: datasite {datasite_id} must be a mapping of {sorted(_FIELDS)}")
    extra, missing = set(raw) - _FIELDS, _FIELDS - set(raw)
    if extra or missing:
        raise ConfigError(
            f"{where}: datasite {datasite_id} needs exactly {sorted(_FIELDS)}"
            f" (missing {sorted(missing)}, unknown {sorted(map(str, extra))})"
        )
    url, email, pw = raw["url"], raw["email"], raw["password_file"]
    if (
        not isinstance(url, str)
        or urlsplit(url).scheme not in ("http", "https")
        or not urlsplit(url).hostname
    ):
        raise ConfigError(
            f"{where}: datasite {datasite_id}: url {url!r} is not http(s)://host[:port]"
        )
    if not isinstance(email, str) or "@" not in email:
        raise ConfigError(
            f"{where}: datasite {datasite_id}: email must be the account's e-mail address"
        )
    if not isinstance(pw, str) or not pw:
        raise ConfigError(f"{where}: datasite {datasite_id}: password_file must name a file")
    path = Path(pw) if Path(pw).is_absolute() else base / pw
    if not path.is_file():
        raise ConfigError(f"{where}: datasite {datasite_id}: password file {path} does not exist")
    return DatasiteEntry(datasite_id, url.rstrip("/"), email, path)


def _parse(path: Path) -> dict[str, DatasiteEntry]:
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))  # JSON is YAML
    except FileNotFoundError as exc:
        raise ConfigError(f"datasite registry {path} does not exist") from exc
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"datasite registry {path} cannot be read: {exc}") from exc
    sites = raw.get("datasites") if isinstance(raw, Mapping) else None
    if not isinstance(sites, Mapping) or not sites:
        raise ConfigError(
            f"datasite registry {path}: expected a non-empty 'datasites' mapping (id -> entry)"
        )
    return {ds: _entry(ds, entry, path.parent, str(path)) for ds, entry in sites.items()}


def _stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


class DatasiteRegistry:
    """The datasites the connector may reach; ``get`` raises UnknownDatasite for any other id."""

    def __init__(self, entries: Mapping[str, DatasiteEntry], source: Path | None = None) -> None:
        self._entries = dict(entries)
        self.source = source
        self._stamp = _stamp(source) if source is not None else None
        self._lock = threading.Lock()

    @classmethod
    def load(cls, path: str | Path) -> DatasiteRegistry:
        """Read and check a registry file (ConfigError with a one-line reason)."""
        path = Path(path)
        return cls(_parse(path), source=path)

    @property
    def ids(self) -> list[str]:
        """The registered datasite ids, sorted."""
        self._refresh_if_changed()
        return sorted(self._entries)

    def get(self, datasite_id: str) -> DatasiteEntry:
        """The entry for ``datasite_id``; UnknownDatasite when the registry does not hold it."""
        self._refresh_if_changed()
        entry = self._entries.get(datasite_id)
        if entry is None:
            raise UnknownDatasite(f"datasite {datasite_id!r} is not in the connector's registry")
        return entry

    def reload(self) -> bool:
        """Re-read the source file; on any problem keep the entries as they were (False)."""
        if self.source is None:
            return False
        with self._lock:
            stamp = _stamp(self.source)
            try:
                entries = _parse(self.source)
            except ConfigError as exc:
                self._stamp = stamp  # do not retry the same broken file at every lookup
                log.error("kept the datasite registry as it was: %s", exc)
                return False
            self._entries, self._stamp = entries, stamp
        log.info("datasite registry reloaded from %s: %s", self.source, ", ".join(sorted(entries)))
        return True

    def _refresh_if_changed(self) -> None:
        if self.source is not None and _stamp(self.source) != self._stamp:
            self.reload()


def write_registry(directory: str | Path, sites: Mapping[str, tuple[str, str, str]]) -> Path:
    """Write ``datasites.json`` and one ``<id>.password`` file (0600) per datasite into
    ``directory`` (0700); ``sites`` maps id -> (url, email, password). Returns the file."""
    directory = private_dir(directory)
    registry = {}
    for ds, (url, email, password) in sites.items():
        check_sender_name(ds)
        name = f"{ds}.password"
        with open_private(directory / name) as fh:
            fh.write(password.encode("utf-8"))
        registry[ds] = {"url": url, "email": email, "password_file": name}
    path = directory / REGISTRY_FILE
    tmp = directory / f".{REGISTRY_FILE}.tmp"
    with open_private(tmp) as fh:
        fh.write((json.dumps({"datasites": registry}, indent=2) + "\n").encode("utf-8"))
    os.replace(tmp, path)
    return path
