"""
Reading back a store that several instances write: ``gwebhook list``,
``show``, ``export`` and ``samples`` name each incident's instance, give its
fields and its request's client certificate, and filter by instance.  The
store is written by IncidentStore on a real SQLite file; the command runs as
a subprocess.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3

import pytest
import pytest_twisted
from support.daemon import json_lines, run_cli
from test_schema_upgrade import write_v2_store

from gwebhook.model import IncidentDraft, ReceivedRequest
from gwebhook.store import SQLiteStore

# Every test here runs the gwebhook command.
pytestmark = pytest.mark.process

CERT = {"subject": "CN=sensor-1.example.com,O=Example", "sha256": "0f" * 32}


def request(instance: str, client_cert: dict | None = None) -> ReceivedRequest:
    return ReceivedRequest(
        "2026-01-01T00:00:00Z",
        "127.0.0.1",
        "POST",
        f"/instance/execute/{instance}",
        {"x-sender": instance},
        b"[]",
        instance,
        client_cert,
    )


def draft(name: str, fields: dict | None = None) -> IncidentDraft:
    return IncidentDraft(
        name, "Alert", "2026-01-01T00:00:00Z", {"name": name}, fields or {}
    )


@pytest_twisted.async_fixture
async def store(tmp_path):
    """
    A store where ``default`` (no samples), ``wallarm`` (samples, fields, a
    client certificate), ``other`` (samples) and ``quiet`` (no samples)
    have stored incidents, interleaved: the path and the names
    stored, by instance, oldest first.
    """
    path = tmp_path / "gwebhook.sqlite"
    s = SQLiteStore(str(path))
    names: dict[str, list[str]] = {}

    async def add(instance, drafts, keep, cert=None):
        await s.add(request(instance, cert), drafts, keep)
        names.setdefault(instance, []).extend(d.name for d in drafts)

    try:
        await add("default", [draft("d0"), draft("d1")], False)
        for i in range(25):
            await add("wallarm", [draft(f"w{i}", {"severity": i})], True, CERT)
            if i % 2:
                await add("other", [draft(f"o{i}a"), draft(f"o{i}b")], True)
        await add("quiet", [draft("q0")], False)
        await add("default", [draft("d2")], False)
    finally:
        s.close()
    return path, names


def cli(*args: str) -> str:
    """``gwebhook ARGS``, which must succeed quietly; its stdout."""
    result = run_cli(*args)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    return result.stdout


def test_list_names_each_incidents_instance(store):
    """'list' gives every incident's instance, oldest first."""
    path, names = store
    lines = json_lines(cli("--db", str(path), "list"))
    assert [(line["name"], line["instance"]) for line in lines][:3] == [
        ("d0", "default"),
        ("d1", "default"),
        ("w0", "wallarm"),
    ]
    assert {line["instance"] for line in lines} == set(names)
    assert len(lines) == sum(len(n) for n in names.values())


def test_list_instance_gives_only_that_instances_incidents(store):
    """
    'list --instance NAME' gives that instance's incidents only, oldest
    first, with --after and --limit as without it.
    """
    path, names = store
    wallarm = json_lines(cli("--db", str(path), "list", "--instance", "wallarm"))
    assert [line["name"] for line in wallarm] == names["wallarm"]
    assert {line["instance"] for line in wallarm} == {"wallarm"}
    ids = [int(line["id"]) for line in wallarm]
    assert ids == sorted(ids)
    after = wallarm[4]["id"]
    page = json_lines(
        cli(
            "--db", str(path), "list", "--instance", "wallarm",
            "--after", after, "--limit", "3",
        )
    )  # fmt: skip
    assert page == wallarm[5:8]
    default = json_lines(cli("list", "--instance", "default", "--db", str(path)))
    assert [line["name"] for line in default] == ["d0", "d1", "d2"]


def test_list_of_an_unknown_instance_is_empty(store):
    """'list --instance' of a name no incident has prints nothing, status 0."""
    path, _ = store
    assert cli("--db", str(path), "list", "--instance", "nobody") == ""


def test_show_gives_instance_fields_and_client_certificate(store):
    """
    'show' gives the instance, the fields, and the request's client
    certificate as subject and SHA-256 fingerprint.
    """
    path, _ = store
    [first] = json_lines(
        cli("--db", str(path), "list", "--instance", "wallarm", "--limit", "1")
    )
    shown = json.loads(cli("--db", str(path), "show", first["id"]))
    assert shown["instance"] == "wallarm"
    assert shown["fields"] == {"severity": 0}
    assert shown["request"]["client_cert"] == CERT
    assert shown["request"]["path"] == "/instance/execute/wallarm"
    assert shown["rawJson"] == {"name": "w0", "headers": {"x-sender": "wallarm"}}


