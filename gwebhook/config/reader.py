"""
What every part of the config file's reader shares: the one-line
ConfigError, and the checks of single values (a key's type, a path, a file
to read, a password's sources, a CA file, a ``whsec_`` key) with the file
and its directory every message names.
"""

from __future__ import annotations

import collections.abc
import os
import re
from typing import Any

from cryptography import x509

from gwebhook.headers import is_printable_ascii
from gwebhook.mapping import (
    dotted,
)
from gwebhook.signatures import (
    STANDARD_KEY_PREFIX,
    standard_key,
)

INSTANCE_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")

# The instance the command-line options describe, which ``/`` and unknown
# names reach.  A file instance of that name would be a second "default"
# that paths, metrics and ``--instance default`` could not tell apart from
# the first, so the name is the command line's alone.
DEFAULT_INSTANCE = "default"

_PASSWORD_SOURCES = ("password", "password_file", "password_env")
_CA_FIX = "give the PEM file of the CA that issues the senders' certificates"


class ConfigError(Exception):
    """A config file that cannot be used; the message is one line."""


class Reader:
    """The checks, with what every message needs: the file and its directory."""

    def __init__(self, path: str, environ: collections.abc.Mapping[str, str]):
        self.path = path
        self.environ = environ
        self.base = os.path.dirname(os.path.abspath(path))

    def error(self, where: str | None, key: str | None, problem: str) -> ConfigError:
        parts = [self.path, where, key, problem]
        return ConfigError(": ".join(p for p in parts if p))

    def check_keys(
        self,
        where: str | None,
        table: dict[str, Any],
        section: str | None,
        allowed: tuple[str, ...],
        later: tuple[str, ...] = (),
    ) -> None:
        """Refuse the first key of ``table`` not in ``allowed``."""
        prefix = () if section is None else (section,)
        for key in table:
            if key in later:
                raise self.error(
                    where,
                    dotted(*prefix, key),
                    "not supported by this version of gwebhook; remove it",
                )
            if key not in allowed:
                if where is None:
                    takes = (
                        "the file takes [[instance]] tables, [api], [[forward]] "
                        "tables, db and db_password_file"
                    )
                else:
                    scope = (
                        "[[instance]]" if section is None else f"[instance.{section}]"
                    )
                    takes = f"{scope} takes {', '.join(allowed)}"
                raise self.error(where, dotted(*prefix, key), f"unknown key; {takes}")

    def _optional(
        self,
        where: str | None,
        table: dict[str, Any],
        key: str,
        kind: type,
        described: str,
        section: str | None = None,
    ) -> Any:
        """``table[key]`` if present, checked to be of ``kind``; else None."""
        if key not in table:
            return None
        value = table[key]
        # TOML booleans are Python ints: never let true pass as a port.
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            name = dotted(section, key) if section else key
            raise self.error(where, name, f"must be {described}, got {_kind(value)}")
        return value

    def _table(self, where: str, table: dict[str, Any], key: str) -> dict[str, Any]:
        value = table[key]
        if not isinstance(value, dict):
            raise self.error(
                where,
                key,
                f"must be a table ([instance.{key}]), got {_kind(value)}",
            )
        return value

    def _path(self, where: str | None, key: str, value: str) -> str:
        if not value:
            raise self.error(where, key, "must not be empty; give a path")
        # join keeps an absolute value as it is.
        return os.path.normpath(os.path.join(self.base, value))

    def _readable(self, where: str | None, key: str, value: str, fix: str) -> str:
        path = self._path(where, key, value)
        try:
            with open(path, "rb"):
                pass
        except OSError as e:
            raise self.error(
                where, key, f"cannot read {path}: {e.strerror}; {fix}"
            ) from None
        return path

    def _read(self, where: str, key: str, path: str, fix: str) -> str:
        """A secret file's text, or the refusal naming ``key`` and ``fix``."""
        try:
            with open(path, encoding="utf-8") as f:
                return f.read()
        except OSError as e:
            raise self.error(
                where, key, f"cannot read {path}: {e.strerror}; {fix}"
            ) from None
        except UnicodeDecodeError as e:
            raise self.error(
                where, key, f"{path} is not UTF-8 (byte {e.start}); {fix}"
            ) from None

    def _text(self, where: str, key: str, path: str) -> list[str]:
        fix = "give a file the daemon can read, holding one secret per line"
        text = self._read(where, key, path, fix)
        # Lines as an editor on any system ends them; a secret may hold any
        # other character, so no wider notion of a line break applies.
        return [line.removesuffix("\r") for line in text.split("\n")]

    def _password(
        self, where: str, table: dict[str, Any], section: str | None = "auth"
    ) -> str:
        sources = [k for k in _PASSWORD_SOURCES if k in table]
        if not sources:
            raise self.error(
                where,
                section,
                "no password; give one of password_file, password_env or password",
            )
        if len(sources) > 1:
            raise self.error(
                where,
                section,
                f"{sources[0]} and {sources[1]} both given; give exactly one of "
                "password, password_file, password_env",
            )
        [source] = sources
        value = self._optional(where, table, source, str, "a string", section)
        key = dotted(section, source) if section else source
        if source == "password":
            if not value:
                raise self.error(
                    where,
                    key,
                    "must not be empty; give the password, or use password_file "
                    "to keep it out of this file",
                )
            return value
        if source == "password_env":
            if not value:
                raise self.error(
                    where, key, "must name an environment variable; give its name"
                )
            secret = self.environ.get(value)
            if secret is None:
                raise self.error(
                    where,
                    key,
                    f"environment variable ${value} is not set; set it in the "
                    "daemon's environment, or use password_file",
                )
            if not secret:
                raise self.error(
                    where,
                    key,
                    f"environment variable ${value} is empty; set it to the "
                    "password, or use password_file",
                )
            return secret
        path = self._path(where, key, value)
        fix = "give a file the daemon can read, holding just the password"
        text = self._read(where, key, path, fix)
        # One trailing newline is what an editor or `echo` leaves; the same
        # rule as --password-file.
        secret = text[:-1] if text.endswith("\n") else text
        if not secret:
            raise self.error(where, key, f"{path} is empty; {fix}")
        return secret

    def _ca_certificates(
        self,
        where: str,
        path: str,
        key: str = "mtls.client_ca",
        fix: str = _CA_FIX,
        require_ca: bool = True,
    ) -> tuple[x509.Certificate, ...]:
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as e:
            raise self.error(
                where, key, f"cannot read {path}: {e.strerror}; {fix}"
            ) from None
        if b"-----BEGIN CERTIFICATE-----" not in data:
            raise self.error(where, key, f"{path} holds no PEM certificate; {fix}")
        try:
            certificates = x509.load_pem_x509_certificates(data)
        except ValueError:
            raise self.error(
                where,
                key,
                f"{path} holds a certificate that cannot be parsed; {fix}",
            ) from None
        for certificate in certificates if require_ca else ():
            try:
                constraints = certificate.extensions.get_extension_for_class(
                    x509.BasicConstraints
                ).value
                is_ca = constraints.ca
            except x509.ExtensionNotFound:
                is_ca = False
            if not is_ca:
                subject = certificate.subject.rfc4514_string() or "no subject"
                raise self.error(
                    where,
                    key,
                    f"{path} holds a certificate that is not a CA ({subject}); "
                    f"{fix}, not one it issued",
                )
        return tuple(certificates)

    def _standard_key(self, where: str, key: str, secret: str, named: str) -> bytes:
        try:
            return standard_key(secret)
        except ValueError as e:
            raise self.error(
                where,
                key,
                f"{named} is no Standard Webhooks secret ({e}); give it as the "
                f"sender shows it, {STANDARD_KEY_PREFIX} and the base64 key",
            ) from None


def _sendable_header_value(value: str) -> bool:
    return (
        value.isascii()
        and is_printable_ascii(value.encode("ascii"))
        and value == value.strip(" \t")
    )


def _and(items: list[str]) -> str:
    """``a``, ``a and b``, ``a, b and c``."""
    if len(items) == 1:
        return items[0]
    return f"{', '.join(items[:-1])} and {items[-1]}"


def _kind(value: Any) -> str:
    """A TOML value's type as a message names it, with its article."""
    if isinstance(value, bool):
        return "a boolean"
    for kind, name in (
        (str, "a string"),
        (int, "an integer"),
        (float, "a float"),
        (list, "an array"),
        (dict, "a table"),
    ):
        if isinstance(value, kind):
            return name
    # tomllib's dates and times.
    return "a date or time"
