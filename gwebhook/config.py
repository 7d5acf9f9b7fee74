"""
``--config FILE``: the instances a TOML file declares, each with its own
credentials, client CA, signature secrets, port and mapping, checked whole
when the file is read.

Every refusal is a ConfigError whose message is one line: the file, the
instance (by name, or ``#N`` counting ``[[instance]]`` tables from 1 while it
has no usable name), the key as TOML writes it, what is wrong and the fix.
Reading stops at the first problem, in file order.
"""

from __future__ import annotations

import collections.abc
import os
import re
import tomllib
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509

from gwebhook.credentials import HEADER_PREFIX, Credentials
from gwebhook.database import is_postgres
from gwebhook.dedup import DEFAULT_WINDOW, SCHEME_HEADERS, DedupConfig
from gwebhook.headers import is_printable_ascii, is_token
from gwebhook.mapping import (
    MAP_KEYS,
    Mapping,
    MappingError,
    compile_mapping,
    dotted,
)
from gwebhook.signatures import (
    ALGORITHMS,
    DEFAULT_TOLERANCE,
    ENCODINGS,
    SCHEMES,
    STANDARD_KEY_PREFIX,
    TIMESTAMPED,
    SignatureConfig,
    standard_key,
)
from gwebhook.urls import check_url

INSTANCE_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")

# The instance the command-line options describe, which ``/`` and unknown
# names reach.  A file instance of that name would be a second "default"
# that paths, metrics and ``--instance default`` could not tell apart from
# the first, so the name is the command line's alone.
DEFAULT_INSTANCE = "default"

_TOP_KEYS = ("instance", "db", "db_password_file", "api", "forward")
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
_INSTANCE_KEYS = (
    "name",
    "incident_type",
    "store_samples",
    "port",
    "cert",
    "key",
    "anonymous",
    "auth",
    "mtls",
    "signature",
    "dedup",
    "map",
    "fields",
)
_AUTH_KEYS = ("username", "password", "password_file", "password_env")
_PASSWORD_SOURCES = ("password", "password_file", "password_env")
_MTLS_KEYS = ("client_ca", "client_names")
_SIGNATURE_KEYS = (
    "scheme",
    "secrets",
    "secrets_file",
    "secrets_env",
    "tolerance",
    "header",
    "algorithm",
    "encoding",
    "prefix",
)
_SECRET_SOURCES = ("secrets", "secrets_file", "secrets_env")
_DEDUP_KEYS = ("keys", "header", "window")
_HMAC_KEYS = ("header", "algorithm", "encoding", "prefix")
# Who may send, as the sections a file writes them.
_DOORS = ("auth", "mtls", "signature")

# Keys of features this version does not have yet.  Refused with their own
# message: "unknown key" would send the operator looking for a typo.
_TOP_LATER: tuple[str, ...] = ()
_INSTANCE_LATER: tuple[str, ...] = ()

_CA_FIX = "give the PEM file of the CA that issues the senders' certificates"


class ConfigError(Exception):
    """A config file that cannot be used; the message is one line."""


@dataclass(frozen=True)
class MTLSConfig:
    """
    Who may send by client certificate: one chaining to ``client_ca``
    (absolute path) and, when ``client_names`` is not empty, whose subject CN
    or a SAN DNS name is in it.  ``ca_certificates`` are the file's
    certificates as read at load; they take part in equality, so a CA file
    whose content changed makes a changed instance on a re-read.
    """

    client_ca: str
    client_names: tuple[str, ...]
    ca_certificates: tuple[x509.Certificate, ...] = field(repr=False)


@dataclass(frozen=True)
class InstanceConfig:
    """
    One ``[[instance]]``.  ``incident_type`` None means the command line's
    (else ``Unclassified``); ``port`` None means the main listener only;
    ``cert`` and ``key`` (absolute paths, only with ``port``) None mean the
    main certificate; ``mapping`` None means incidents are read as the
    element says; ``signature`` None means no signature is checked.
    """

    name: str
    incident_type: str | None
    store_samples: bool
    port: int | None
    cert: str | None
    key: str | None
    anonymous: bool
    # Kept out of repr: it holds the secret, and configs end up in logs.
    credentials: Credentials | None = field(repr=False)
    mtls: MTLSConfig | None
    mapping: Mapping | None
    # Last, with defaults: instances built before signatures and duplicates
    # existed (the command line's among them) keep being built as they were.
    signature: SignatureConfig | None = None
    dedup: DedupConfig | None = None


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