def test_show_without_fields_or_client_certificate(store):
    """
    An incident without fields shows ``"fields": {}``; a request that sent no
    client certificate shows no ``client_cert`` at all.
    """
    path, _ = store
    shown = json.loads(cli("--db", str(path), "show", "1"))
    assert (shown["name"], shown["instance"], shown["fields"]) == ("d0", "default", {})
    assert set(shown["request"]) == {"id", "received", "client", "method", "path"}


def test_export_is_show_of_every_instance_per_line(store):
    """'export' prints what 'show' prints of each incident, every instance's."""
    path, names = store
    exported = json_lines(cli("--db", str(path), "export"))
    assert len(exported) == sum(len(n) for n in names.values())
    for incident in (exported[0], exported[2], exported[-1]):
        assert incident == json.loads(cli("--db", str(path), "show", incident["id"]))
    assert {i["instance"] for i in exported} == set(names)


def test_samples_are_the_20_most_recent_of_each_instance_keeping_them(store):
    """
    'samples' gives the 20 most recent incidents of each instance that keeps
    samples, whole, oldest first; 'samples --instance NAME' that instance's.
    """
    path, names = store
    kept = json.loads(cli("--db", str(path), "samples"))
    assert [s["id"] for s in kept] == sorted((s["id"] for s in kept), key=int)
    by_instance: dict[str, list[str]] = {}
    for sample in kept:
        by_instance.setdefault(sample["instance"], []).append(sample["name"])
    assert by_instance == {
        "wallarm": names["wallarm"][-20:],
        "other": names["other"][-20:],
    }
    wallarm = json.loads(cli("--db", str(path), "samples", "--instance", "wallarm"))
    assert [s["name"] for s in wallarm] == names["wallarm"][-20:]
    assert wallarm[0] == json.loads(cli("--db", str(path), "show", wallarm[0]["id"]))
    assert wallarm[0]["request"]["client_cert"] == CERT


@pytest.mark.parametrize("instance", ["quiet", "nobody"])
def test_samples_of_an_instance_without_any(store, instance):
    """
    'samples --instance NAME' of an instance that keeps none, or of no
    instance, prints [] with status 0 and says so in one line on stderr.
    """
    path, _ = store
    result = run_cli("--db", str(path), "samples", "--instance", instance)
    assert result.returncode == 0
    assert json.loads(result.stdout) == []
    assert result.stderr.startswith(
        f"gwebhook samples: {path} holds no samples of instance '{instance}'; "
    )
    assert len(result.stderr.splitlines()) == 1


# -- a store written before instances, not yet upgraded -----------------------


@pytest.fixture
def v2_store(tmp_path):
    """
    A store of the schema before instances, as its daemon wrote it: one
    request of two incidents, one of them a sample.
    """
    path = tmp_path / "old.sqlite"
    write_v2_store(path, requests=2)
    return path


def test_a_store_from_before_instances_reads_as_the_default_instance(v2_store):
    """
    Read before its daemon upgraded it, a store from before instances reads
    as the default instance's, without fields or client certificates, and
    stays as it was.
    """
    lines = json_lines(cli("--db", str(v2_store), "list"))
    assert [(line["name"], line["instance"]) for line in lines] == [
        ("old-0-0", "default"),
        ("old-1-0", "default"),
    ]
    assert json_lines(cli("--db", str(v2_store), "list", "--instance", "default"))
    assert cli("--db", str(v2_store), "list", "--instance", "wallarm") == ""
    shown = json.loads(cli("--db", str(v2_store), "show", lines[0]["id"]))
    assert (shown["instance"], shown["fields"]) == ("default", {})
    assert "client_cert" not in shown["request"]
    assert json_lines(cli("--db", str(v2_store), "export"))[0] == shown
    samples = json.loads(cli("--db", str(v2_store), "samples", "--instance", "default"))
    assert [s["name"] for s in samples] == ["old-0-0", "old-1-0"]
    with contextlib.closing(sqlite3.connect(v2_store)) as db:
        assert db.execute("PRAGMA user_version").fetchone() == (2,)
