"""
Instances declared by a ``--config`` file, as the tests write and reach
them: the TOML of one ``[[instance]]``, the file and its secret files in a
test's directory, requests to a chosen port and path (with a client
certificate when a test gives one), the ``gwebhook`` command's JSON, and a
sender that keeps posting to one instance while the file changes under it.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import ssl
import subprocess
import textwrap
import threading
from pathlib import Path
from typing import Any

from support.daemon import Daemon, run_cli
from support.http import CLOSED, Response, ask

CONFIG_NAME = "gwebhook.toml"


# -------------------------------------------------------------------- the file


def _value(value: Any) -> str:
    """A TOML value: JSON's strings, booleans, integers and arrays are TOML's."""
    return json.dumps(value)


def instance(
    name: str,
    *,
    username: str | None = None,
    password: str | None = None,
    password_file: str | None = None,
    password_env: str | None = None,
    anonymous: bool | None = None,
    port: int | None = None,
    incident_type: str | None = None,
    store_samples: bool | None = None,
    client_ca: str | None = None,
    client_names: list[str] | None = None,
    map: dict[str, str] | None = None,
    fields: dict[str, str] | None = None,
) -> str:
    """The TOML of one ``[[instance]]``; a key left None is left out."""
    lines = ["[[instance]]", f"name = {_value(name)}"]
    for key, value in (
        ("incident_type", incident_type),
        ("store_samples", store_samples),
        ("port", port),
        ("anonymous", anonymous),
    ):
        if value is not None:
            lines.append(f"{key} = {_value(value)}")
    sections = {
        "auth": {
            "username": username,
            "password": password,
            "password_file": password_file,
            "password_env": password_env,
        },
        "mtls": {"client_ca": client_ca, "client_names": client_names},
        "map": map or {},
        "fields": fields or {},
    }
    for section, entries in sections.items():
        given = {k: v for k, v in entries.items() if v is not None}
        if given:
            lines.append(f"[instance.{section}]")
            lines += [f"{_value(k)} = {_value(v)}" for k, v in given.items()]
    return "\n".join(lines) + "\n"


def write_config(directory: Path, *instances: str, name: str = CONFIG_NAME) -> Path:
    """Write ``instances`` (TOML text) as the config file; its absolute path."""
    path = directory / name
    path.write_text("\n".join(textwrap.dedent(i) for i in instances), "utf-8")
    return path.resolve()


def write_secret(directory: Path, name: str, secret: str) -> str:
    """A secret file as an editor leaves it (one trailing newline); its name."""
    path = directory / name
    path.write_text(secret + "\n", "utf-8")
    path.chmod(0o600)
    return name


def reload(d: Daemon, path: Path, *instances: str) -> None:
    """Rewrite the daemon's config file and tell it to read it again."""
    write_config(path.parent, *instances, name=path.name)
    d.signal(signal.SIGHUP)


# -------------------------------------------------------------- the requests


def connection(
    d: Daemon,
    port: int | None = None,
    context: ssl.SSLContext | None = None,
    timeout: float = 10,
) -> http.client.HTTPSConnection:
    """
    A connection to ``d`` on ``port`` (its main port by default), verifying
    the server through the test CA, or with ``context`` (one holding a
    client certificate, say).
    """
    return http.client.HTTPSConnection(
        "127.0.0.1",
        port or d.port,
        timeout=timeout,
        context=context or d.pki.client_context(),
    )


def post(
    d: Daemon,
    path: str = "/",
    body: Any = None,
    headers: dict[str, str] | None = None,
    port: int | None = None,
    context: ssl.SSLContext | None = None,
) -> Response:
    """POST ``body`` (JSON; ``{}`` when None) to ``path`` on a new connection."""
    data = json.dumps({} if body is None else body).encode()
    c = connection(d, port, context)
    try:
        return ask(
            c,
            "POST",
            path,
            data,
            {"Content-Type": "application/json", **(headers or {})},
        )
    finally:
        c.close()


def get(d: Daemon, path: str, port: int | None = None) -> Response:
    """GET ``path`` on a new connection."""
    c = connection(d, port)
    try:
        return ask(c, "GET", path)
    finally:
        c.close()


def instance_paths(name: str) -> list[str]:
    """The two paths that name instance ``name`` on the main port."""
    return [f"/instance/execute/{name}", f"/xsoar/instance/execute/{name}"]


# ------------------------------------------------------- the gwebhook command


def gwebhook(d: Daemon, *args: str) -> subprocess.CompletedProcess:
    """``gwebhook --db <d's store> ARGS``, run to completion."""
    return run_cli("--db", str(d.db), *args, cwd=d.directory)


def read_back(d: Daemon, *args: str) -> Any:
    """
    What ``gwebhook ARGS`` prints, as JSON: one value for ``show`` and
    ``samples``, a list of one value per line for ``list`` and ``export``.
    """
    result = gwebhook(d, *args)
    assert result.returncode == 0, result
    lines = [json.loads(line) for line in result.stdout.splitlines() if line]
    if args[0] in ("show", "samples"):
        [value] = lines
        return value
    return lines


def show(d: Daemon, incident_id: str) -> dict[str, Any]:
    """``gwebhook show ID``."""
    return read_back(d, "show", incident_id)


# ------------------------------------------------------------ a steady sender


class Keeper(threading.Thread):
    """
    Posts a small incident to one instance on a new connection every
    ``interval`` seconds until stopped, recording each status, and each
    error a request met: the sender a reload must leave alone.  Use as a
    context manager around what happens meanwhile.
    """

    def __init__(
        self,
        d: Daemon,
        path: str,
        headers: dict[str, str],
        interval: float = 0.02,
    ) -> None:
        super().__init__(name="keeper", daemon=True)
        self.d = d
        self.path = path
        self.headers = headers
        self.interval = interval
        self.stop = threading.Event()
        self.statuses: list[int] = []
        self.answers: list[bytes] = []
        self.failures: list[BaseException] = []

    def run(self) -> None:
        number = 0
        while not self.stop.is_set() and number < 5000:
            number += 1
            body = {"name": f"kept-{number}-{os.urandom(3).hex()}"}
            try:
                reply = post(self.d, self.path, body, self.headers)
            except CLOSED as e:
                self.failures.append(e)
            else:
                self.statuses.append(reply.status)
                if reply.status != 200:
                    self.answers.append(reply.body)
            self.stop.wait(self.interval)

    def __enter__(self) -> Keeper:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.join(15)
        assert not self.is_alive(), "the sender did not stop"

    def assert_all_served(self, at_least: int) -> None:
        """At least ``at_least`` requests, every one answered 200."""
        assert not self.failures, self.failures
        assert len(self.statuses) >= at_least, self.statuses
        assert set(self.statuses) == {200}, (self.statuses, self.answers[:3])