@dataclass(frozen=True)
class Config:
    """A config file's instances, in file order."""

    path: str
    instances: tuple[InstanceConfig, ...]
    # The store (a SQLite path or a PostgreSQL URI) and the file holding the
    # database's password (absolute), when the file names them; --db and
    # --db-password-file win over them.
    db: str | None = None
    db_password_file: str | None = None
    # [api] tokens_file (absolute): the read API's tokens, unless
    # --api-token-file or GWEBHOOK_API_TOKENS gives them.
    api_tokens_file: str | None = None
    forwards: tuple[ForwardConfig, ...] = ()


def load_config(path: str, environ: collections.abc.Mapping[str, str]) -> Config:
    """
    Read and check a config file.  Secrets named by ``password_env`` come
    from ``environ``; relative paths are relative to the file's directory.
    Raises ConfigError.
    """
    return parse_config(_document(path), path, environ)


def read_database(path: str) -> tuple[str | None, str | None]:
    """
    Only the store a config file names (``db``, ``db_password_file``), for
    the ``gwebhook`` commands: its instances are the daemon's business.
    Raises ConfigError.
    """
    document = _document(path)
    reader = _Reader(path, {})
    reader.check_keys(None, document, None, _TOP_KEYS, _TOP_LATER)
    return reader.database(document)


