"""The daemon, started as operators start it, stores what a sender posts."""

import sqlite3

import pytest
from support.credentials import AUTH, HEADERS

# Every test here starts twistd.
pytestmark = pytest.mark.process


def test_basic_auth_post_is_stored(daemon):
    """A POST with Basic credentials is answered 200 with its incident, and stored."""
    d = daemon(*AUTH)
    reply = d.request(body=b'{"name": "x"}', headers=HEADERS)
    assert reply.status == 200, reply.body
    [incident] = reply.json()
    assert incident["name"] == "x"
    rows = sqlite3.connect(d.db).execute("SELECT id, name FROM incidents").fetchall()
    assert rows == [(int(incident["id"]), "x")]
