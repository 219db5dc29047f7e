"""An attacker on the factory network: polls a datasite's login with given credentials.

Run as ``python login_poller.py URL EMAIL`` with the password on stdin's first line. It polls
both PySyft's client login (``sy.login``) and the raw ``POST /api/v2/login`` route, as fast
as it can, from before the server exists. It prints ``ready`` once polling runs; on a
``stop`` line it stops, tries every signing key it obtained (reading the private partition
with it, as the attacker would) and prints one JSON summary line.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from typing import Any

import requests


def main() -> int:
    url, email = sys.argv[1], sys.argv[2]
    password = sys.stdin.readline().rstrip("\n")
    import syft as sy
    from syft.serde.deserialize import _deserialize
    from syft.service.user.user import UserPrivateKey

    stop = threading.Event()
    lock = threading.Lock()
    counts = {
        "http_closed": 0,
        "http_refused": 0,
        "http_other": 0,
        "client_closed": 0,
        "client_refused": 0,
    }
    accepted: list[dict[str, Any]] = []
    keys: list[Any] = []
    first_response: list[float] = []

    def note(kind: str) -> None:
        with lock:
            counts[kind] += 1

    def poll_route() -> None:
        while not stop.is_set():
            try:
                r = requests.post(
                    f"{url}/api/v2/login", json={"email": email, "password": password}, timeout=3
                )
            except requests.RequestException:
                note("http_closed")
                time.sleep(0.02)
                continue
            if not first_response:
                first_response.append(time.time())
            try:
                obj = _deserialize(r.content, from_bytes=True)
            except Exception:
                note("http_other")
                continue
            if isinstance(obj, UserPrivateKey):
                with lock:
                    accepted.append({"via": "route", "t": time.time(), "role": str(obj.role)})
                    keys.append(obj.signing_key)
            else:
                note("http_refused")

    def poll_client() -> None:
        while not stop.is_set():
            try:
                client = sy.login(url=url, email=email, password=password, cache=False)
            except Exception as exc:
                text = str(exc).lower()
                note(
                    "client_closed"
                    if "connection" in text or "refused" in text
                    else "client_refused"
                )
                time.sleep(0.02)
                continue
            with lock:
                accepted.append(
                    {"via": "client", "t": time.time(), "role": str(client.account.role)}
                )
                keys.append(client.credentials)

    threads = [threading.Thread(target=f, daemon=True) for f in (poll_route, poll_client)]
    for t in threads:
        t.start()
    print("ready", flush=True)
    sys.stdin.readline()  # "stop"
    stop.set()
    for t in threads:
        t.join(10)

    still_working = []
    if keys:
        guest = sy.login_as_guest(url=url)
        for key in keys:
            client = type(guest)(
                connection=guest.connection, metadata=guest.metadata, credentials=key
            )
            try:
                data = client.datasets[0].assets[0].data
                if data is not None and not isinstance(data, sy.SyftError):
                    still_working.append(str(key.verify_key))
            except Exception:  # refused: the key does not work (any more)
                continue
    print(
        json.dumps(
            {
                "counts": counts,
                "accepted": accepted,
                "still_working": still_working,
                "first_response": first_response[0] if first_response else None,
            }
        ),
        flush=True,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
