"""
Which instance a request is for: the first thing the request path decides
once the channel's limits hold, before credentials (each instance has its
own) and before a byte of the body is read (docs/reference.md 8).

An instance is an ``InstanceConfig`` (gwebhook.config): the command line
describes the one named ``default``, a ``--config`` file any others.  The
table is immutable; a reload builds a new one and swaps it whole, so a
request keeps the instance it was resolved to.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable
from urllib.parse import unquote_to_bytes

from gwebhook.config import DEFAULT_INSTANCE, InstanceConfig
from gwebhook.credentials import Credentials
from gwebhook.payload import DEFAULT_TYPE

# How senders send: POST, or PUT (Wallarm can be set to it).
WEBHOOK_METHODS = ("POST", "PUT")
WEBHOOK_METHODS_BYTES = frozenset(m.encode("ascii") for m in WEBHOOK_METHODS)

# The webhook paths, with the instance name of XSOAR's URL forms.
_WEBHOOK_PATH = re.compile(rb"/|/(?:xsoar/)?instance/execute/([^/?]+)")


def _instance_name(path: bytes) -> tuple[bool, str | None]:
    """
    Whether ``path`` (without its query) is a webhook path, and the instance
    name it gives (percent-escapes decoded; one that decodes to a "/" is no
    name, as Klein's routes would not match it either).
    """
    match = _WEBHOOK_PATH.fullmatch(path)
    if match is None:
        return False, None
    if match.group(1) is None:
        return True, None
    name = unquote_to_bytes(match.group(1))
    if b"/" in name:
        return False, None
    return True, name.decode("utf-8", "replace")


def is_webhook_path(path: bytes) -> bool:
    """Whether ``path`` (without its query) is one of the webhook paths."""
    return _instance_name(path)[0]


def command_line_instance(
    credentials: Credentials | None,
    anonymous: bool,
    incident_type: str | None,
    store_samples: bool,
) -> InstanceConfig | None:
    """
    The instance the command-line options describe, or None when they give
    neither credentials nor ``--allow-anonymous`` (a ``--config`` file then
    declares every instance, and ``/`` answers 404).
    """
    if credentials is None and not anonymous:
        return None
    return InstanceConfig(
        name=DEFAULT_INSTANCE,
        incident_type=incident_type,
        store_samples=store_samples,
        port=None,
        cert=None,
        key=None,
        anonymous=credentials is None,
        credentials=credentials,
        mtls=None,
        mapping=None,
    )


class Instances:
    """The instances in service, and which one a request is for."""

    def __init__(
        self,
        default: InstanceConfig | None,
        declared: Iterable[InstanceConfig],
        incident_type: str | None,
    ) -> None:
        """
        ``default`` is the command line's instance (None: there is none),
        ``declared`` the config file's; an instance naming no incident type
        gets ``incident_type`` (the command line's), else Unclassified.
        """
        fallback = incident_type or DEFAULT_TYPE

        def typed(instance: InstanceConfig) -> InstanceConfig:
            if instance.incident_type:
                return instance
            return dataclasses.replace(instance, incident_type=fallback)

        self.default = typed(default) if default is not None else None
        self.by_name = {i.name: typed(i) for i in declared}
        self.by_port = {i.port: i for i in self.by_name.values() if i.port}
        everyone = [*self.by_name.values(), *([self.default] if self.default else [])]
        self.all: tuple[InstanceConfig, ...] = tuple(everyone)
        self.needs_client_certificate = any(i.mtls for i in everyone)

    def for_request(self, path: bytes, port: int | None) -> InstanceConfig | None:
        """
        The instance a webhook to ``path`` (without its query) arriving on
        local ``port`` is for: the instance owning that port, else the one
        the path names, else the default; None for no instance.
        """
        webhook, name = _instance_name(path)
        if not webhook:
            return None
        owner = self.by_port.get(port) if port is not None else None
        if owner is not None:
            return owner
        if name is not None and name in self.by_name:
            return self.by_name[name]
        return self.default
