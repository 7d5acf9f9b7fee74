"""
``twistd gwebhook``: its options (docs/reference.md 1.2) and the service
they build, wired in one place.
"""

from __future__ import annotations

import functools
import os
import socket
from collections.abc import Callable

from twisted.internet import endpoints
from twisted.logger import Logger
from twisted.python import usage

from gwebhook import affinity, systemd
from gwebhook.accesslog import AccessLog
from gwebhook.addresses import ipv6_available
from gwebhook.api import LongPolls, ReadAPI, tokens_from
from gwebhook.channel import (
    DEFAULT_BODY_TIMEOUT,
    DEFAULT_HEADER_TIMEOUT,
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_CONNECTIONS_PER_CLIENT,
    DEFAULT_MAX_HEADER_BYTES,
    ChannelLimits,
    WebhookSite,
)
from gwebhook.config import Config, ConfigError, load_config
from gwebhook.console.bodies import BODY_LIMITS
from gwebhook.console.endpoints import ConsoleEndpoints
from gwebhook.console.resource import Console
from gwebhook.console.sessions import Sessions
from gwebhook.credentials import HEADER_PREFIX, Credentials
from gwebhook.forward import Forwarder
from gwebhook.gate import Gate
from gwebhook.headers import is_token
from gwebhook.instances import Instances, command_line_instance
from gwebhook.listen import (
    Listener,
    OwnPorts,
    bound_socket,
    check_bindable,
    ensure_descriptors,
    metrics_site,
    webhook_endpoint,
)
from gwebhook.metrics import Metrics
from gwebhook.retention import RetentionService
from gwebhook.routes import WebhookRoutes
from gwebhook.schema import StoreError, create_or_upgrade
from gwebhook.service import Reconfigured, WebhookService
from gwebhook.store import (
    DEFAULT_DB,
    is_postgres,
    open_store,
    read_password_file,
)
from gwebhook.throttle import AuthThrottle
from gwebhook.tls import FailureLog, ReloadableTLS, TLSConfigError
from gwebhook.workerpool import WorkerPool

log = Logger()

PASSWORD_ENV = "GWEBHOOK_PASSWORD"  # noqa: S105 (a variable name, not a secret)


