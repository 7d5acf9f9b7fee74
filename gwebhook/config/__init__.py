"""
``--config FILE``: the instances a TOML file declares, each with its own
credentials, client CA, signature secrets, port and mapping, checked whole
when the file is read.

The reader is in three parts: ``reader`` (the checks of single values every
part shares), ``instance`` (an ``[[instance]]``) and ``outward``
(``[[forward]]``, ``[api]`` and the store's keys).

Every refusal is a ConfigError whose message is one line: the file, the
instance (by name, or ``#N`` counting ``[[instance]]`` tables from 1 while it
has no usable name), the key as TOML writes it, what is wrong and the fix.
Reading stops at the first problem, in file order.
"""

from __future__ import annotations

import collections.abc
import tomllib
from dataclasses import dataclass
from typing import Any

from gwebhook.config.instance import (
    _TOP_LATER,
    InstanceConfig,
    InstanceReader,
    MTLSConfig,
)
from gwebhook.config.outward import ForwardConfig, OutwardReader
from gwebhook.config.reader import DEFAULT_INSTANCE, INSTANCE_NAME, ConfigError, _kind

__all__ = [
    "DEFAULT_INSTANCE",
    "INSTANCE_NAME",
    "Config",
    "ConfigError",
    "ForwardConfig",
    "InstanceConfig",
    "MTLSConfig",
    "load_config",
    "parse_config",
    "read_database",
]

_TOP_KEYS = ("instance", "db", "db_password_file", "api", "forward")


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


class _Reader(InstanceReader, OutwardReader):
    """Every check of the file."""
