"""
An ``[[instance]]`` of the config file: its name, port and certificate, who
may send (``auth``, ``mtls``, ``signature``), duplicates and mapping.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cryptography import x509

from gwebhook.config.reader import (
    _CA_FIX,
    DEFAULT_INSTANCE,
    INSTANCE_NAME,
    Reader,
    _and,
    _kind,
    _sendable_header_value,
)
from gwebhook.credentials import HEADER_PREFIX, Credentials
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
    TIMESTAMPED,
    SignatureConfig,
)

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


class InstanceReader(Reader):
    """Reads one ``[[instance]]`` table."""

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