def _document(path: str) -> dict[str, Any]:
    """The TOML document in ``path``; ConfigError if it cannot be had."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ConfigError(
            f"{path}: cannot read: {e.strerror}; give a TOML file the daemon can read"
        ) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(
            f"{path}: not UTF-8 (byte {e.start}); save the file as UTF-8"
        ) from None
    try:
        # Editors on Windows may start the file with a BOM; TOML does not.
        return tomllib.loads(text.removeprefix("\ufeff"))
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(
            f"{path}: not valid TOML: {e}; fix the syntax there"
        ) from None


def parse_config(
    document: dict[str, Any], path: str, environ: collections.abc.Mapping[str, str]
) -> Config:
    """
    Check a parsed config document (what ``tomllib`` gives).  ``path`` names
    the file in messages and anchors relative paths.  Raises ConfigError.
    """
    reader = _Reader(path, environ)
    reader.check_keys(None, document, None, _TOP_KEYS, _TOP_LATER)
    tables = document.get("instance", [])
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise reader.error(
            None,
            "instance",
            f"must be [[instance]] tables, got {_kind(tables)}; "
            'write each instance as [[instance]] with name = "..." below it',
        )
    api_tokens_file = reader.api(document)
    forwards = reader.forwards(document)
    if not tables and api_tokens_file is None and not forwards:
        raise reader.error(
            None,
            None,
            "declares no instance; add an [[instance]] with a name and who may "
            "send to it",
        )
    names: dict[str, int] = {}
    ports: dict[int, str] = {}
    instances = [
        reader.instance(table, number, names, ports)
        for number, table in enumerate(tables, start=1)
    ]
    reader.check_forwarded_instances(forwards, instances)
    db, db_password_file = reader.database(document)
    return Config(
        path, tuple(instances), db, db_password_file, api_tokens_file, forwards
    )


class _Reader:
    """The checks, with what every message needs: the file and its directory."""

    def __init__(self, path: str, environ: collections.abc.Mapping[str, str]):
        self.path = path
        self.environ = environ
        self.base = os.path.dirname(os.path.abspath(path))

    def error(self, where: str | None, key: str | None, problem: str) -> ConfigError:
        parts = [self.path, where, key, problem]
        return ConfigError(": ".join(p for p in parts if p))

    # -- [[forward]] ---------------------------------------------------------

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

    def instance(
        self,
        table: dict[str, Any],
        number: int,
        names: dict[str, int],
        ports: dict[int, str],
    ) -> InstanceConfig:
        name = table.get("name")
        usable = isinstance(name, str) and INSTANCE_NAME.fullmatch(name)
        where = f"instance '{name}'" if usable else f"instance #{number}"
        self.check_keys(where, table, None, _INSTANCE_KEYS, _INSTANCE_LATER)
        self._name(where, name, number, names)
        assert isinstance(name, str)  # _name refused anything else

        incident_type = self._optional(where, table, "incident_type", str, "a string")
        if incident_type is not None and not incident_type.strip():
            raise self.error(
                where,
                "incident_type",
                "must not be empty; leave it out to use the default type",
            )
        store_samples = self._optional(where, table, "store_samples", bool, "a boolean")
        anonymous = self._optional(where, table, "anonymous", bool, "a boolean")
        port = self._port(where, table, ports)
        cert, key = self._own_certificate(where, table, port)

        self._who_may_send(where, table, anonymous)
        credentials = None
        if "auth" in table:
            credentials = self._auth(where, self._table(where, table, "auth"))
        mtls = None
        if "mtls" in table:
            mtls = self._mtls(where, self._table(where, table, "mtls"))
        signature = None
        if "signature" in table:
            signature = self._signature(where, self._table(where, table, "signature"))
        dedup = None
        if "dedup" in table:
            dedup = self._dedup(where, self._table(where, table, "dedup"), signature)
        mapping = self._mapping(where, table)

        if port is not None:
            ports[port] = where
        return InstanceConfig(
            name=name,
            incident_type=incident_type,
            store_samples=bool(store_samples),
            port=port,
            cert=cert,
            key=key,
            anonymous=bool(anonymous),
            credentials=credentials,
            mtls=mtls,
            mapping=mapping,
            signature=signature,
            dedup=dedup,
        )

    # -- the instance's own keys ---------------------------------------------

    def _name(self, where: str, name: Any, number: int, names: dict[str, int]) -> None:
        fix = "use 1 to 64 letters, digits, '_', '.' or '-'"
        if name is None:
            raise self.error(
                where, "name", f'required; give the instance a name = "..." ({fix})'
            )
        if not isinstance(name, str):
            raise self.error(where, "name", f"must be a string, got {_kind(name)}")
        if not INSTANCE_NAME.fullmatch(name):
            raise self.error(where, "name", f"{name!r} is not a valid name; {fix}")
        if name == DEFAULT_INSTANCE:
            raise self.error(
                where,
                "name",
                f"'{DEFAULT_INSTANCE}' is the instance the command line describes; "
                "choose another name",
            )
        if name in names:
            raise self.error(
                where,
                "name",
                f"instance #{names[name]} has this name too; "
                "give each instance its own name",
            )
        names[name] = number

    def _port(
        self, where: str, table: dict[str, Any], ports: dict[int, str]
    ) -> int | None:
        port = self._optional(where, table, "port", int, "an integer")
        if port is None:
            return None
        # 0 would be a port the kernel picks, which no sender could be told.
        if not 1 <= port <= 65535:
            raise self.error(
                where, "port", f"{port} is out of range; give a port from 1 to 65535"
            )
        if port in ports:
            raise self.error(
                where,
                "port",
                f"{port} is already the port of {ports[port]}; "
                "give each instance its own port",
            )
        return port

    def _own_certificate(
        self, where: str, table: dict[str, Any], port: int | None
    ) -> tuple[str | None, str | None]:
        cert = self._optional(where, table, "cert", str, "a string (a path)")
        key = self._optional(where, table, "key", str, "a string (a path)")
        if cert is None and key is None:
            return None, None
        if cert is None or key is None:
            given, missing = ("cert", "key") if key is None else ("key", "cert")
            raise self.error(
                where,
                given,
                f"given without {missing}; give both cert and key, or neither "
                "to serve the main certificate",
            )
        if port is None:
            raise self.error(
                where,
                "cert",
                "needs port: an instance's own certificate is served on its own "
                "port only; add port = N, or drop cert and key",
            )
        # Only whether they can be read: the TLS code loads and pairs them.
        cert = self._readable(
            where, "cert", cert, "give the PEM file of this instance's certificate"
        )
        key = self._readable(
            where, "key", key, "give the PEM file of the certificate's private key"
        )
        return cert, key

    def _who_may_send(
        self, where: str, table: dict[str, Any], anonymous: bool | None
    ) -> None:
        doors = [k for k in _DOORS if k in table]
        if anonymous and doors:
            # When an instance has several ways in, all must pass; next to a
            # credential "anonymous" would change nothing, so it can only be
            # a misunderstanding of what the file says.
            sections = _and([f"[instance.{k}]" for k in doors])
            raise self.error(
                where,
                "anonymous",
                f"true contradicts {sections}; drop anonymous to require them, "
                f"or drop {sections} to accept anyone",
            )
        if not anonymous and not doors:
            raise self.error(
                where,
                None,
                "nobody could send to it; add [instance.auth], [instance.mtls] "
                "or [instance.signature], or anonymous = true to accept anyone",
            )

    # -- [instance.auth] ------------------------------------------------------

    def _auth(self, where: str, table: dict[str, Any]) -> Credentials:
        self.check_keys(where, table, "auth", _AUTH_KEYS)
        username = self._optional(where, table, "username", str, "a string", "auth")
        if username is None:
            raise self.error(
                where,
                "auth.username",
                "required; give the Basic user name, or _header:NAME to take the "
                "password from header NAME",
            )
        header_mode = username.startswith(HEADER_PREFIX)
        if header_mode:
            if not is_token(username[len(HEADER_PREFIX) :].strip()):
                raise self.error(
                    where,
                    "auth.username",
                    f"{username!r} needs a header name after {HEADER_PREFIX!r} "
                    "(letters, digits and !#$%&'*+-.^_`|~), e.g. _header:Authorization",
                )
        elif not username:
            raise self.error(
                where,
                "auth.username",
                "must not be empty; give the Basic user name, or _header:NAME",
            )
        elif ":" in username:
            raise self.error(
                where, "auth.username", "cannot contain ':' (HTTP Basic forbids it)"
            )
        password = self._password(where, table)
        if header_mode and not _sendable_header_value(password):
            # Header values are printable ASCII (anything else is refused
            # with 400) and arrive with surrounding spaces and tabs removed:
            # a secret outside that could never match.
            raise self.error(
                where,
                "auth",
                "the password of a _header: credential must be printable ASCII "
                "without leading or trailing spaces, or no request could carry it",
            )
        return Credentials.from_options(username, password)

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

    # -- [instance.mtls] ------------------------------------------------------

    def _mtls(self, where: str, table: dict[str, Any]) -> MTLSConfig:
        self.check_keys(where, table, "mtls", _MTLS_KEYS)
        client_ca = self._optional(
            where, table, "client_ca", str, "a string (a path)", "mtls"
        )
        if client_ca is None:
            raise self.error(where, "mtls.client_ca", f"required; {_CA_FIX}")
        names = table.get("client_names", [])
        if not isinstance(names, list):
            raise self.error(
                where,
                "mtls.client_names",
                f"must be an array of strings, got {_kind(names)}",
            )
        for number, name in enumerate(names, start=1):
            if not isinstance(name, str) or not name:
                raise self.error(
                    where,
                    "mtls.client_names",
                    f"entry {number} must be a non-empty string, got {_kind(name)}",
                )
        if "client_names" in table and not names:
            raise self.error(
                where,
                "mtls.client_names",
                "an empty list would refuse every client; leave it out to accept "
                "any certificate the CA issued",
            )
        path = self._path(where, "mtls.client_ca", client_ca)
        return MTLSConfig(path, tuple(names), self._ca_certificates(where, path))

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

    # -- [instance.signature] -------------------------------------------------

    def _signature(self, where: str, table: dict[str, Any]) -> SignatureConfig:
        self.check_keys(where, table, "signature", _SIGNATURE_KEYS)
        schemes = ", ".join(SCHEMES)
        scheme = self._optional(where, table, "scheme", str, "a string", "signature")
        if scheme is None:
            raise self.error(
                where, "signature.scheme", f"required; give one of {schemes}"
            )
        if scheme not in SCHEMES:
            raise self.error(
                where,
                "signature.scheme",
                f"{scheme!r} is not a scheme gwebhook checks; give one of {schemes}, "
                'or "hmac" with the header, algorithm and encoding the sender uses',
            )
        if scheme != "hmac":
            for key in _HMAC_KEYS:
                if key in table:
                    raise self.error(
                        where,
                        f"signature.{key}",
                        f'only scheme = "hmac" takes it; {scheme} always signs the '
                        "same way, so remove it",
                    )
        tolerance = self._tolerance(where, table, scheme)
        options: dict[str, Any] = {}
        if scheme == "hmac":
            options = self._hmac(where, table)
        key, secrets = self._secrets(where, table)
        if scheme == "standard":
            keys = tuple(self._standard_key(where, key, s, n) for s, n in secrets)
        else:
            # The HMAC key is the secret as written, byte for byte.
            keys = tuple(s.encode("utf-8") for s, _ in secrets)
        return SignatureConfig(scheme, keys, tolerance, **options)

    def _tolerance(self, where: str, table: dict[str, Any], scheme: str) -> int:
        key = "signature.tolerance"
        if scheme not in TIMESTAMPED:
            if "tolerance" in table:
                # Accepting it would promise a protection against replays
                # that a signature without a timestamp cannot give.
                raise self.error(
                    where,
                    key,
                    f"{scheme} signs no timestamp, so there is nothing to hold to a "
                    "tolerance; remove it",
                )
            return DEFAULT_TOLERANCE
        tolerance = self._optional(
            where, table, "tolerance", int, "an integer (seconds)", "signature"
        )
        if tolerance is None:
            return DEFAULT_TOLERANCE
        if tolerance <= 0:
            raise self.error(
                where,
                key,
                f"{tolerance} would refuse every request; give the seconds a signed "
                f"timestamp may be from now (default {DEFAULT_TOLERANCE})",
            )
        return tolerance

    def _hmac(self, where: str, table: dict[str, Any]) -> dict[str, Any]:
        header = self._optional(where, table, "header", str, "a string", "signature")
        if header is None:
            raise self.error(
                where,
                "signature.header",
                'required for scheme = "hmac"; give the header the sender puts '
                "its signature in, e.g. X-Shopify-Hmac-Sha256",
            )
        if not is_token(header):
            raise self.error(
                where,
                "signature.header",
                f"{header!r} is not a header name; use letters, digits and "
                "!#$%&'*+-.^_`|~",
            )
        options: dict[str, Any] = {"header": header}
        for key, choices in (("algorithm", ALGORITHMS), ("encoding", ENCODINGS)):
            value = self._optional(where, table, key, str, "a string", "signature")
            if value is None:
                continue
            if value not in choices:
                raise self.error(
                    where,
                    f"signature.{key}",
                    f"{value!r} is not one gwebhook knows; give one of "
                    f"{', '.join(choices)}",
                )
            options[key] = value
        prefix = self._optional(where, table, "prefix", str, "a string", "signature")
        if prefix:
            # The signature arrives in a header value: printable ASCII with
            # the spaces before it removed.
            printable = prefix.isascii() and is_printable_ascii(prefix.encode())
            if not printable or prefix[0] in " \t":
                raise self.error(
                    where,
                    "signature.prefix",
                    "must be printable ASCII without leading spaces, or no "
                    "request could carry it",
                )
            options["prefix"] = prefix
        return options

    def _secrets(
        self, where: str, table: dict[str, Any]
    ) -> tuple[str, list[tuple[str, str]]]:
        """
        The key the secrets come from, and each secret with how a message
        names it (never by its value).
        """
        sources = [k for k in _SECRET_SOURCES if k in table]
        if not sources:
            raise self.error(
                where,
                "signature",
                "no secrets; give one of secrets_file, secrets_env or secrets",
            )
        if len(sources) > 1:
            raise self.error(
                where,
                "signature",
                f"{sources[0]} and {sources[1]} both given; give exactly one of "
                "secrets, secrets_file, secrets_env",
            )
        [source] = sources
        key = f"signature.{source}"
        if source == "secrets":
            values = table["secrets"]
            if not isinstance(values, list):
                raise self.error(
                    where, key, f"must be an array of strings, got {_kind(values)}"
                )
            for number, value in enumerate(values, start=1):
                if not isinstance(value, str):
                    raise self.error(
                        where,
                        key,
                        f"entry {number} must be a string, got {_kind(value)}",
                    )
            found = [(v, f"entry {n}") for n, v in enumerate(values, start=1)]
            nothing = "an empty list would refuse every request; give the secrets"
        elif source == "secrets_env":
            name = self._optional(where, table, source, str, "a string", "signature")
            if not name:
                raise self.error(
                    where, key, "must name an environment variable; give its name"
                )
            text = self.environ.get(name)
            if text is None:
                raise self.error(
                    where,
                    key,
                    f"environment variable ${name} is not set; set it in the "
                    "daemon's environment, or use secrets_file",
                )
            # Whitespace separates secrets here, so none holds any.
            found = [
                (v, f"secret {n} of ${name}")
                for n, v in enumerate(text.split(), start=1)
            ]
            nothing = (
                f"environment variable ${name} holds no secret; set it to one or "
                "more secrets separated by spaces"
            )
        else:
            value = self._optional(
                where, table, source, str, "a string (a path)", "signature"
            )
            path = self._path(where, key, value)
            found = [
                (line, f"line {n} of {path}")
                for n, line in enumerate(self._text(where, key, path), start=1)
                if line.strip()
            ]
            nothing = f"{path} holds no secret; write one secret per line"
        if not found:
            raise self.error(where, key, nothing)
        for secret, named in found:
            if not secret:
                raise self.error(where, key, f"{named} is empty; give the secret")
            if secret != secret.strip():
                # A space copied along with a secret would make every
                # signature wrong, with nothing to show why.
                raise self.error(
                    where,
                    key,
                    f"{named} starts or ends with whitespace; remove it",
                )
        return key, found

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

    # -- [instance.map] and [instance.fields] ---------------------------------

    def _mapping(self, where: str, table: dict[str, Any]) -> Mapping | None:
        expressions: dict[str, dict[str, str]] = {}
        for section, allowed in (("map", MAP_KEYS), ("fields", None)):
            if section not in table:
                expressions[section] = {}
                continue
            entries = self._table(where, table, section)
            if allowed is not None:
                self.check_keys(where, entries, section, allowed)
            for key, value in entries.items():
                if not isinstance(value, str):
                    raise self.error(
                        where,
                        dotted(section, key),
                        f"must be a string (a JMESPath expression), got {_kind(value)}",
                    )
            expressions[section] = entries
        if not expressions["map"] and not expressions["fields"]:
            return None
        try:
            return compile_mapping(expressions["map"], expressions["fields"])
        except MappingError as e:
            raise self.error(where, e.key, e.message) from None

    # -- [instance.dedup] -----------------------------------------------------

    def _dedup(
        self,
        where: str,
        table: dict[str, Any],
        signature: SignatureConfig | None,
    ) -> DedupConfig:
        self.check_keys(where, table, "dedup", _DEDUP_KEYS)
        keys = self._optional(
            where, table, "keys", list, "an array of strings", "dedup"
        )
        if keys is not None:
            if not keys or not all(isinstance(k, str) and k for k in keys):
                raise self.error(
                    where,
                    "dedup.keys",
                    "must be a non-empty array of non-empty strings: the fields "
                    'of each element\'s details that identify it, e.g. ["alertId"]',
                )
            repeated = sorted({k for k in keys if keys.count(k) > 1})
            if repeated:
                raise self.error(
                    where,
                    "dedup.keys",
                    f"names {_and([repr(k) for k in repeated])} more than once; "
                    "name each field once",
                )
        header = self._optional(where, table, "header", str, "a string", "dedup")
        if header is not None and not is_token(header):
            raise self.error(
                where,
                "dedup.header",
                f"{header!r} is not a header name; give the name of the header "
                "that carries the sender's delivery id, e.g. webhook-id",
            )
        if header is None and signature is not None:
            header = SCHEME_HEADERS.get(signature.scheme)
        if keys is None and header is None:
            raise self.error(
                where,
                "dedup",
                "has nothing to recognise a duplicate by; give keys (fields of "
                "each element) or header (the sender's delivery id header)",
            )
        window = self._optional(
            where, table, "window", int, "an integer (seconds)", "dedup"
        )
        if window is None:
            window = DEFAULT_WINDOW
        elif window <= 0:
            raise self.error(
                where,
                "dedup.window",
                f"{window} would remember nothing; give the seconds a key is "
                f"remembered (default {DEFAULT_WINDOW}, 7 days)",
            )
        return DedupConfig(tuple(keys or ()), header, window)

    # -- helpers -------------------------------------------------------------

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