def _whole(option: str, low: int, high: int | None, what: str):
    """A coerce function for ``usage.Options`` whose error names the option."""

    def coerce(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            number = None
        if number is None or number < low or (high is not None and number > high):
            raise ValueError(f"--{option} {value} is not {what}")
        return number

    # usage.Options shows it in --help; Twisted sets it the same way.
    coerce.coerceDoc = f"{what[0].upper()}{what[1:]}."  # type: ignore[attr-defined]
    return coerce


def _seconds(option: str):
    """A coerce function for a positive duration in seconds."""

    def coerce(value: str) -> float:
        try:
            number = float(value)
        except ValueError:
            number = None
        if number is None or not 0 < number < 86400 * 365:
            raise ValueError(f"--{option} {value} is not a positive number of seconds")
        return number

    coerce.coerceDoc = "A positive number of seconds."  # type: ignore[attr-defined]
    return coerce


class Options(usage.Options):
    """Command-line options of ``twistd gwebhook``."""

    synopsis = "[options]"
    longdesc = (
        "Receive webhooks over HTTPS and store each JSON payload as an incident. "
        "Needs --cert and --key (or --no-tls), and credentials (or --allow-anonymous)."
    )

    optParameters = [
        [
            "port",
            "p",
            8443,
            "TCP port to listen on.",
            _whole("port", 0, 65535, "a TCP port (0-65535)"),
        ],
        [
            "interface",
            "i",
            None,
            "Address to bind (default: every interface, IPv6 and IPv4, where the "
            "host has IPv6, else 0.0.0.0; 0.0.0.0 for IPv4 only).",
        ],
        ["cert", "c", None, "Server certificate PEM, leaf first then intermediates."],
        ["key", "k", None, "Private key PEM of that certificate."],
        [
            "username",
            "u",
            None,
            "Basic-auth user name, or _header:NAME for a header token.",
        ],
        ["password", "w", None, "Password or header value (prefer --password-file)."],
        [
            "password-file",
            None,
            None,
            "File holding the password (one trailing newline ignored).",
        ],
        [
            "auth-header",
            None,
            None,
            "Token the Authorization header must equal (XSOAR v1).",
        ],
        [
            "incident-type",
            "t",
            None,
            "Type of incidents that name none (default Unclassified).",
        ],
        [
            "db",
            "d",
            None,
            "The incident store: a SQLite file (default gwebhook.sqlite, or "
            "db in --config), or postgresql://USER@HOST:PORT/DBNAME.",
        ],
        [
            "api-token-file",
            None,
            None,
            "File of the read API's tokens, one per line: enables /api/v1/ "
            "(also GWEBHOOK_API_TOKENS, or [api] tokens_file in --config).",
        ],
        [
            "db-password-file",
            None,
            None,
            "File holding the PostgreSQL password of --db (one trailing "
            "newline ignored); else PGPASSWORD or ~/.pgpass.",
        ],
        [
            "config",
            None,
            None,
            "TOML file declaring instances: senders each with their own "
            "credentials, type, mapping and port (re-read on SIGHUP).",
        ],
        [
            "retain-days",
            None,
            None,
            "Delete incidents received more than N days ago, checked hourly "
            "(default: keep them all).",
            _whole("retain-days", 1, None, "a whole number of days, 1 or more"),
        ],
        [
            "max-header-bytes",
            None,
            DEFAULT_MAX_HEADER_BYTES,
            "Limit on the request line plus headers.",
            _whole("max-header-bytes", 1024, None, "a number of bytes, 1024 or more"),
        ],
        [
            "max-body-bytes",
            None,
            DEFAULT_MAX_BODY_BYTES,
            "Limit on the request body.",
            _whole("max-body-bytes", 1, None, "a positive number of bytes"),
        ],
        [
            "shutdown-timeout",
            None,
            30,
            "Seconds SIGTERM waits for requests in flight before cutting them off.",
            _whole("shutdown-timeout", 0, None, "a number of seconds, 0 or more"),
        ],
        [
            "metrics-port",
            None,
            None,
            "Serve Prometheus metrics over plain HTTP on this port (off by default).",
            _whole("metrics-port", 0, 65535, "a TCP port (0-65535)"),
        ],
        ["metrics-interface", None, "127.0.0.1", "Address the metrics listener binds."],
        [
            "workers",
            None,
            1,
            "Processes serving the port (one per core, say); all write the same store.",
            _whole("workers", 1, 64, "a number of processes, 1 to 64"),
        ],
        [
            "header-timeout",
            None,
            DEFAULT_HEADER_TIMEOUT,
            "Seconds from a request's first byte to the end of its headers (then 408).",
            _seconds("header-timeout"),
        ],
        [
            "body-timeout",
            None,
            DEFAULT_BODY_TIMEOUT,
            "Seconds from the end of the headers to the end of the body (then 408).",
            _seconds("body-timeout"),
        ],
        [
            "idle-timeout",
            None,
            DEFAULT_IDLE_TIMEOUT,
            "Seconds a connection may wait for its next request (then closed).",
            _seconds("idle-timeout"),
        ],
        [
            "max-connections",
            None,
            DEFAULT_MAX_CONNECTIONS,
            "Open connections at most; more are answered 503.",
            _whole("max-connections", 1, None, "a positive number"),
        ],
        [
            "max-connections-per-client",
            None,
            DEFAULT_MAX_CONNECTIONS_PER_CLIENT,
            "Open connections from one address at most; more are answered 503.",
            _whole("max-connections-per-client", 1, None, "a positive number"),
        ],
        [
            "auth-fail-limit",
            None,
            10,
            "Failed authentications from one address within the window before it "
            "gets 429 (0: never).",
            _whole("auth-fail-limit", 0, None, "a number, 0 or more"),
        ],
        [
            "auth-fail-window",
            None,
            60,
            "The window, in seconds, for --auth-fail-limit.",
            _whole("auth-fail-window", 1, None, "a positive number of seconds"),
        ],
    ]

    optFlags = [
        ["no-tls", None, "Serve plain HTTP (only behind a TLS-terminating proxy)."],
        ["allow-anonymous", None, "Accept requests without credentials."],
        ["store-samples", None, "Keep the 20 most recent incidents as samples."],
        [
            "pin-cpus",
            None,
            "Pin each serving process (the main one and each of --workers) to "
            "one CPU, in turn; for hosts that run little else.",
        ],
    ]

    def __init__(
        self, environ: dict[str, str] | None = None, worker: bool = False
    ) -> None:
        super().__init__()
        self.environ = os.environ if environ is None else environ
        # A worker of --workers N: serves only; the main process prunes and
        # serves metrics.
        self.worker = worker
        self.argv: list[str] = []

    def parseOptions(self, options: list[str] | None = None) -> None:
        # Kept for the workers of --workers N, which parse the same options.
        self.argv = list(options or [])
        super().parseOptions(options)

    def postOptions(self) -> None:
        if self.worker:
            self["workers"], self["metrics-port"], self["retain-days"] = 1, None, None
        if self["pin-cpus"] and not affinity.supported():
            raise usage.UsageError(
                "--pin-cpus needs an OS with CPU affinity (Linux); leave it out"
            )
        if self["interface"] is None:
            # Dual-stack where the host can: one socket for both families.
            self["interface"] = "::" if ipv6_available() else "0.0.0.0"  # noqa: S104
        self["instances-file"] = self._config()
        self["credentials"] = self._credentials()
        self["tls"] = self._tls()
        self["inherited-socket"] = systemd.inherited_socket()
        self["own-tls"] = self._own_ports()
        # A worker binds beside the main process (SO_REUSEPORT): no probe.
        if self["inherited-socket"] is None and not self.worker:
            check_bindable("--port", self["interface"], self["port"])
        ensure_descriptors(self["max-connections"])
        if self["metrics-port"] is not None:
            check_bindable(
                "--metrics-port", self["metrics-interface"], self["metrics-port"]
            )
        declared = self["instances-file"]
        try:
            self["api-tokens"] = tokens_from(
                self["api-token-file"],
                self.environ,
                declared.api_tokens_file if declared else None,
            )
        except ValueError as e:
            raise usage.UsageError(str(e)) from None
        # Last: it creates the store, which no refusal may leave behind.
        self["db-password"] = self._database()

    def _database(self) -> str | None:
        """
        Settle where the store is (--db, else the config file's db, else the
        default file) and prepare it: created or upgraded now, so that a
        store that cannot be used stops the start-up in one line.  The
        PostgreSQL password, if a file gives one.
        """
        declared = self["instances-file"]
        if self["db"] is None:
            self["db"] = (declared and declared.db) or DEFAULT_DB
        if self["db-password-file"] is None and declared is not None:
            self["db-password-file"] = declared.db_password_file
        password = None
        try:
            if is_postgres(self["db"]):
                if self["db-password-file"] is not None:
                    password = read_password_file(self["db-password-file"])
                # Connects, and creates or upgrades the schema (once, when
                # several nodes start together); closed again at once.
                from gwebhook.store.postgres_schema import (
                    connect_options,
                )
                from gwebhook.store.postgres_schema import (
                    create_or_upgrade as create_or_upgrade_postgres,
                )

                create_or_upgrade_postgres(self["db"], connect_options(password))
            else:
                create_or_upgrade(self["db"])
        except StoreError as e:
            raise usage.UsageError(f"--db: {e}") from None
        return password

    def _password(self) -> str | None:
        given = [o for o in ("password", "password-file") if self[o] is not None]
        if len(given) > 1:
            raise usage.UsageError("give --password or --password-file, not both")
        if self["password-file"] is not None:
            path = self["password-file"]
            try:
                with open(path, encoding="utf-8") as f:
                    text = f.read()
            except OSError as e:
                raise usage.UsageError(
                    f"--password-file: cannot read {path}: {e.strerror}; "
                    "give a file the daemon can read, holding just the password"
                ) from None
            return text[:-1] if text.endswith("\n") else text
        if self["password"] is not None:
            return self["password"]
        return self.environ.get(PASSWORD_ENV)

    def _credentials(self) -> Credentials | None:
        password = self._password()
        username = self["username"]
        if self["auth-header"] is not None:
            if username is not None or password is not None:
                raise usage.UsageError(
                    "give --auth-header or --username/--password, not both"
                )
            username, password = HEADER_PREFIX + "Authorization", self["auth-header"]
        if username is None and password is None:
            if self["allow-anonymous"] or self["config"] is not None:
                # With only a --config file, there is no default instance.
                return None
            raise usage.UsageError(
                "no credentials: give --username and --password (or --password-file, "
                f"or ${PASSWORD_ENV}), or --allow-anonymous to accept anyone"
            )
        if self["allow-anonymous"]:
            raise usage.UsageError(
                "--allow-anonymous cannot be combined with credentials"
            )
        if username is None:
            raise usage.UsageError("a password was given without --username")
        if not password:
            raise usage.UsageError(
                f"--username {username} needs a non-empty --password "
                f"(or --password-file, or ${PASSWORD_ENV})"
            )
        if username.startswith(HEADER_PREFIX):
            if not is_token(username[len(HEADER_PREFIX) :].strip()):
                raise usage.UsageError(
                    "--username _header:NAME needs a header name (letters, digits "
                    "and !#$%&'*+-.^_`|~), e.g. _header:Authorization"
                )
        elif ":" in username:
            raise usage.UsageError(
                "--username cannot contain ':' (HTTP Basic forbids it)"
            )
        return Credentials.from_options(username, password)

    def _config(self) -> Config | None:
        if self["config"] is None:
            return None
        try:
            return load_config(self["config"], self.environ)
        except ConfigError as e:
            raise usage.UsageError(str(e)) from None

    def _own_ports(self) -> dict[str, ReloadableTLS]:
        """The certificates of the instances with their own (see own_tls)."""
        declared = self["instances-file"]
        if declared is None:
            return {}
        try:
            return own_tls(self, declared, probe=not self.worker)
        except (ConfigError, TLSConfigError) as e:
            raise usage.UsageError(str(e)) from None

    def _tls(self):
        cert, key = self["cert"], self["key"]
        if self["no-tls"]:
            if cert or key:
                raise usage.UsageError(
                    "--no-tls cannot be combined with --cert/--key; drop --no-tls "
                    "to serve TLS, or drop --cert and --key behind a TLS proxy"
                )
            return None
        if not cert or not key:
            raise usage.UsageError(
                "TLS needs --cert and --key (make a test pair with "
                "'gwebhook make-cert DIR'), or --no-tls behind a TLS-terminating proxy"
            )
        declared = self["instances-file"]
        # Every instance is reachable by name on the main port.
        ask = declared is not None and any(i.mtls for i in declared.instances)
        try:
            return ReloadableTLS(cert, key, ask_client_certificate=ask)
        except TLSConfigError as e:
            raise usage.UsageError(str(e)) from None


def _throttle(config: Options, instances: Instances, reactor) -> AuthThrottle | None:
    if not config["auth-fail-limit"]:
        return None
    if (
        config["instances-file"] is None
        and config["credentials"] is None
        and not config["api-tokens"]
    ):
        # Anyone may send, no API token to guess, and no reload can change
        # that: nothing to count.
        return None
    return AuthThrottle(
        config["auth-fail-limit"], config["auth-fail-window"], reactor.seconds
    )


def _instances(config: Options, declared: Config | None) -> Instances:
    """The command line's instance (if it describes one) and the file's."""
    default = command_line_instance(
        config["credentials"],
        config["allow-anonymous"],
        config["incident-type"],
        bool(config["store-samples"]),
    )
    return Instances(
        default, declared.instances if declared else (), config["incident-type"]
    )


def own_tls(config: Options, declared: Config, probe: bool) -> dict[str, ReloadableTLS]:
    """
    Check what a config file asks of the listeners, against the command
    line (at start-up and on every reload), and read the certificates of
    the instances with their own: their TLS, by name.  An own port must not
    be the main or the metrics port, and (with ``probe``) must be free;
    ``--no-tls`` serves no certificate, so no instance may need one.
    Raises ConfigError or TLSConfigError naming the file, instance and key.
    """
    taken = {config["port"]: "--port", config["metrics-port"]: "--metrics-port"}
    plain = config["tls"] is None
    own: dict[str, ReloadableTLS] = {}
    for instance in declared.instances:
        where = f"{declared.path}: instance '{instance.name}'"
        if plain and instance.mtls is not None:
            raise ConfigError(
                f"{where}: mtls: --no-tls asks no client certificate; drop "
                "[instance.mtls], or serve TLS"
            )
        if instance.port is None:
            continue
        if instance.port in taken:
            raise ConfigError(
                f"{where}: port {instance.port} is {taken[instance.port]} "
                "already; give the instance a port of its own"
            )
        if probe and config["inherited-socket"] is None:
            try:
                bound_socket(config["interface"], instance.port).close()
            except OSError as e:
                raise ConfigError(
                    f"{where}: port {instance.port}: cannot listen on "
                    f"{config['interface']}: {e.strerror}; choose another port, "
                    "or stop what holds it"
                ) from None
        if instance.cert is None:
            continue
        assert instance.key is not None  # the config gives cert and key together
        if plain:
            raise ConfigError(
                f"{where}: cert: --no-tls serves plain HTTP on every port; drop "
                "cert and key, or --no-tls"
            )
        try:
            own[instance.name] = ReloadableTLS(
                instance.cert,
                instance.key,
                ask_client_certificate=instance.mtls is not None,
            )
        except TLSConfigError as e:
            raise TLSConfigError(f"{where}: {e}") from None
    return own


def _reread(config: Options) -> Reconfigured:
    """
    The ``--config`` file and the API tokens' file read again (SIGHUP): the
    instances the file declares now, the certificates of those with their
    own ports, and the tokens.  Raises ConfigError or TLSConfigError, and
    then nothing of it is in service.  Ports already served are not
    probed: they are ours.
    """
    declared = None
    if config["config"] is not None:
        declared = load_config(config["config"], config.environ)
    try:
        tokens = tokens_from(
            config["api-token-file"],
            config.environ,
            declared.api_tokens_file if declared else None,
        )
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if declared is None:
        return Reconfigured(None, {}, tokens)
    return Reconfigured(
        _instances(config, declared), own_tls(config, declared, probe=False), tokens
    )


def _using_api_tokens(
    api: ReadAPI, console: Console, sessions: Sessions, polls: LongPolls
) -> Callable[[tuple[bytes, ...]], bool]:
    """
    How a reload puts API tokens in service, the API's and the console's:
    False when they are those in service already.  The long polls in
    progress when they change are answered at once (an empty page): a token
    was checked when its poll began, and asking again is checked anew.
    """

    def use(tokens: tuple[bytes, ...]) -> bool:
        if tokens == api.tokens:
            return False
        api.tokens = console.tokens = tokens
        sessions.use_tokens(tokens)
        polls.tokens_changed()
        return True

    return use


def _holder(config: Options) -> str:
    """
    This node, as the forwards' leases name it: the same after a restart,
    another for every node (two on one host listen on two ports).
    """
    return f"{socket.gethostname()}:{config['port']}"


def _limits(config: Options) -> ChannelLimits:
    return ChannelLimits(
        max_header_bytes=config["max-header-bytes"],
        max_body_bytes=config["max-body-bytes"],
        header_timeout=config["header-timeout"],
        body_timeout=config["body-timeout"],
        idle_timeout=config["idle-timeout"],
        max_connections=config["max-connections"],
        max_connections_per_client=config["max-connections-per-client"],
    )


def makeService(config: Options, reactor=None) -> WebhookService:
    """
    The daemon, wired here and only here: every part is built from the
    options and handed to the parts that use it.  ``reactor`` gives every
    timer and clock of the request path its time (tests pass a Clock).
    """
    if reactor is None:
        from twisted.internet import reactor
    cpus = affinity.usable_cpus() if config["pin-cpus"] else None
    if cpus is not None and not config.worker:
        # Before the store's thread starts, so that it shares the CPU.
        affinity.pin(affinity.cpu_for(0, cpus))
        log.info("pinned to CPU {cpu}", cpu=affinity.cpu_for(0, cpus))
    metrics = Metrics()
    store = open_store(config["db"], config["db-password"])
    instances = _instances(config, config["instances-file"])
    gate = Gate(_throttle(config, instances, reactor), metrics, reactor)
    routes = WebhookRoutes(
        store, gate, metrics, reactor, max_body_bytes=config["max-body-bytes"]
    )
    forwards = declared.forwards if (declared := config["instances-file"]) else ()
    # Every process queues what it stores for the forwards; only the main
    # one delivers (and, on PostgreSQL, only the node holding each lease).
    store.forward_routes = tuple(
        (f.name, None if f.instances is None else frozenset(f.instances))
        for f in forwards
    )
    polls = None
    api = console = None
    if config["api-tokens"]:
        polls = LongPolls(store, reactor)
        sessions = Sessions(reactor.seconds, store=store)
        console_paths = ConsoleEndpoints(
            store,
            reactor,
            sessions,
            metrics,
            tuple(f.name for f in forwards),
            "postgresql" if is_postgres(config["db"]) else "sqlite",
        )
        api = ReadAPI(
            config["api-tokens"],
            store,
            polls,
            gate.throttle,
            reactor,
            sessions=sessions,
            console=console_paths,
        )
        console = Console(config["api-tokens"], sessions, gate.throttle)
    site = WebhookSite(
        routes.resource(api, console),
        instances=instances,
        gate=gate,
        metrics=metrics,
        access_log=AccessLog(metrics),
        limits=_limits(config),
        reactor=reactor,
    )
    site.serves_api = api is not None
    if console is not None:
        # The console's and its API's POSTs that carry a body, each within a
        # small limit (the channel reads other bodies on webhook paths only).
        site.body_limits = BODY_LIMITS
    workers = None
    if config["workers"] > 1:
        workers = WorkerPool(
            config["workers"] - 1,
            config.argv,
            config["inherited-socket"],
            config["shutdown-timeout"],
            reactor,
            cpus=cpus,
        )
    failures = FailureLog(reactor)
    own_ports = OwnPorts(
        reactor, site, config["interface"], config["tls"], metrics, failures
    )
    own_ports.reuse_port = config["workers"] > 1 or config.worker
    own_ports.match(instances, config["own-tls"])
    reconfigure = use_api_tokens = None
    if config["config"] is not None or config["api-token-file"] is not None:
        reconfigure = functools.partial(_reread, config)
    if (
        api is not None
        and console is not None
        and api.sessions is not None
        and polls is not None
    ):
        use_api_tokens = _using_api_tokens(api, console, api.sessions, polls)
    top = WebhookService(
        site,
        store,
        config["tls"],
        config["shutdown-timeout"],
        reactor,
        workers,
        own_ports=own_ports,
        reconfigure=reconfigure,
        use_api_tokens=use_api_tokens,
    )
    main = Listener(webhook_endpoint(reactor, config, metrics, failures), site)
    main.setServiceParent(top)
    own_ports.setServiceParent(top)
    if polls is not None:
        polls.setServiceParent(top)
    if not config.worker:
        for forward in forwards:
            Forwarder(
                forward, store, reactor, metrics, holder=_holder(config)
            ).setServiceParent(top)
    if workers is not None:
        workers.setServiceParent(top)
    # Always: without --retain-days it still forgets duplicates' keys past
    # their window.
    RetentionService(
        store.pool, config["retain-days"], clock=reactor, write=store.write
    ).setServiceParent(top)
    if config["metrics-port"] is not None:
        where = endpoints.TCP4ServerEndpoint(
            reactor, config["metrics-port"], interface=config["metrics-interface"]
        )
        Listener(where, metrics_site(metrics)).setServiceParent(top)
    return top
