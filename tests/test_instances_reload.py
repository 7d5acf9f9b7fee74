"""
SIGHUP re-reads the ``--config`` file of a running ``twistd gwebhook``:
instances added, changed and removed take effect for new requests while the
others keep being served, own ports open and close, and a bad file leaves
the running configuration in service.
"""

from __future__ import annotations

import signal
import time

import pytest
from support.credentials import basic
from support.daemon import log_lines, log_text, wait_for_log
from support.instances import (
    Keeper,
    instance,
    post,
    reload,
    show,
    write_config,
    write_secret,
)
from support.ports import (
    free_port,
    occupied_port,
    wait_until_listening,
    wait_until_not_listening,
)
from support.store import row_counts
from support.wait import wait_for

from gwebhook.config import ConfigError, load_config

pytestmark = pytest.mark.process

KEEP = basic("keep", "keep-secret")
OLD = basic("changing", "old-secret")
NEW = basic("changing", "new-secret")
LEAVING = {"X-Token": "leaving-token"}
ADDED = basic("added", "added-secret")

NO_THROTTLE = ("--auth-fail-limit", "0")


def keep() -> str:
    return instance("keep", username="keep", password_file="keep.pw")


def status(d, path: str, headers: dict[str, str], **where) -> int:
    return post(d, path, {"name": f"probe {path}"}, headers, **where).status


def test_instances_added_changed_and_removed_while_another_is_served(daemon, tmp_path):
    """
    After SIGHUP a new instance answers, a changed password is the only one
    that opens its instance, a removed instance's name is no instance (404
    without a default), and a sender to an untouched instance sees no failed
    request throughout.
    """
    write_secret(tmp_path, "keep.pw", "keep-secret")
    config = write_config(
        tmp_path,
        keep(),
        instance("changing", username="changing", password="old-secret"),
        instance("leaving", username="_header:X-Token", password="leaving-token"),
    )
    d = daemon("--config", str(config), *NO_THROTTLE)
    assert status(d, "/instance/execute/changing", OLD) == 200
    assert status(d, "/instance/execute/leaving", LEAVING) == 200
    assert status(d, "/instance/execute/added", ADDED) == 404

    with Keeper(d, "/instance/execute/keep", KEEP) as sender:
        time.sleep(0.3)
        reload(
            d,
            config,
            keep(),
            instance("changing", username="changing", password="new-secret"),
            instance("added", username="added", password="added-secret"),
        )
        wait_for(
            lambda: status(d, "/instance/execute/added", ADDED) == 200,
            10,
            "the added instance to answer",
        )
        time.sleep(0.3)
    sender.assert_all_served(at_least=10)

    assert status(d, "/instance/execute/changing", NEW) == 200
    assert status(d, "/xsoar/instance/execute/changing", OLD) == 401
    assert status(d, "/instance/execute/leaving", LEAVING) == 404
    incident = post(d, "/xsoar/instance/execute/added", {}, ADDED).json()[0]
    assert show(d, incident["id"])["instance"] == "added"


def test_a_bad_file_on_reload_is_logged_and_the_old_configuration_serves(
    daemon, tmp_path
):
    """
    A file that no longer parses is one log line (the reason, naming the
    file) on SIGHUP; the instances in service stay as they were, and a
    fixed file is read on the next SIGHUP.
    """
    write_secret(tmp_path, "keep.pw", "keep-secret")
    config = write_config(tmp_path, keep())
    d = daemon("--config", str(config), *NO_THROTTLE)
    with Keeper(d, "/instance/execute/keep", KEEP) as sender:
        config.write_text('[[instance]\nname = "keep"\n', "utf-8")
        with pytest.raises(ConfigError) as caught:
            load_config(str(config), {})
        reason = str(caught.value)
        d.signal(signal.SIGHUP)
        wait_for_log(d, reason)
        time.sleep(0.3)
    sender.assert_all_served(at_least=5)
    [line] = log_lines(d, reason)
    assert "configuration not reloaded, the running one stays in service" in line
    assert "Traceback" not in log_text(d)
    assert status(d, "/instance/execute/keep", KEEP) == 200

    reload(
        d, config, keep(), instance("added", username="added", password="added-secret")
    )
    wait_for(
        lambda: status(d, "/instance/execute/added", ADDED) == 200,
        10,
        "the fixed file to be read",
    )
    assert status(d, "/instance/execute/keep", KEEP) == 200


def test_a_reload_opens_and_closes_an_instances_own_port(daemon, tmp_path):
    """
    A port given to an instance by a reload starts listening (every path
    there being that instance); a reload that takes it away closes it, and
    the instance stays reachable by name on the main port.
    """
    own = free_port()
    write_secret(tmp_path, "keep.pw", "keep-secret")
    config = write_config(
        tmp_path, keep(), instance("mover", username="mover", password="mover-pw")
    )
    mover = basic("mover", "mover-pw")
    d = daemon("--config", str(config), *NO_THROTTLE)

    reload(
        d,
        config,
        keep(),
        instance("mover", username="mover", password="mover-pw", port=own),
    )
    wait_until_listening(own)
    reply = post(d, "/", {"name": "on its own port"}, mover, port=own)
    assert reply.status == 200, reply.body
    assert show(d, reply.json()[0]["id"])["instance"] == "mover"
    before = row_counts(d.db)
    assert status(d, "/instance/execute/keep", KEEP, port=own) == 401
    assert row_counts(d.db) == before

    reload(d, config, keep(), instance("mover", username="mover", password="mover-pw"))
    wait_until_not_listening(own)
    assert status(d, "/instance/execute/mover", mover) == 200
    assert status(d, "/instance/execute/keep", KEEP) == 200


def test_a_reload_whose_new_port_cannot_be_opened_changes_nothing(daemon, tmp_path):
    """
    A new own port that is taken: the reload is refused whole (logged), the
    running instances and their ports stay, and a later good reload works.
    """
    first, taken = free_port(), occupied_port()
    busy = taken.getsockname()[1]
    write_secret(tmp_path, "keep.pw", "keep-secret")
    mover = basic("mover", "mover-pw")
    config = write_config(
        tmp_path,
        keep(),
        instance("mover", username="mover", password="mover-pw", port=first),
    )
    d = daemon("--config", str(config), *NO_THROTTLE)
    wait_until_listening(first)
    try:
        reload(
            d,
            config,
            keep(),
            instance("mover", username="mover", password="mover-pw", port=busy),
            instance("added", username="added", password="added-secret"),
        )
        wait_for_log(d, "configuration not reloaded")
    finally:
        taken.close()
    assert "configuration reloaded" not in log_text(d)
    # The running configuration serves on, its own port included.
    assert status(d, "/", mover, port=first) == 200
    assert status(d, "/instance/execute/added", ADDED) == 404  # not in service
    reload(
        d, config, keep(), instance("added", username="added", password="added-secret")
    )
    wait_for_log(d, "configuration reloaded")
    assert status(d, "/instance/execute/added", ADDED) == 200
