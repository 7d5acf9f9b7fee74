"""The ``gwebhook`` console command: read incidents back, make a test certificate."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from gwebhook import readback
from gwebhook.certificates import DEFAULT_HOSTNAMES, make_self_signed

DEFAULT_DB = "gwebhook.sqlite"


def _emit(value) -> None:
    sys.stdout.write(json.dumps(value, ensure_ascii=False) + "\n")


def _list(args) -> None:
    db = readback.open_store(args.db)
    for incident in readback.list_incidents(db, args.after, args.limit):
        _emit(incident)


def _show(args) -> None:
    _emit(readback.show_incident(readback.open_store(args.db), args.id))


def _export(args) -> None:
    for incident in readback.export_incidents(readback.open_store(args.db), args.after):
        _emit(incident)


def _samples(args) -> None:
    _emit(readback.samples(readback.open_store(args.db)))


def _make_cert(args) -> None:
    hostnames = args.hostname or list(DEFAULT_HOSTNAMES)
    try:
        cert, key = make_self_signed(Path(args.dir), hostnames)
    except FileExistsError:
        existing = Path(args.dir) / "server.key"
        raise readback.ReadError(
            f"{existing} exists already; remove it or choose another DIR"
        ) from None
    print(
        f"wrote {cert} and {key} (self-signed, for {', '.join(hostnames)}); "
        "for trying gwebhook out only, see certs/README.md for production"
    )


def _non_negative(value: str) -> int:
    number = int(value)
    if number < 0:
        raise argparse.ArgumentTypeError("must be 0 or more")
    return number


def parser() -> argparse.ArgumentParser:
    # --db is accepted before or after the command.
    db = argparse.ArgumentParser(add_help=False)
    db.add_argument(
        "--db", default=argparse.SUPPRESS, help=f"the store (default {DEFAULT_DB})"
    )
    top = argparse.ArgumentParser(
        prog="gwebhook", description="Read gwebhook's incidents back.", parents=[db]
    )
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    c = commands.add_parser(
        "list", parents=[db], help="incident summaries, oldest first"
    )
    c.add_argument("--after", type=_non_negative, default=0, metavar="ID")
    c.add_argument("--limit", type=_non_negative, default=None, metavar="N")
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
        "samples", parents=[db], help="the kept samples (--store-samples)"
    )
    c.set_defaults(run=_samples)

    c = commands.add_parser(
        "make-cert", help="write a self-signed server.crt and server.key"
    )
    c.add_argument("dir", metavar="DIR")
    c.add_argument("--hostname", action="append", metavar="NAME", help="repeatable")
    c.set_defaults(run=_make_cert)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    # Not a parser default: parents share actions, so a default would let the
    # command's --db silently override one given before the command.
    args.db = getattr(args, "db", DEFAULT_DB)
    try:
        args.run(args)
    except readback.ReadError as e:
        print(f"gwebhook: {e}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # `gwebhook export | head` is normal use, not an error.
        sys.stderr.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
