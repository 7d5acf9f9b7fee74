"""
The ``gwebhook`` console command: read incidents back, prune old ones, send a
test webhook, make a test certificate.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

from gwebhook import progress, readback
from gwebhook.certificates import DEFAULT_HOSTNAMES, make_self_signed
from gwebhook.database import DEFAULT_DB, is_postgres, read_password_file
from gwebhook.schema import StoreError


def _where(args) -> None:
    """
    Settle ``args.db`` and ``args.db_password``: --db, else the config
    file's db, else the default file; the password from --db-password-file,
    else the config file's db_password_file, else libpq's own sources.
    (Not parser defaults: parents share actions, so a default would let the
    command's --db silently override one given before the command.)
    """
    db = getattr(args, "db", None)
    password_file = getattr(args, "db_password_file", None)
    config = getattr(args, "config", None)
    if config is not None:
        from gwebhook.config import ConfigError, read_database

        try:
            declared_db, declared_password_file = read_database(config)
        except ConfigError as e:
            raise UsageProblem(str(e)) from None
        db = db or declared_db
        password_file = password_file or declared_password_file
    args.db = db or DEFAULT_DB
    args.db_password = None
    if password_file is not None and is_postgres(args.db):
        try:
            args.db_password = read_password_file(password_file)
        except StoreError as e:
            raise CommandFailed(str(e)) from None


def _emit(value) -> None:
    sys.stdout.write(json.dumps(value, ensure_ascii=False) + "\n")


def _reader(args):
    """The store ``--db`` names, open for reading."""
    return readback.open_for_reading(args.db, args.db_password)


def _list(args) -> None:
    db = _reader(args)
    for incident in readback.list_incidents(db, args.after, args.limit, args.instance):
        _emit(incident)


def _show(args) -> None:
    _emit(readback.show_incident(_reader(args), args.id))


def _export(args) -> None:
    db = _reader(args)
    bar = progress.on_terminal("export", "incidents")
    try:
        if bar.showing:
            bar.total(readback.count_incidents(db, args.after))
        # The bar hears of every CHUNK incidents, not of each one.
        done = 0
        for done, incident in enumerate(readback.export_incidents(db, args.after), 1):
            _emit(incident)
            if done % progress.CHUNK == 0:
                bar.advance(progress.CHUNK)
        bar.advance(done % progress.CHUNK)
    finally:
        bar.close()


def _samples(args) -> None:
    kept = readback.samples(_reader(args), args.instance)
    if not kept:
        # A note, not an error: `[]` is still the true answer for a script.
        of = "" if args.instance is None else f" of instance {args.instance!r}"
        print(
            f"gwebhook samples: {args.db} holds no samples{of}; they are kept "
            "only for an instance with store_samples = true in --config, or "
            "for the default instance when the daemon runs with --store-samples",
            file=sys.stderr,
        )
    _emit(kept)


def _make_cert(args) -> None:
    hostnames = args.hostname or list(DEFAULT_HOSTNAMES)
    directory = Path(args.dir)
    try:
        cert, key = make_self_signed(directory, hostnames)
    except FileExistsError:
        if not directory.is_dir():
            raise CommandFailed(_cannot_write(args.dir, "not a directory")) from None
        existing = directory / "server.key"
        raise CommandFailed(
            f"{existing} exists already; remove it or choose another DIR"
        ) from None
    except OSError as e:
        raise CommandFailed(_cannot_write(args.dir, e.strerror or str(e))) from None
    print(
        f"wrote {cert} and {key} (self-signed, for {', '.join(hostnames)}); "
        "for trying gwebhook out only, see certs/README.md for production"
    )


def _cannot_write(directory: str, reason: str) -> str:
    return f"cannot write {directory}: {reason}; choose a directory you can write"


class UsageProblem(Exception):
    """A command-line value that cannot be used: one line, exit status 2."""


class CommandFailed(Exception):
    """The command could not do its work: one line, exit status 1."""


# prune and send import their modules when run, so that the other commands
# start without loading Twisted's web client and TLS.


def _prune(args) -> None:
    from gwebhook import retention

    try:
        before = retention.cutoff(args.before)
    except ValueError as e:
        raise UsageProblem(str(e)) from None
    bar = progress.on_terminal("prune", "incidents")
    try:
        if is_postgres(args.db):
            incidents, requests, reclaimed = retention.prune_postgres(
                args.db, before, args.db_password, progress=bar
            )
        else:
            incidents, requests, reclaimed = retention.prune_store(
                args.db, before, progress=bar
            )
    except retention.PruneError as e:
        raise CommandFailed(str(e)) from None
    finally:
        bar.close()
    print(retention.summary(incidents, requests, before))
    if not reclaimed:
        raise CommandFailed(
            "the store was busy, so its file did not shrink yet; run the same "
            "prune again later to give the space back"
        )


def _deliveries(args) -> None:
    from gwebhook.store.deliveries import listing

    db = _reader(args)
    for row in listing(db, args.forward, args.state, args.limit):
        _emit(row)


def _redeliver(args) -> None:
    import time

    from gwebhook import retention
    from gwebhook.store.deliveries import redeliver

    if not args.dead and not args.ids:
        raise UsageProblem("give incident ids, or --dead for every dead delivery")
    if args.dead and args.ids:
        raise UsageProblem("give incident ids or --dead, not both")
    ids = None if args.dead else args.ids
    try:
        count = retention.write_once(
            args.db, args.db_password, redeliver, args.forward, ids, time.time()
        )
    except retention.PruneError as e:
        raise CommandFailed(str(e)) from None
    print(
        f"queued {count} deliver{'y' if count == 1 else 'ies'} of forward "
        f"{args.forward} again; the daemon sends them within seconds"
    )


def _send(args) -> int:
    from gwebhook import sender

    try:
        outgoing = sender.build_request(
            args.url,
            method=args.method,
            data=args.data,
            headers=args.header,
            user=args.user,
            cacert=args.cacert,
            insecure=args.insecure,
            timeout=args.timeout,
            connect_timeout=args.connect_timeout,
        )
    except sender.ArgumentError as e:
        raise UsageProblem(str(e)) from None
    return sender.run(outgoing)


def _seconds(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not (number > 0 and math.isfinite(number)):
        raise argparse.ArgumentTypeError(f"{value!r} is not a positive number")
    return number


def _non_negative(value: str) -> int:
    number = int(value)
    if number < 0:
        raise argparse.ArgumentTypeError("must be 0 or more")
    return number


def parser() -> argparse.ArgumentParser:
    # --db is accepted before or after the command.
    db = argparse.ArgumentParser(add_help=False)
    db.add_argument(
        "--db",
        default=argparse.SUPPRESS,
        help=f"the store: a SQLite file (default {DEFAULT_DB}) or "
        "postgresql://USER@HOST:PORT/DBNAME",
    )
    db.add_argument(
        "--db-password-file",
        default=argparse.SUPPRESS,
        metavar="FILE",
        help="the PostgreSQL password (else PGPASSWORD or ~/.pgpass)",
    )
    db.add_argument(
        "--config",
        default=argparse.SUPPRESS,
        metavar="FILE",
        help="the daemon's config file: its db and db_password_file",
    )
    top = argparse.ArgumentParser(
        prog="gwebhook",
        description="Read gwebhook's incidents back, prune them, send a test webhook.",
        parents=[db],
    )
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    c = commands.add_parser(
        "list", parents=[db], help="incident summaries, oldest first"
    )
    c.add_argument("--after", type=_non_negative, default=0, metavar="ID")
    c.add_argument("--limit", type=_non_negative, default=None, metavar="N")
    c.add_argument(
        "--instance", metavar="NAME", help="only this instance's (none if unknown)"
    )
    c.set_defaults(run=_list)

    c = commands.add_parser("show", parents=[db], help="one incident with its details")
    c.add_argument("id")
    c.set_defaults(run=_show)

    c = commands.add_parser(
        "export", parents=[db], help="whole incidents, one per line"
    )
    c.add_argument("--after", type=_non_negative, default=0, metavar="ID")
    c.set_defaults(run=_export)

    c = commands.add_parser(
        "samples",
        parents=[db],
        help="the kept samples, each instance's 20 most recent",
    )
    c.add_argument(
        "--instance", metavar="NAME", help="only this instance's (none if unknown)"
    )
    c.set_defaults(run=_samples)

    c = commands.add_parser(
        "make-cert", help="write a self-signed server.crt and server.key"
    )
    c.add_argument("dir", metavar="DIR")
    c.add_argument("--hostname", action="append", metavar="NAME", help="repeatable")
    c.set_defaults(run=_make_cert)

    c = commands.add_parser(
        "prune",
        parents=[db],
        help="delete incidents received before a date, and reclaim the space",
    )
    c.add_argument(
        "--before",
        required=True,
        metavar="DATE",
        help="ISO-8601 date or date-time; UTC unless it names a zone",
    )
    c.set_defaults(run=_prune)

    c = commands.add_parser(
        "deliveries",
        parents=[db],
        help="the forwards' deliveries, one per incident and forward",
    )
    c.add_argument("--forward", metavar="NAME", help="only this forward's")
    c.add_argument("--state", choices=("pending", "dead", "delivered"))
    c.add_argument("--limit", type=_non_negative, default=None, metavar="N")
    c.set_defaults(run=_deliveries)

    c = commands.add_parser(
        "redeliver",
        parents=[db],
        help="queue deliveries again (dead ones, or any incidents by id)",
    )
    c.add_argument("--forward", required=True, metavar="NAME")
    c.add_argument("--dead", action="store_true", help="every dead delivery")
    c.add_argument("ids", nargs="*", type=_non_negative, metavar="INCIDENT_ID")
    c.set_defaults(run=_redeliver)

    c = commands.add_parser(
        "send",
        help="post a test webhook (a test incident unless --data) and print the answer",
    )
    c.add_argument("url", metavar="URL")
    c.add_argument(
        "--data",
        "-d",
        metavar="JSON",
        help="the body: JSON text, or @FILE, or @- for standard input",
    )
    c.add_argument(
        "--method", "-X", default="POST", type=str.upper, choices=("POST", "PUT")
    )
    c.add_argument(
        "--header",
        "-H",
        action="append",
        default=[],
        metavar="'NAME: VALUE'",
        help="repeatable",
    )
    c.add_argument("--user", "-u", metavar="USER:PASSWORD", help="HTTP Basic")
    c.add_argument(
        "--cacert", metavar="FILE", help="trust only the CA certificate(s) in FILE"
    )
    c.add_argument(
        "--insecure", "-k", action="store_true", help="do not verify the certificate"
    )
    c.add_argument(
        "--timeout",
        type=_seconds,
        default=15.0,  # Wallarm's "Request timeout"
        metavar="SECONDS",
        help="for the whole request, connecting included (default %(default)g)",
    )
    c.add_argument(
        "--connect-timeout",
        type=_seconds,
        default=20.0,  # Wallarm's "Connection timeout"
        metavar="SECONDS",
        help="for the TCP connection (default %(default)g)",
    )
    c.set_defaults(run=_send)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    status = 0
    try:
        _where(args)
        status = args.run(args) or 0
        # Here, not at exit: a reader gone shows now, where it is handled.
        sys.stdout.flush()
    except UsageProblem as e:
        print(f"gwebhook {args.command}: {e}", file=sys.stderr)
        return 2
    except (readback.ReadError, CommandFailed) as e:
        print(f"gwebhook: {e}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # `gwebhook export | head`: the reader has what it wanted; not an
        # error.  What is left in stdout's buffer goes to /dev/null, or
        # Python's own flush at exit would fail on the pipe again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    return status


if __name__ == "__main__":
    sys.exit(main())
