"""
The config file's keys beside its instances: ``[[forward]]`` (where stored
incidents are delivered onward), ``[api]`` (the read API's tokens), and
``db`` / ``db_password_file`` (the store).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cryptography import x509

from gwebhook.config.instance import InstanceConfig
from gwebhook.config.reader import (
    _PASSWORD_SOURCES,
    DEFAULT_INSTANCE,
    INSTANCE_NAME,
    Reader,
    _kind,
    _sendable_header_value,
)
from gwebhook.database import is_postgres
from gwebhook.headers import is_token
from gwebhook.urls import check_url

_API_KEYS = ("tokens_file",)
_FORWARD_KEYS = (
    "name",
    "url",
    "instances",
    "format",
    "method",
    "headers",
    "username",
    "password",
    "password_file",
    "password_env",
    "ca_file",
    "verify",
    "timeout",
    "connect_timeout",
    "batch",
    "max_age",
    "sign_secret",
)
FORWARD_FORMATS = ("xsoar", "incident", "raw")
# Headers a forward's requests carry of gwebhook's own making: a second one
# from [[forward]] headers would make the request ambiguous.
_FORWARD_OWN_HEADERS = (
    "content-length",
    "host",
    "transfer-encoding",
    "content-type",
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
)
# Wallarm's webhook settings: "Request timeout" and "Connection timeout".
DEFAULT_FORWARD_TIMEOUT = 15
DEFAULT_FORWARD_CONNECT_TIMEOUT = 20
DEFAULT_MAX_AGE = 86400
MAX_BATCH_SIZE = 1000


@dataclass(frozen=True)
class ForwardConfig:
    """
    One ``[[forward]]``: where each stored incident of ``instances`` (None:
    every instance) is delivered, and how.  ``trust`` is ``ca_file``'s
    certificates (None: the system's CAs); ``password`` and ``sign_key``
    (the decoded ``whsec_`` key) stay out of repr.
    """

    name: str
    url: str
    instances: tuple[str, ...] | None
    format: str
    method: str
    headers: tuple[tuple[str, str], ...]
    username: str | None
    password: str | None = field(repr=False)
    ca_file: str | None
    trust: tuple[x509.Certificate, ...] | None = field(repr=False)
    verify: bool
    timeout: float
    connect_timeout: float
    batch: int
    max_age: int
    sign_key: bytes | None = field(repr=False)

    def takes(self, instance: str) -> bool:
        """Whether incidents of ``instance`` are forwarded here."""
        return self.instances is None or instance in self.instances


class OutwardReader(Reader):
    """Reads ``[[forward]]``, ``[api]`` and the store's keys."""

    def check_forwarded_instances(
        self, forwards: tuple[ForwardConfig, ...], instances: list[InstanceConfig]
    ) -> None:
        """Refuse a forward of an instance nobody declared (a typo forwards nothing)."""
        known = {i.name for i in instances} | {DEFAULT_INSTANCE}
        for forward in forwards:
            for name in forward.instances or ():
                if name not in known:
                    raise self.error(
                        f"forward '{forward.name}'",
                        "instances",
                        f"{name!r} is no instance of this file (nor default); "
                        "name declared instances, or leave instances out",
                    )

    def forwards(self, document: dict[str, Any]) -> tuple[ForwardConfig, ...]:
        tables = document.get("forward", [])
        if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
            raise self.error(
                None,
                "forward",
                f"must be [[forward]] tables, got {_kind(tables)}; write each as "
                '[[forward]] with name = "..." and url = "..." below it',
            )
        names: set[str] = set()
        return tuple(
            self._forward(table, number, names)
            for number, table in enumerate(tables, start=1)
        )

    def _forward(
        self, table: dict[str, Any], number: int, names: set[str]
    ) -> ForwardConfig:
        name = table.get("name")
        usable = isinstance(name, str) and INSTANCE_NAME.fullmatch(name)
        where = f"forward '{name}'" if usable else f"forward #{number}"
        for key in table:
            if key not in _FORWARD_KEYS:
                raise self.error(
                    where,
                    key,
                    f"unknown key; [[forward]] takes {', '.join(_FORWARD_KEYS)}",
                )
        if not usable:
            raise self.error(
                where,
                "name",
                "required: 1 to 64 letters, digits, '_', '.' or '-'"
                if name is None
                else f"{name!r} is not a valid name; use 1 to 64 letters, digits, "
                "'_', '.' or '-'",
            )
        assert isinstance(name, str)
        if name in names:
            raise self.error(
                where, "name", "another [[forward]] has this name; give each its own"
            )
        names.add(name)
        url = self._optional(where, table, "url", str, "a string")
        if url is None:
            raise self.error(
                where, "url", "required; give the receiver's http:// or https:// URL"
            )
        try:
            url = check_url(url)
        except ValueError as e:
            raise self.error(where, "url", str(e)) from None
        instances = self._optional(
            where, table, "instances", list, "an array of instance names"
        )
        if instances is not None:
            if not instances or not all(
                isinstance(i, str) and INSTANCE_NAME.fullmatch(i) for i in instances
            ):
                raise self.error(
                    where,
                    "instances",
                    "must be a non-empty array of instance names; leave it out to "
                    "forward every instance's incidents",
                )
            instances = tuple(instances)
        kind = self._optional(where, table, "format", str, "a string") or "xsoar"
        if kind not in FORWARD_FORMATS:
            raise self.error(
                where,
                "format",
                f"{kind!r} is not a format; give one of {', '.join(FORWARD_FORMATS)}",
            )
        method = self._optional(where, table, "method", str, "a string") or "POST"
        if method.upper() not in ("POST", "PUT"):
            raise self.error(where, "method", f"{method!r}: give POST or PUT")
        headers = self._forward_headers(where, table)
        username = self._optional(where, table, "username", str, "a string")
        password = None
        if any(k in table for k in _PASSWORD_SOURCES):
            if username is None:
                raise self.error(
                    where, "username", "required with a password (HTTP Basic)"
                )
            password = self._password(where, table, None)
        elif username is not None:
            raise self.error(
                where, None, "username without a password; give password_file"
            )
        if username is not None and ":" in username:
            raise self.error(where, "username", "cannot contain ':' (HTTP Basic)")
        verify = self._optional(where, table, "verify", bool, "a boolean")
        verify = True if verify is None else verify
        ca_file = self._optional(where, table, "ca_file", str, "a string (a path)")
        trust = None
        if ca_file is not None:
            if not verify:
                raise self.error(
                    where,
                    "ca_file",
                    "verify = false checks no certificate; drop one of the two",
                )
            ca_file = self._readable(
                where, "ca_file", ca_file, "give the PEM file of the receiver's CA"
            )
            trust = self._ca_certificates(
                where,
                ca_file,
                "ca_file",
                "give the PEM file of the CA (or the self-signed certificate) "
                "the receiver's certificate chains to",
                require_ca=False,
            )
        timeout = self._seconds(where, table, "timeout", DEFAULT_FORWARD_TIMEOUT)
        connect_timeout = self._seconds(
            where, table, "connect_timeout", DEFAULT_FORWARD_CONNECT_TIMEOUT
        )
        batch = self._optional(where, table, "batch", int, "an integer")
        if batch is None:
            batch = 1
        elif not 1 <= batch <= MAX_BATCH_SIZE:
            raise self.error(
                where, "batch", f"{batch}: give 1 to {MAX_BATCH_SIZE} incidents"
            )
        max_age = self._optional(where, table, "max_age", int, "an integer (seconds)")
        if max_age is None:
            max_age = DEFAULT_MAX_AGE
        elif max_age <= 0:
            raise self.error(
                where,
                "max_age",
                f"{max_age} would give up every incident; give seconds (default "
                f"{DEFAULT_MAX_AGE})",
            )
        sign_secret = self._optional(where, table, "sign_secret", str, "a string")
        sign_key = None
        if sign_secret is not None:
            sign_key = self._standard_key(where, "sign_secret", sign_secret, "it")
        return ForwardConfig(
            name=name,
            url=url,
            instances=instances,
            format=kind,
            method=method.upper(),
            headers=headers,
            username=username,
            password=password,
            ca_file=ca_file,
            trust=trust,
            verify=verify,
            timeout=timeout,
            connect_timeout=connect_timeout,
            batch=batch,
            max_age=max_age,
            sign_key=sign_key,
        )

    def _forward_headers(
        self, where: str, table: dict[str, Any]
    ) -> tuple[tuple[str, str], ...]:
        headers = self._optional(where, table, "headers", dict, "a table")
        if headers is None:
            return ()
        checked = []
        for name, value in headers.items():
            if not is_token(name):
                raise self.error(where, f"headers.{name}", "is not a header name")
            if name.lower() in _FORWARD_OWN_HEADERS or (
                name.lower() == "authorization" and "username" in table
            ):
                raise self.error(
                    where, f"headers.{name}", "is gwebhook's to send; remove it"
                )
            if not isinstance(value, str) or not _sendable_header_value(value):
                raise self.error(
                    where,
                    f"headers.{name}",
                    "must be printable ASCII without leading or trailing spaces",
                )
            checked.append((name, value))
        return tuple(checked)

    def _seconds(
        self, where: str, table: dict[str, Any], key: str, default: float
    ) -> float:
        value = table.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.error(
                where, key, f"must be a number of seconds, got {_kind(value)}"
            )
        if not 0 < value <= 3600:
            raise self.error(
                where, key, f"{value}: give seconds from more than 0 to 3600"
            )
        return float(value)

    def api(self, document: dict[str, Any]) -> str | None:
        """``[api] tokens_file``, checked readable; None without ``[api]``."""
        if "api" not in document:
            return None
        table = document["api"]
        if not isinstance(table, dict):
            raise self.error(
                None, "api", f"must be a table ([api]), got {_kind(table)}"
            )
        for key in table:
            if key not in _API_KEYS:
                raise self.error(
                    None, f"api.{key}", "unknown key; [api] takes tokens_file"
                )
        path = self._optional(
            None, table, "tokens_file", str, "a string (a path)", "api"
        )
        if path is None:
            raise self.error(
                None,
                "api.tokens_file",
                "required; give the file of the read API's tokens, one per line",
            )
        return self._readable(
            None,
            "api.tokens_file",
            path,
            "give a file the daemon can read, one API token per line",
        )

    def database(self, document: dict[str, Any]) -> tuple[str | None, str | None]:
        """The top-level ``db`` and ``db_password_file``, checked."""
        db = self._optional(None, document, "db", str, "a string")
        if db is not None and not db.strip():
            raise self.error(
                None,
                "db",
                "must not be empty; give a SQLite file or postgresql://USER@HOST/DB",
            )
        if db is not None and not is_postgres(db):
            db = self._path(None, "db", db)
        password_file = self._optional(
            None, document, "db_password_file", str, "a string (a path)"
        )
        if password_file is not None:
            password_file = self._readable(
                None,
                "db_password_file",
                password_file,
                "give a file the daemon can read, holding just the database password",
            )
        return db, password_file
