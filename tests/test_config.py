"""``--config FILE``: the instances a TOML file declares, and every refusal."""

from __future__ import annotations

import base64
import textwrap
from pathlib import Path

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from gwebhook.config import (
    Config,
    ConfigError,
    InstanceConfig,
    MTLSConfig,
    load_config,
    parse_config,
    read_database,
)
from gwebhook.credentials import Credentials
from gwebhook.dedup import DedupConfig
from gwebhook.instances import command_line_instance
from gwebhook.mapping import compile_mapping
from gwebhook.signatures import SignatureConfig

FILE = "gwebhook.toml"

OPEN = '[[instance]]\nname = "open"\nanonymous = true\n'


@pytest.fixture
def here(tmp_path, monkeypatch) -> Path:
    """A directory to work in, the current one, so messages name ``gwebhook.toml``."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def write(here: Path, text: str, name: str = FILE) -> str:
    path = here / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return name


def load(here: Path, text: str, environ=None) -> Config:
    return load_config(write(here, text), environ or {})


def only(here: Path, text: str, environ=None) -> InstanceConfig:
    [instance] = load(here, text, environ).instances
    return instance


def refused(here: Path, text: str, environ=None) -> str:
    with pytest.raises(ConfigError) as caught:
        load(here, text, environ)
    message = str(caught.value)
    assert "\n" not in message
    return message


def instance(body: str, **sections: str) -> str:
    """An [[instance]] named ``w`` with ``body``, then ``[instance.KEY]`` sections."""
    text = f'[[instance]]\nname = "w"\n{textwrap.dedent(body)}'
    for key, content in sections.items():
        text += f"[instance.{key}]\n{textwrap.dedent(content)}"
    return text


def basic(**extra: str) -> str:
    """An instance with Basic credentials given inline."""
    return instance("", auth='username = "u"\npassword = "p"\n', **extra)


# -- a whole file -------------------------------------------------------------------


def test_the_documented_example_loads_with_every_value(here, ca):
    """The documented example loads, with paths resolved and secrets read."""
    (here / "wallarm.pw").write_text("s3cret\n")
    ca.cert_pem.write_to_path(here / "clients-ca.pem")
    config = load(
        here,
        """
        [[instance]]
        name = "wallarm"                 # required
        incident_type = "Wallarm"
        store_samples = true
        port = 9443

          [instance.auth]
          username = "wallarm"
          password_file = "wallarm.pw"

          [instance.mtls]
          client_ca = "clients-ca.pem"
          client_names = ["sensor-1.example.com"]

          [instance.map]
          name = "title"
          type = "join(' ', ['Wallarm', object_type])"
          occurred = "create_time"

          [instance.fields]
          severity = "threat"

        [[instance]]
        name = "github.hooks-2"
        anonymous = true
        """,
    )
    wallarm, github = config.instances
    assert config.path == FILE
    assert wallarm == InstanceConfig(
        name="wallarm",
        incident_type="Wallarm",
        store_samples=True,
        port=9443,
        cert=None,
        key=None,
        anonymous=False,
        credentials=Credentials.from_options("wallarm", "s3cret"),
        mtls=MTLSConfig(
            str(here / "clients-ca.pem"),
            ("sensor-1.example.com",),
            wallarm.mtls.ca_certificates,
        ),
        mapping=compile_mapping(
            {
                "name": "title",
                "type": "join(' ', ['Wallarm', object_type])",
                "occurred": "create_time",
            },
            {"severity": "threat"},
        ),
    )
    assert github.name == "github.hooks-2"


def test_an_instance_gets_the_defaults(here):
    """Left out: no type of its own, no samples, no port, no certificate, no mapping."""
    assert only(here, OPEN) == InstanceConfig(
        name="open",
        incident_type=None,
        store_samples=False,
        port=None,
        cert=None,
        key=None,
        anonymous=True,
        credentials=None,
        mtls=None,
        mapping=None,
    )


def test_reading_the_same_file_twice_gives_equal_configs(here, ca):
    """A re-read of an unchanged file compares equal, mapping and CA included."""
    ca.cert_pem.write_to_path(here / "ca.pem")
    text = basic(mtls='client_ca = "ca.pem"\n', fields='s = "threat"\n')
    assert load(here, text) == load(here, text)


def test_a_changed_ca_file_makes_a_changed_instance(here, ca):
    """The CA's certificates take part in equality, so a new CA file is a change."""
    ca.cert_pem.write_to_path(here / "ca.pem")
    text = basic(mtls='client_ca = "ca.pem"\n')
    before = load(here, text)
    trustme.CA().cert_pem.write_to_path(here / "ca.pem")
    assert load(here, text) != before


def test_the_secret_stays_out_of_repr(here):
    """A config's repr, which may reach a log, never shows the password."""
    config = load(here, instance("", auth='username = "u"\npassword = "hunter2"\n'))
    assert "hunter2" not in repr(config)


def test_a_byte_order_mark_is_tolerated(here):
    """A file saved with a UTF-8 BOM loads."""
    (here / FILE).write_bytes(b"\xef\xbb\xbf" + OPEN.encode())
    assert load_config(FILE, {}).instances[0].name == "open"


# -- refusals: the file as a whole ----------------------------------------------------


def test_a_file_that_cannot_be_read_is_refused(here):
    """A missing file is refused, naming it."""
    with pytest.raises(ConfigError) as caught:
        load_config("nowhere.toml", {})
    assert str(caught.value) == (
        "nowhere.toml: cannot read: No such file or directory; "
        "give a TOML file the daemon can read"
    )


def test_a_file_that_is_not_utf8_is_refused(here):
    """A file that is not UTF-8 is refused with the offending byte."""
    (here / FILE).write_bytes(b'[[instance]]\nname = "\xff"\n')
    with pytest.raises(ConfigError) as caught:
        load_config(FILE, {})
    assert str(caught.value) == (
        "gwebhook.toml: not UTF-8 (byte 21); save the file as UTF-8"
    )


def test_unparseable_toml_is_refused_with_line_and_column(here):
    """TOML that does not parse is refused with where it went wrong."""
    assert refused(here, '[[instance]]\nname = "open\nanonymous = true\n') == (
        "gwebhook.toml: not valid TOML: Illegal character '\\n' "
        "(at line 2, column 13); fix the syntax there"
    )


def test_a_key_given_twice_is_refused(here):
    """TOML's own rule: a key given twice does not parse."""
    assert refused(here, OPEN + 'name = "again"\n') == (
        "gwebhook.toml: not valid TOML: Cannot overwrite a value "
        "(at line 4, column 15); fix the syntax there"
    )


@pytest.mark.parametrize("text", ["", "# nothing\n", "instance = []\n"])
def test_a_file_without_an_instance_is_refused(here, text):
    """A file that declares no instance is refused."""
    assert refused(here, text) == (
        "gwebhook.toml: declares no instance; add an [[instance]] with a name "
        "and who may send to it"
    )


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ('[instance]\nname = "a"\n', "a table"),
        ('instance = "a"\n', "a string"),
        ("instance = [1]\n", "an array"),
    ],
)
def test_instance_written_other_than_as_tables_is_refused(here, text, kind):
    """``instance`` must be an array of tables."""
    assert refused(here, text) == (
        f"gwebhook.toml: instance: must be [[instance]] tables, got {kind}; "
        'write each instance as [[instance]] with name = "..." below it'
    )


def test_an_unknown_top_level_key_is_refused(here):
    """A top-level key other than instance is refused."""
    assert refused(here, "listen = 1\n" + OPEN) == (
        "gwebhook.toml: listen: unknown key; the file takes [[instance]] tables, "
        "[api], [[forward]] tables, db and db_password_file"
    )


def test_db_and_its_password_file_are_read(here):
    """A URI stays as written; a SQLite path and the password file are made absolute."""
    (here / "db.pw").write_text("s3cret\n")
    uri = 'db = "postgresql://gw@db.example.com:5432/gw"\ndb_password_file = "db.pw"\n'
    loaded = load(here, uri + OPEN)
    assert loaded.db == "postgresql://gw@db.example.com:5432/gw"
    assert loaded.db_password_file == str(here / "db.pw")
    sqlite = str(here / "data/gw.sqlite")
    assert load(here, 'db = "data/gw.sqlite"\n' + OPEN).db == sqlite
    # What the gwebhook commands read of the same file.
    assert read_database(str(here / "gwebhook.toml")) == (sqlite, None)
    assert load(here, OPEN).db is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("db = 5\n", "db: must be a string, got an integer"),
        ('db = " "\n', "db: must not be empty; give a SQLite file or postgresql://"),
        (
            'db_password_file = "nope.pw"\n',
            "db_password_file: cannot read {here}/nope.pw: No such file or directory",
        ),
    ],
)
def test_a_bad_db_key_is_refused(here, text, message):
    assert refused(here, text + OPEN).startswith(
        "gwebhook.toml: " + message.format(here=here)
    )


# -- refusals: an instance's own keys ------------------------------------------------


def test_an_unknown_instance_key_is_refused(here):
    """An instance key that does not exist is refused, naming the instance."""
    assert refused(here, OPEN + "colour = 1\n") == (
        "gwebhook.toml: instance 'open': colour: unknown key; [[instance]] takes "
        "name, incident_type, store_samples, port, cert, key, anonymous, auth, "
        "mtls, signature, dedup, map, fields"
    )


def dedup_of(here: Path, text: str) -> DedupConfig | None:
    return only(here, text).dedup


def test_dedup_keys_header_and_window_are_read(here):
    """[instance.dedup] gives the keys in order, the header and the window."""
    text = (
        OPEN + '[instance.dedup]\nkeys = ["incidentId", "alertId"]\n'
        'header = "X-Delivery"\nwindow = 60\n'
    )
    assert dedup_of(here, text) == DedupConfig(
        ("incidentId", "alertId"), "X-Delivery", 60
    )


def test_dedup_defaults_to_seven_days_and_no_header(here):
    """Without a window, keys are remembered 7 days; without a header, none."""
    text = OPEN + '[instance.dedup]\nkeys = ["id"]\n'
    assert dedup_of(here, text) == DedupConfig(("id",), None, 604800)
    assert dedup_of(here, OPEN) is None


@pytest.mark.parametrize(
    ("scheme", "header"), [("standard", "webhook-id"), ("github", "X-GitHub-Delivery")]
)
def test_dedup_without_a_header_uses_the_schemes_delivery_id(here, scheme, header):
    """A standard or github signature's delivery id header is the default."""
    secret = (
        "whsec_" + base64.b64encode(b"k" * 24).decode() if scheme == "standard" else "s"
    )
    text = (
        signed(f'scheme = "{scheme}"\nsecrets = ["{secret}"]\n') + "[instance.dedup]\n"
    )
    loaded = dedup_of(here, text)
    assert loaded == DedupConfig((), header, 604800)


@pytest.mark.parametrize(
    ("body", "key", "problem"),
    [
        ("", "dedup", "has nothing to recognise a duplicate by"),
        ("colour = 1\n", "dedup.colour", "unknown key; [instance.dedup] takes keys"),
        ('keys = "id"\n', "dedup.keys", "must be an array of strings, got a string"),
        ("keys = []\n", "dedup.keys", "must be a non-empty array"),
        ('keys = ["id", 1]\n', "dedup.keys", "must be a non-empty array"),
        ('keys = [""]\n', "dedup.keys", "must be a non-empty array"),
        ('keys = ["id", "id"]\n', "dedup.keys", "names 'id' more than once"),
        ('header = "X Delivery"\n', "dedup.header", "'X Delivery' is not a header"),
        ("header = 1\n", "dedup.header", "must be a string, got an integer"),
        ('keys = ["id"]\nwindow = 0\n', "dedup.window", "0 would remember nothing"),
        ('keys = ["id"]\nwindow = -5\n', "dedup.window", "-5 would remember nothing"),
        ('keys = ["id"]\nwindow = 1.5\n', "dedup.window", "must be an integer"),
        ('keys = ["id"]\nwindow = true\n', "dedup.window", "must be an integer"),
    ],
)
def test_a_bad_dedup_table_is_refused(here, body, key, problem):
    """Each bad [instance.dedup] is refused in one line naming the key."""
    message = refused(here, OPEN + "[instance.dedup]\n" + body)
    assert message.startswith(f"gwebhook.toml: instance 'open': {key}: {problem}")


def test_dedup_must_be_a_table(here):
    """dedup = "yes" is refused as not a table."""
    assert refused(here, OPEN + 'dedup = "yes"\n') == (
        "gwebhook.toml: instance 'open': dedup: must be a table ([instance.dedup]), "
        "got a string"
    )


def test_an_instance_without_a_name_is_refused_by_its_position(here):
    """A missing name is refused, naming the instance by its place in the file."""
    assert refused(here, OPEN + "[[instance]]\nanonymous = true\n") == (
        "gwebhook.toml: instance #2: name: required; give the instance a "
        "name = \"...\" (use 1 to 64 letters, digits, '_', '.' or '-')"
    )


def test_a_name_that_is_not_a_string_is_refused(here):
    """A name must be a string."""
    assert refused(here, "[[instance]]\nname = 7\nanonymous = true\n") == (
        "gwebhook.toml: instance #1: name: must be a string, got an integer"
    )


@pytest.mark.parametrize("name", ["", "wall arm", "x" * 65, "wallarm/1", "é"])
def test_a_name_outside_the_alphabet_is_refused(here, name):
    """A name must be 1 to 64 letters, digits, '_', '.' or '-'."""
    text = f'[[instance]]\nname = "{name}"\nanonymous = true\n'
    assert refused(here, text) == (
        f"gwebhook.toml: instance #1: name: {name!r} is not a valid name; "
        "use 1 to 64 letters, digits, '_', '.' or '-'"
    )


def test_the_name_default_is_reserved_for_the_command_line(here):
    """``default`` names the command line's instance and is refused in the file."""
    text = '[[instance]]\nname = "default"\nanonymous = true\n'
    assert refused(here, text) == (
        "gwebhook.toml: instance 'default': name: 'default' is the instance the "
        "command line describes; choose another name"
    )


def test_a_duplicate_name_is_refused(here):
    """Two instances may not share a name."""
    assert refused(here, OPEN + OPEN) == (
        "gwebhook.toml: instance 'open': name: instance #1 has this name too; "
        "give each instance its own name"
    )


def test_an_empty_incident_type_is_refused(here):
    """incident_type, when given, must say something."""
    assert refused(here, OPEN + 'incident_type = " "\n') == (
        "gwebhook.toml: instance 'open': incident_type: must not be empty; "
        "leave it out to use the default type"
    )


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("incident_type = 1", "incident_type: must be a string, got an integer"),
        ('store_samples = "true"', "store_samples: must be a boolean, got a string"),
        ("store_samples = 1", "store_samples: must be a boolean, got an integer"),
        ('port = "9443"', "port: must be an integer, got a string"),
        ("port = 9443.0", "port: must be an integer, got a float"),
        ("port = true", "port: must be an integer, got a boolean"),
        ('cert = ["a"]', "cert: must be a string (a path), got an array"),
        ("key = 2024-01-01", "key: must be a string (a path), got a date or time"),
    ],
)
def test_a_value_of_the_wrong_type_is_refused(here, line, message):
    """Each key is type-checked: a TOML string "true" is not a boolean."""
    assert refused(here, OPEN + line + "\n") == (
        f"gwebhook.toml: instance 'open': {message}"
    )


def test_anonymous_as_a_string_is_refused(here):
    """anonymous = "true" is refused, not read as true."""
    text = '[[instance]]\nname = "w"\nanonymous = "true"\n'
    assert refused(here, text) == (
        "gwebhook.toml: instance 'w': anonymous: must be a boolean, got a string"
    )


@pytest.mark.parametrize("port", [0, -1, 65536])
def test_a_port_out_of_range_is_refused(here, port):
    """A port must be 1 to 65535; 0 (any free port) could not be told to a sender."""
    assert refused(here, OPEN + f"port = {port}\n") == (
        f"gwebhook.toml: instance 'open': port: {port} is out of range; "
        "give a port from 1 to 65535"
    )


@pytest.mark.parametrize("port", [1, 65535])
def test_ports_at_the_ends_of_the_range_are_accepted(here, port):
    """Ports 1 and 65535 are accepted."""
    assert only(here, OPEN + f"port = {port}\n").port == port


def test_a_duplicate_port_is_refused(here):
    """Two instances may not share a port."""
    text = OPEN + "port = 9443\n" + '[[instance]]\nname = "b"\nanonymous = true\n'
    assert refused(here, text + "port = 9443\n") == (
        "gwebhook.toml: instance 'b': port: 9443 is already the port of "
        "instance 'open'; give each instance its own port"
    )


# -- an instance's own certificate ---------------------------------------------------


def test_cert_and_key_are_resolved_against_the_files_directory(here):
    """Relative cert and key paths are relative to the file's directory."""
    (here / "etc" / "tls").mkdir(parents=True)
    (here / "etc" / "tls" / "w.crt").write_text("not read here")
    (here / "w.key").write_text("not read here")
    path = write(
        here,
        OPEN + 'port = 9443\ncert = "tls/w.crt"\nkey = "../w.key"\n',
        name="etc/gwebhook.toml",
    )
    [loaded] = load_config(path, {}).instances
    assert (loaded.cert, loaded.key) == (
        str(here / "etc" / "tls" / "w.crt"),
        str(here / "w.key"),
    )


def test_an_absolute_path_is_kept(here):
    """An absolute path stays as written."""
    (here / "w.crt").write_text("x")
    (here / "w.key").write_text("x")
    text = OPEN + f'port = 9443\ncert = "{here / "w.crt"}"\nkey = "{here / "w.key"}"\n'
    assert only(here, text).cert == str(here / "w.crt")


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (
            'cert = "w.crt"',
            "cert: given without key; give both cert and key, or neither to serve "
            "the main certificate",
        ),
        (
            'key = "w.key"',
            "key: given without cert; give both cert and key, or neither to serve "
            "the main certificate",
        ),
        (
            'cert = "w.crt"\nkey = "w.key"',
            "cert: needs port: an instance's own certificate is served on its own "
            "port only; add port = N, or drop cert and key",
        ),
    ],
)
def test_cert_and_key_come_together_and_with_a_port(here, line, message):
    """cert and key are given both or neither, and only with port."""
    (here / "w.crt").write_text("x")
    (here / "w.key").write_text("x")
    assert refused(here, OPEN + line + "\n") == (
        f"gwebhook.toml: instance 'open': {message}"
    )


def test_a_missing_certificate_file_is_refused(here):
    """A cert that cannot be read is refused with its resolved path."""
    (here / "w.key").write_text("x")
    text = OPEN + 'port = 9443\ncert = "w.crt"\nkey = "w.key"\n'
    assert refused(here, text) == (
        f"gwebhook.toml: instance 'open': cert: cannot read {here / 'w.crt'}: "
        "No such file or directory; give the PEM file of this instance's certificate"
    )


def test_a_key_that_is_a_directory_is_refused(here):
    """A key path naming a directory is refused."""
    (here / "w.crt").write_text("x")
    (here / "keys").mkdir()
    text = OPEN + 'port = 9443\ncert = "w.crt"\nkey = "keys"\n'
    assert refused(here, text) == (
        f"gwebhook.toml: instance 'open': key: cannot read {here / 'keys'}: "
        "Is a directory; give the PEM file of the certificate's private key"
    )


def test_an_empty_path_is_refused(here):
    """An empty path is refused rather than read as the file's directory."""
    (here / "w.key").write_text("x")
    text = OPEN + 'port = 9443\ncert = ""\nkey = "w.key"\n'
    assert refused(here, text) == (
        "gwebhook.toml: instance 'open': cert: must not be empty; give a path"
    )


# -- who may send -------------------------------------------------------------------


@pytest.mark.parametrize("body", ["", "anonymous = false\n"])
def test_an_instance_nobody_can_send_to_is_refused(here, body):
    """An instance needs auth, mtls, signature or anonymous = true."""
    assert refused(here, instance(body)) == (
        "gwebhook.toml: instance 'w': nobody could send to it; add "
        "[instance.auth], [instance.mtls] or [instance.signature], or "
        "anonymous = true to accept anyone"
    )


def test_anonymous_next_to_credentials_is_refused(here):
    """anonymous = true beside [instance.auth] contradicts it and is refused."""
    assert refused(here, basic().replace('"w"\n', '"w"\nanonymous = true\n')) == (
        "gwebhook.toml: instance 'w': anonymous: true contradicts [instance.auth]; "
        "drop anonymous to require them, or drop [instance.auth] to accept anyone"
    )


def test_anonymous_next_to_mtls_and_auth_names_both(here):
    """The contradiction names every section anonymous = true stands beside."""
    text = instance(
        "anonymous = true\n",
        auth='username = "u"\npassword = "p"\n',
        mtls='client_ca = "ca.pem"\n',
    )
    assert refused(here, text) == (
        "gwebhook.toml: instance 'w': anonymous: true contradicts [instance.auth] "
        "and [instance.mtls]; drop anonymous to require them, or drop "
        "[instance.auth] and [instance.mtls] to accept anyone"
    )


def test_anonymous_false_beside_credentials_is_accepted(here):
    """anonymous = false says what the credentials already say."""
    text = basic().replace('"w"\n', '"w"\nanonymous = false\n')
    assert only(here, text).anonymous is False


# -- [instance.auth] ---------------------------------------------------------------


def auth_refused(here, auth: str, environ=None) -> str:
    message = refused(here, instance("", auth=auth), environ)
    prefix = "gwebhook.toml: instance 'w': "
    assert message.startswith(prefix)
    return message[len(prefix) :]


def auth_of(here, auth: str, environ=None) -> Credentials:
    return only(here, instance("", auth=auth), environ).credentials


def test_auth_that_is_not_a_table_is_refused(here):
    """auth must be a table."""
    assert refused(here, instance('auth = "u:p"\n')) == (
        "gwebhook.toml: instance 'w': auth: must be a table ([instance.auth]), "
        "got a string"
    )


def test_an_unknown_auth_key_is_refused(here):
    """A misspelt auth key is refused with its dotted path."""
    assert auth_refused(here, 'username = "u"\npasword = "p"\n') == (
        "auth.pasword: unknown key; [instance.auth] takes username, password, "
        "password_file, password_env"
    )


@pytest.mark.parametrize(
    ("auth", "message"),
    [
        (
            'password = "p"',
            "auth.username: required; give the Basic user name, or _header:NAME "
            "to take the password from header NAME",
        ),
        (
            'username = 1\npassword = "p"',
            "auth.username: must be a string, got an integer",
        ),
        (
            'username = ""\npassword = "p"',
            "auth.username: must not be empty; give the Basic user name, or "
            "_header:NAME",
        ),
        (
            'username = "a:b"\npassword = "p"',
            "auth.username: cannot contain ':' (HTTP Basic forbids it)",
        ),
        (
            'username = "_header:X Token"\npassword = "p"',
            "auth.username: '_header:X Token' needs a header name after '_header:' "
            "(letters, digits and !#$%&'*+-.^_`|~), e.g. _header:Authorization",
        ),
        (
            'username = "_header:"\npassword = "p"',
            "auth.username: '_header:' needs a header name after '_header:' "
            "(letters, digits and !#$%&'*+-.^_`|~), e.g. _header:Authorization",
        ),
    ],
)
def test_a_bad_username_is_refused(here, auth, message):
    """The username is required, Basic-safe, or _header: with a header name."""
    assert auth_refused(here, auth + "\n") == message


def test_basic_credentials_are_built(here):
    """username and password make Basic credentials."""
    assert auth_of(here, 'username = "u"\npassword = "p"\n') == Credentials(
        header="authorization", secret=b"p", username=b"u"
    )


def test_header_credentials_are_built(here):
    """_header:NAME makes a header-token credential on that header, lowercased."""
    assert auth_of(
        here, 'username = "_header:X-Token"\npassword = "Bearer s3cret"\n'
    ) == Credentials(header="x-token", secret=b"Bearer s3cret")


@pytest.mark.parametrize("secret", ["tok ", " tok", "tök", "tok\\u0001"])
def test_a_header_secret_no_request_could_carry_is_refused(here, secret):
    """A header token must be printable ASCII without surrounding spaces."""
    auth = f'username = "_header:X-Token"\npassword = "{secret}"\n'
    assert auth_refused(here, auth) == (
        "auth: the password of a _header: credential must be printable ASCII "
        "without leading or trailing spaces, or no request could carry it"
    )


def test_a_basic_password_may_hold_any_text(here):
    """A Basic password may hold spaces and non-ASCII: it travels base64-encoded."""
    assert auth_of(here, 'username = "u"\npassword = " pä ss "\n').secret == (
        " pä ss ".encode()
    )


def test_no_password_source_is_refused(here):
    """A username without a password is refused."""
    assert auth_refused(here, 'username = "u"\n') == (
        "auth: no password; give one of password_file, password_env or password"
    )


def test_two_password_sources_are_refused(here):
    """Exactly one password source may be given."""
    assert auth_refused(
        here, 'username = "u"\npassword_env = "PW"\npassword = "p"\n'
    ) == (
        "auth: password and password_env both given; give exactly one of "
        "password, password_file, password_env"
    )


def test_an_empty_inline_password_is_refused(here):
    """password = "" is refused."""
    assert auth_refused(here, 'username = "u"\npassword = ""\n') == (
        "auth.password: must not be empty; give the password, or use "
        "password_file to keep it out of this file"
    )


@pytest.mark.parametrize(
    ("content", "secret"),
    [
        ("s3cret\n", b"s3cret"),
        ("s3cret", b"s3cret"),
        ("s3cret\n\n", b"s3cret\n"),
        (" s3 cret \n", b" s3 cret "),
    ],
)
def test_a_password_file_loses_one_trailing_newline(here, content, secret):
    """password_file is read whole, less one trailing newline."""
    (here / "pw").write_text(content)
    assert auth_of(here, 'username = "u"\npassword_file = "pw"\n').secret == secret


def test_a_password_file_is_resolved_against_the_files_directory(here):
    """A relative password_file is found beside the config file."""
    (here / "etc").mkdir()
    (here / "etc" / "pw").write_text("s3cret\n")
    path = write(
        here,
        instance("", auth='username = "u"\npassword_file = "pw"\n'),
        name="etc/gwebhook.toml",
    )
    [loaded] = load_config(path, {}).instances
    assert loaded.credentials.secret == b"s3cret"


def test_a_missing_password_file_is_refused(here):
    """A password_file that cannot be read is refused with its resolved path."""
    assert auth_refused(here, 'username = "u"\npassword_file = "w.pw"\n') == (
        f"auth.password_file: cannot read {here / 'w.pw'}: No such file or "
        "directory; give a file the daemon can read, holding just the password"
    )


def test_an_empty_password_file_is_refused(here):
    """A password_file holding nothing but a newline is refused."""
    (here / "pw").write_text("\n")
    assert auth_refused(here, 'username = "u"\npassword_file = "pw"\n') == (
        f"auth.password_file: {here / 'pw'} is empty; give a file the daemon can "
        "read, holding just the password"
    )


def test_a_password_file_that_is_not_utf8_is_refused(here):
    """A password_file that is not UTF-8 is refused."""
    (here / "pw").write_bytes(b"ab\xff\n")
    assert auth_refused(here, 'username = "u"\npassword_file = "pw"\n') == (
        f"auth.password_file: {here / 'pw'} is not UTF-8 (byte 2); give a file "
        "the daemon can read, holding just the password"
    )


def test_a_password_comes_from_the_named_environment_variable(here):
    """password_env names a variable of the environment given to load_config."""
    auth = 'username = "u"\npassword_env = "WALLARM_PW"\n'
    assert auth_of(here, auth, {"WALLARM_PW": "s3cret\n"}).secret == b"s3cret\n"


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        (
            {},
            "auth.password_env: environment variable $WALLARM_PW is not set; set it "
            "in the daemon's environment, or use password_file",
        ),
        (
            {"WALLARM_PW": ""},
            "auth.password_env: environment variable $WALLARM_PW is empty; set it "
            "to the password, or use password_file",
        ),
    ],
)
def test_an_unset_or_empty_environment_variable_is_refused(here, environ, message):
    """The variable password_env names must be set and not empty."""
    auth = 'username = "u"\npassword_env = "WALLARM_PW"\n'
    assert auth_refused(here, auth, environ) == message


def test_an_empty_environment_variable_name_is_refused(here):
    """password_env = "" is refused."""
    assert auth_refused(here, 'username = "u"\npassword_env = ""\n') == (
        "auth.password_env: must name an environment variable; give its name"
    )


def test_a_password_source_of_the_wrong_type_is_refused(here):
    """A password source must be a string."""
    assert auth_refused(here, 'username = "u"\npassword_file = ["a"]\n') == (
        "auth.password_file: must be a string, got an array"
    )


# -- [instance.mtls] ----------------------------------------------------------------


def mtls_refused(here, mtls: str) -> str:
    message = refused(here, instance("", mtls=mtls))
    prefix = "gwebhook.toml: instance 'w': "
    assert message.startswith(prefix)
    return message[len(prefix) :]


CA_FIX = "give the PEM file of the CA that issues the senders' certificates"


def test_mtls_loads_the_ca_and_the_names(here, ca):
    """client_ca is read at load; client_names default to none."""
    ca.cert_pem.write_to_path(here / "ca.pem")
    mtls = only(here, instance("", mtls='client_ca = "ca.pem"\n')).mtls
    assert mtls.client_ca == str(here / "ca.pem")
    assert mtls.client_names == ()
    [certificate] = mtls.ca_certificates
    assert certificate.public_bytes(Encoding.PEM) == ca.cert_pem.bytes()


def test_mtls_alone_lets_an_instance_be_reached(here, ca):
    """An instance with only [instance.mtls] has no credentials and is not anonymous."""
    ca.cert_pem.write_to_path(here / "ca.pem")
    loaded = only(
        here,
        instance("", mtls='client_ca = "ca.pem"\nclient_names = ["a", "b.example"]\n'),
    )
    assert (loaded.credentials, loaded.anonymous) == (None, False)
    assert loaded.mtls.client_names == ("a", "b.example")


def test_a_ca_file_of_several_cas_is_read_whole(here, ca):
    """Every CA certificate of the file is kept."""
    other = trustme.CA()
    (here / "ca.pem").write_bytes(ca.cert_pem.bytes() + other.cert_pem.bytes())
    mtls = only(here, instance("", mtls='client_ca = "ca.pem"\n')).mtls
    assert len(mtls.ca_certificates) == 2


def test_mtls_that_is_not_a_table_is_refused(here):
    """mtls must be a table."""
    assert refused(here, instance('mtls = "ca.pem"\n')) == (
        "gwebhook.toml: instance 'w': mtls: must be a table ([instance.mtls]), "
        "got a string"
    )


def test_an_unknown_mtls_key_is_refused(here):
    """A misspelt mtls key is refused with its dotted path."""
    assert mtls_refused(here, 'client_ca = "ca.pem"\nclient_name = ["a"]\n') == (
        "mtls.client_name: unknown key; [instance.mtls] takes client_ca, client_names"
    )


def test_mtls_without_a_ca_is_refused(here):
    """client_ca is required."""
    assert mtls_refused(here, 'client_names = ["a"]\n') == (
        f"mtls.client_ca: required; {CA_FIX}"
    )


def test_a_missing_ca_file_is_refused(here):
    """A client_ca that cannot be read is refused with its resolved path."""
    assert mtls_refused(here, 'client_ca = "ca.pem"\n') == (
        f"mtls.client_ca: cannot read {here / 'ca.pem'}: No such file or "
        f"directory; {CA_FIX}"
    )


def test_a_ca_file_without_a_certificate_is_refused(here, ca):
    """A file with no PEM certificate in it (a key, say) is refused."""
    (here / "ca.pem").write_bytes(ca.private_key_pem.bytes())
    assert mtls_refused(here, 'client_ca = "ca.pem"\n') == (
        f"mtls.client_ca: {here / 'ca.pem'} holds no PEM certificate; {CA_FIX}"
    )


def test_a_ca_file_with_a_broken_certificate_is_refused(here):
    """A PEM block that is not a certificate is refused."""
    (here / "ca.pem").write_text(
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
    )
    assert mtls_refused(here, 'client_ca = "ca.pem"\n') == (
        f"mtls.client_ca: {here / 'ca.pem'} holds a certificate that cannot be "
        f"parsed; {CA_FIX}"
    )


def test_a_leaf_certificate_as_the_ca_is_refused(here, ca):
    """A certificate that is not a CA's (a sender's own, say) is refused."""
    leaf = ca.issue_cert("sensor-1.example.com")
    leaf.cert_chain_pems[0].write_to_path(here / "ca.pem")
    certificate = x509.load_pem_x509_certificate(leaf.cert_chain_pems[0].bytes())
    subject = certificate.subject.rfc4514_string()
    assert mtls_refused(here, 'client_ca = "ca.pem"\n') == (
        f"mtls.client_ca: {here / 'ca.pem'} holds a certificate that is not a CA "
        f"({subject}); {CA_FIX}, not one it issued"
    )


def test_a_chain_with_a_leaf_in_it_is_refused(here, ca):
    """Every certificate of the file must be a CA's."""
    leaf = ca.issue_cert("sensor-1.example.com")
    (here / "ca.pem").write_bytes(ca.cert_pem.bytes() + leaf.cert_chain_pems[0].bytes())
    assert "holds a certificate that is not a CA" in mtls_refused(
        here, 'client_ca = "ca.pem"\n'
    )


@pytest.mark.parametrize(
    ("names", "message"),
    [
        ('"a"', "must be an array of strings, got a string"),
        ('["a", 1]', "entry 2 must be a non-empty string, got an integer"),
        ('["a", ""]', "entry 2 must be a non-empty string, got a string"),
        (
            "[]",
            "an empty list would refuse every client; leave it out to accept any "
            "certificate the CA issued",
        ),
    ],
)
def test_bad_client_names_are_refused(here, ca, names, message):
    """client_names is a non-empty array of non-empty strings."""
    ca.cert_pem.write_to_path(here / "ca.pem")
    mtls = f'client_ca = "ca.pem"\nclient_names = {names}\n'
    assert mtls_refused(here, mtls) == f"mtls.client_names: {message}"


# -- [instance.map] and [instance.fields] ----------------------------------------------


def test_map_and_fields_are_compiled(here):
    """[instance.map] and [instance.fields] make the instance's mapping."""
    loaded = only(here, basic(map='name = "title"\n', fields='severity = "threat"\n'))
    assert loaded.mapping == compile_mapping({"name": "title"}, {"severity": "threat"})
    assert loaded.mapping.apply({"title": "t", "threat": 3}).fields == {"severity": 3}


def test_empty_map_and_fields_make_no_mapping(here):
    """Empty [instance.map] and [instance.fields] tables are no mapping."""
    assert only(here, basic(map="", fields="")).mapping is None


@pytest.mark.parametrize(
    ("sections", "message"),
    [
        (
            {"map": 'title = "x"\n'},
            "map.title: unknown key; [instance.map] takes name, type, occurred",
        ),
        (
            {"map": "name = 1\n"},
            "map.name: must be a string (a JMESPath expression), got an integer",
        ),
        (
            {"fields": "severity = true\n"},
            "fields.severity: must be a string (a JMESPath expression), got a boolean",
        ),
        (
            {"map": 'type = "a["\n'},
            "map.type: 'a[' is not a valid JMESPath expression: the expression "
            "ends too early; see jmespath.org for the syntax",
        ),
        (
            {"fields": 'severity = "lenght(a)"\n'},
            "fields.severity: 'lenght(a)': "
            "unknown function lenght(); see jmespath.org for the functions",
        ),
        (
            {"fields": '"bad key" = "a"\n'},
            'fields."bad key": not a valid field '
            "name; use 1 to 64 letters, digits, '_', '.' or '-'",
        ),
    ],
)
def test_a_bad_mapping_is_refused_naming_instance_and_key(here, sections, message):
    """A bad map or field is refused at load, naming the instance and the key."""
    assert refused(here, basic(**sections)) == (
        f"gwebhook.toml: instance 'w': {message}"
    )


def test_map_that_is_not_a_table_is_refused(here):
    """map must be a table."""
    assert refused(here, OPEN + 'map = "title"\n') == (
        "gwebhook.toml: instance 'open': map: must be a table ([instance.map]), "
        "got a string"
    )


# -- unknown keys anywhere ----------------------------------------------------------

KNOWN = {
    None: {"instance", "api", "forward", "db", "db_password_file"},
    "instance": {
        "name",
        "incident_type",
        "store_samples",
        "port",
        "cert",
        "key",
        "anonymous",
        "auth",
        "mtls",
        "map",
        "fields",
        "signature",
        "dedup",
    },
    "auth": {"username", "password", "password_file", "password_env"},
    "mtls": {"client_ca", "client_names"},
    "map": {"name", "type", "occurred"},
}


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    where=st.sampled_from(sorted(KNOWN, key=str)),
    key=st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=12),
    value=st.sampled_from([1, "x", True, [], {}]),
)
def test_an_unknown_key_anywhere_is_refused(where, key, value):
    """Any key the file does not know, at any level, is refused with its path."""
    if key in KNOWN[where]:
        return
    table = {
        "name": "w",
        "auth": {"username": "u", "password": "p"},
        "map": {"name": "title"},
    }
    if where == "mtls":
        # Keys are checked before the CA file is read: none is needed.
        table["mtls"] = {"client_ca": "ca.pem"}
    document = {"instance": [table]}
    target = {None: document, "instance": table}.get(where) or table[where]
    target[key] = value
    with pytest.raises(ConfigError) as caught:
        parse_config(document, "/etc/gwebhook.toml", {})
    message = str(caught.value)
    path = parse_path(message)
    assert path[-1] == key
    assert path[:-1] == ([] if where in (None, "instance") else [where])
    assert ": unknown key; " in message
    assert "\n" not in message


def parse_path(message: str) -> list[str]:
    """The key path of a message, read back from its TOML dotted form."""
    head = message.split(": unknown key; ")[0]
    rest = head.removeprefix("/etc/gwebhook.toml: ").removeprefix("instance 'w': ")
    document = tomllib.loads(f"{rest} = 1")
    path = []
    while isinstance(document, dict):
        [(part, document)] = document.items()
        path.append(part)
    return path


# -- [instance.signature] -----------------------------------------------------------

# A Standard Webhooks secret and the key it stands for.
WHSEC = "whsec_" + base64.b64encode(b"0123456789abcdef01234567").decode()


def signed(signature: str, body: str = "") -> str:
    """An instance reached by signature alone, with ``signature`` as its table."""
    return instance(body, signature=signature)


def signature_of(here: Path, signature: str, environ=None) -> SignatureConfig:
    loaded = only(here, signed(signature), environ).signature
    assert loaded is not None
    return loaded


@pytest.mark.parametrize("scheme", ["github", "stripe", "slack"])
def test_a_signature_alone_lets_an_instance_be_reached(here, scheme):
    """A scheme and its secrets are enough: no password is needed beside them."""
    loaded = only(here, signed(f'scheme = "{scheme}"\nsecrets = ["s3cret"]\n'))
    assert loaded.credentials is None
    assert loaded.anonymous is False
    assert loaded.signature == SignatureConfig(scheme, (b"s3cret",), 300)


def test_an_instance_without_signature_has_none(here):
    """An instance that declares no signature checks none."""
    assert only(here, OPEN).signature is None


def test_a_stripe_secret_is_the_key_as_written(here):
    """Stripe's whsec_ endpoint secret is the HMAC key byte for byte."""
    loaded = signature_of(here, 'scheme = "stripe"\nsecrets = ["whsec_abc"]\n')
    assert loaded.secrets == (b"whsec_abc",)


def test_a_standard_secret_is_the_base64_key_after_whsec(here):
    """A Standard Webhooks secret stands for the base64 decoding after whsec_."""
    loaded = signature_of(here, f'scheme = "standard"\nsecrets = ["{WHSEC}"]\n')
    assert loaded.secrets == (b"0123456789abcdef01234567",)


@pytest.mark.parametrize(
    ("secret", "why"),
    [
        ("MDEyMzQ1Njc4OWFiY2RlZg==", "does not start with whsec_"),
        ("whsec_not*base64", "what follows whsec_ is not base64"),
        ("whsec_", "no key follows whsec_"),
    ],
)
def test_a_standard_secret_that_is_no_key_is_refused_without_showing_it(
    here, secret, why
):
    """A standard secret must be whsec_ and base64; the refusal does not repeat it."""
    text = f'scheme = "standard"\nsecrets = ["{WHSEC}", "{secret}"]\n'
    assert signature_refused(here, text) == (
        f"signature.secrets: entry 2 is no Standard Webhooks secret ({why}); give "
        "it as the sender shows it, whsec_ and the base64 key"
    )


def test_several_secrets_are_kept_in_order(here):
    """Every secret of the list is kept, for rotation."""
    loaded = signature_of(here, 'scheme = "github"\nsecrets = ["old", "new"]\n')
    assert loaded.secrets == (b"old", b"new")


def test_secrets_file_holds_one_per_line_relative_to_the_file(here):
    """secrets_file is read beside the config file: one per line, blanks skipped."""
    (here / "conf").mkdir()
    (here / "conf" / "hook.secrets").write_bytes(b"first\r\n\n  \nsecond\n")
    config = load_config(
        write(
            here,
            signed('scheme = "slack"\nsecrets_file = "hook.secrets"\n'),
            "conf/gwebhook.toml",
        ),
        {},
    )
    assert config.instances[0].signature == SignatureConfig(
        "slack", (b"first", b"second")
    )


def test_secrets_env_holds_secrets_separated_by_whitespace(here):
    """secrets_env names a variable of one or more secrets split on whitespace."""
    loaded = signature_of(
        here,
        'scheme = "github"\nsecrets_env = "HOOK_SECRETS"\n',
        {"HOOK_SECRETS": " old\tnew\n"},
    )
    assert loaded.secrets == (b"old", b"new")


def test_a_rewritten_secrets_file_makes_a_changed_instance(here):
    """Reading the file again after a rotation gives a different instance."""
    (here / "hook.secrets").write_text("old\n")
    text = signed('scheme = "github"\nsecrets_file = "hook.secrets"\n')
    before = only(here, text)
    (here / "hook.secrets").write_text("old\nnew\n")
    after = only(here, text)
    assert before != after
    assert after.signature is not None
    assert after.signature.secrets == (b"old", b"new")


def test_secrets_stay_out_of_an_instances_repr(here):
    """An instance's repr, which may reach a log, holds none of its secrets."""
    loaded = only(here, signed('scheme = "github"\nsecrets = ["hunter2-secret"]\n'))
    assert "hunter2" not in repr(loaded)


def test_defaults_of_a_timestamped_scheme_and_its_tolerance(here):
    """tolerance defaults to 300 s and may be set for a scheme signing a timestamp."""
    assert signature_of(here, 'scheme = "slack"\nsecrets = ["s"]\n').tolerance == 300
    loaded = signature_of(
        here, f'scheme = "standard"\nsecrets = ["{WHSEC}"]\ntolerance = 60\n'
    )
    assert loaded.tolerance == 60


def test_hmac_loads_header_algorithm_encoding_and_prefix(here):
    """The generic scheme keeps its header, algorithm, encoding and prefix."""
    loaded = signature_of(
        here,
        """\
        scheme = "hmac"
        secrets = ["shpss"]
        header = "X-Shopify-Hmac-Sha256"
        algorithm = "sha512"
        encoding = "base64"
        prefix = "sha512="
        """,
    )
    assert loaded == SignatureConfig(
        "hmac",
        (b"shpss",),
        header="X-Shopify-Hmac-Sha256",
        algorithm="sha512",
        encoding="base64",
        prefix="sha512=",
    )


def test_hmac_defaults_to_sha256_in_hex_without_prefix(here):
    """Without algorithm, encoding and prefix: HMAC-SHA256, hex, nothing before it."""
    loaded = signature_of(here, 'scheme = "hmac"\nsecrets = ["s"]\nheader = "X-Sig"\n')
    assert (loaded.algorithm, loaded.encoding, loaded.prefix) == ("sha256", "hex", "")


def test_anonymous_next_to_a_signature_is_refused(here):
    """anonymous = true beside [instance.signature] contradicts it."""
    text = signed('scheme = "github"\nsecrets = ["s"]\n', "anonymous = true\n")
    assert refused(here, text) == (
        "gwebhook.toml: instance 'w': anonymous: true contradicts "
        "[instance.signature]; drop anonymous to require them, or drop "
        "[instance.signature] to accept anyone"
    )


def test_anonymous_next_to_every_way_in_names_all_three(here):
    """The contradiction lists auth, mtls and signature."""
    text = instance(
        "anonymous = true\n",
        auth='username = "u"\npassword = "p"\n',
        mtls='client_ca = "ca.pem"\n',
        signature='scheme = "github"\nsecrets = ["s"]\n',
    )
    assert refused(here, text) == (
        "gwebhook.toml: instance 'w': anonymous: true contradicts [instance.auth], "
        "[instance.mtls] and [instance.signature]; drop anonymous to require them, "
        "or drop [instance.auth], [instance.mtls] and [instance.signature] to "
        "accept anyone"
    )


def test_a_signature_beside_credentials_keeps_both(here):
    """With auth and signature both given, both are kept (both must pass)."""
    loaded = only(
        here,
        instance(
            "",
            auth='username = "u"\npassword = "p"\n',
            signature='scheme = "github"\nsecrets = ["s"]\n',
        ),
    )
    assert loaded.credentials == Credentials.from_options("u", "p")
    assert loaded.signature == SignatureConfig("github", (b"s",))


def signature_refused(here: Path, signature: str, environ=None) -> str:
    return refused(here, signed(signature), environ).removeprefix(
        "gwebhook.toml: instance 'w': "
    )


@pytest.mark.parametrize(
    ("signature", "message"),
    [
        (
            'secrets = ["s"]\n',
            "signature.scheme: required; give one of github, stripe, slack, "
            "standard, hmac",
        ),
        (
            'scheme = "gitlab"\nsecrets = ["s"]\n',
            "signature.scheme: 'gitlab' is not a scheme gwebhook checks; give one "
            'of github, stripe, slack, standard, hmac, or "hmac" with the header, '
            "algorithm and encoding the sender uses",
        ),
        (
            'scheme = 1\nsecrets = ["s"]\n',
            "signature.scheme: must be a string, got an integer",
        ),
        (
            'scheme = "github"\nsecrets = ["s"]\ncolour = 1\n',
            "signature.colour: unknown key; [instance.signature] takes scheme, "
            "secrets, secrets_file, secrets_env, tolerance, header, algorithm, "
            "encoding, prefix",
        ),
        (
            'scheme = "github"\n',
            "signature: no secrets; give one of secrets_file, secrets_env or secrets",
        ),
        (
            'scheme = "github"\nsecrets = ["s"]\nsecrets_env = "V"\n',
            "signature: secrets and secrets_env both given; give exactly one of "
            "secrets, secrets_file, secrets_env",
        ),
        (
            'scheme = "github"\nsecrets = []\n',
            "signature.secrets: an empty list would refuse every request; give "
            "the secrets",
        ),
        (
            'scheme = "github"\nsecrets = "s"\n',
            "signature.secrets: must be an array of strings, got a string",
        ),
        (
            'scheme = "github"\nsecrets = ["s", 2]\n',
            "signature.secrets: entry 2 must be a string, got an integer",
        ),
        (
            'scheme = "github"\nsecrets = ["s", ""]\n',
            "signature.secrets: entry 2 is empty; give the secret",
        ),
        (
            'scheme = "github"\nsecrets = ["hunter2 "]\n',
            "signature.secrets: entry 1 starts or ends with whitespace; remove it",
        ),
        (
            'scheme = "github"\nsecrets_env = ""\n',
            "signature.secrets_env: must name an environment variable; give its name",
        ),
        (
            'scheme = "github"\nsecrets_env = "UNSET"\n',
            "signature.secrets_env: environment variable $UNSET is not set; set it "
            "in the daemon's environment, or use secrets_file",
        ),
        (
            'scheme = "github"\nsecrets_env = "BLANK"\n',
            "signature.secrets_env: environment variable $BLANK holds no secret; "
            "set it to one or more secrets separated by spaces",
        ),
        (
            'scheme = "github"\nsecrets_file = ""\n',
            "signature.secrets_file: must not be empty; give a path",
        ),
        (
            'scheme = "github"\nsecrets = ["s"]\ntolerance = 300\n',
            "signature.tolerance: github signs no timestamp, so there is nothing "
            "to hold to a tolerance; remove it",
        ),
        (
            'scheme = "hmac"\nsecrets = ["s"]\nheader = "X"\ntolerance = 300\n',
            "signature.tolerance: hmac signs no timestamp, so there is nothing "
            "to hold to a tolerance; remove it",
        ),
        (
            'scheme = "stripe"\nsecrets = ["s"]\ntolerance = 0\n',
            "signature.tolerance: 0 would refuse every request; give the seconds "
            "a signed timestamp may be from now (default 300)",
        ),
        (
            'scheme = "slack"\nsecrets = ["s"]\ntolerance = "300"\n',
            "signature.tolerance: must be an integer (seconds), got a string",
        ),
        (
            'scheme = "slack"\nsecrets = ["s"]\ntolerance = true\n',
            "signature.tolerance: must be an integer (seconds), got a boolean",
        ),
        (
            'scheme = "github"\nsecrets = ["s"]\nheader = "X-Hub-Signature-256"\n',
            'signature.header: only scheme = "hmac" takes it; github always signs '
            "the same way, so remove it",
        ),
        (
            'scheme = "standard"\nsecrets = ["s"]\nencoding = "base64"\n',
            'signature.encoding: only scheme = "hmac" takes it; standard always '
            "signs the same way, so remove it",
        ),
        (
            'scheme = "hmac"\nsecrets = ["s"]\n',
            'signature.header: required for scheme = "hmac"; give the header the '
            "sender puts its signature in, e.g. X-Shopify-Hmac-Sha256",
        ),
        (
            'scheme = "hmac"\nsecrets = ["s"]\nheader = "X Sig"\n',
            "signature.header: 'X Sig' is not a header name; use letters, digits "
            "and !#$%&'*+-.^_`|~",
        ),
        (
            'scheme = "hmac"\nsecrets = ["s"]\nheader = "X"\nalgorithm = "md5"\n',
            "signature.algorithm: 'md5' is not one gwebhook knows; give one of "
            "sha1, sha256, sha512",
        ),
        (
            'scheme = "hmac"\nsecrets = ["s"]\nheader = "X"\nencoding = "b32"\n',
            "signature.encoding: 'b32' is not one gwebhook knows; give one of "
            "hex, base64",
        ),
        (
            'scheme = "hmac"\nsecrets = ["s"]\nheader = "X"\nprefix = " sha="\n',
            "signature.prefix: must be printable ASCII without leading spaces, or "
            "no request could carry it",
        ),
        (
            'scheme = "hmac"\nsecrets = ["s"]\nheader = "X"\nprefix = "ş="\n',
            "signature.prefix: must be printable ASCII without leading spaces, or "
            "no request could carry it",
        ),
    ],
)
def test_a_bad_signature_table_is_refused_naming_the_key(here, signature, message):
    """Every refusal of [instance.signature] names the instance, the key and the fix."""
    assert signature_refused(here, signature, {"BLANK": " \n"}) == message


def test_a_signature_that_is_not_a_table_is_refused(here):
    """signature must be a table."""
    assert refused(here, instance('signature = "github"\n')) == (
        "gwebhook.toml: instance 'w': signature: must be a table "
        "([instance.signature]), got a string"
    )


def test_a_missing_secrets_file_is_refused(here):
    """A secrets file that cannot be read is refused, naming its path."""
    message = signature_refused(here, 'scheme = "github"\nsecrets_file = "none"\n')
    assert message == (
        f"signature.secrets_file: cannot read {here / 'none'}: No such file or "
        "directory; give a file the daemon can read, holding one secret per line"
    )


def test_a_secrets_file_of_blank_lines_is_refused(here):
    """A secrets file with no secret in it is refused."""
    (here / "hook.secrets").write_text("\n  \n\n")
    message = signature_refused(
        here, 'scheme = "github"\nsecrets_file = "hook.secrets"\n'
    )
    assert message == (
        f"signature.secrets_file: {here / 'hook.secrets'} holds no secret; write "
        "one secret per line"
    )


def test_a_secret_line_with_spaces_is_refused_by_number_not_by_value(here):
    """A line whose secret has spaces around it is named by its number only."""
    (here / "hook.secrets").write_text("good\n\nhunter2 \n")
    message = signature_refused(
        here, 'scheme = "github"\nsecrets_file = "hook.secrets"\n'
    )
    assert message == (
        f"signature.secrets_file: line 3 of {here / 'hook.secrets'} starts or "
        "ends with whitespace; remove it"
    )
    assert "hunter2" not in message


def test_a_secrets_file_that_is_not_utf8_is_refused(here):
    """A secrets file must be UTF-8."""
    (here / "hook.secrets").write_bytes(b"ok\n\xff\n")
    message = signature_refused(
        here, 'scheme = "github"\nsecrets_file = "hook.secrets"\n'
    )
    assert message == (
        f"signature.secrets_file: {here / 'hook.secrets'} is not UTF-8 (byte 3); "
        "give a file the daemon can read, holding one secret per line"
    )


def test_a_standard_secret_from_the_environment_is_named_by_position(here):
    """A bad standard secret from secrets_env is named by its place in the variable."""
    message = signature_refused(
        here,
        'scheme = "standard"\nsecrets_env = "KEYS"\n',
        {"KEYS": f"{WHSEC} whsec_hunter2!"},
    )
    assert message == (
        "signature.secrets_env: secret 2 of $KEYS is no Standard Webhooks secret "
        "(what follows whsec_ is not base64); give it as the sender shows it, "
        "whsec_ and the base64 key"
    )
    assert "hunter2" not in message


def test_the_command_line_instance_has_no_signature():
    """The instance the command line describes is built as before, without one."""
    credentials = Credentials.from_options("u", "p")
    default = command_line_instance(credentials, False, None, False)
    assert default is not None
    assert default.signature is None


# -- [[forward]] ------------------------------------------------------------------

FORWARD = '[[forward]]\nname = "xsoar"\nurl = "https://xsoar.example.com/x"\n'


def test_a_forward_alone_makes_a_config_and_takes_its_defaults(here):
    """A file may hold only [[forward]]; every key has its default."""
    [forward] = load(here, FORWARD).forwards
    assert (forward.name, forward.url, forward.instances) == (
        "xsoar",
        "https://xsoar.example.com/x",
        None,
    )
    assert (forward.format, forward.method, forward.batch) == ("xsoar", "POST", 1)
    assert (forward.timeout, forward.connect_timeout, forward.max_age) == (
        15.0,
        20.0,
        86400,
    )
    assert forward.verify and forward.trust is None and forward.sign_key is None
    assert forward.takes("anything")


def test_a_forward_reads_every_key(here, ca):
    ca.cert_pem.write_to_path(str(here / "ca.pem"))
    (here / "fw.pw").write_text("pw\n")
    text = (
        FORWARD
        + 'instances = ["open"]\nformat = "raw"\nmethod = "put"\n'
        + 'headers = { "X-Source" = "edge-1" }\nusername = "gw"\n'
        + 'password_file = "fw.pw"\nca_file = "ca.pem"\ntimeout = 2.5\n'
        + "connect_timeout = 3\nbatch = 50\nmax_age = 600\n"
        + f'sign_secret = "whsec_{base64.b64encode(b"k" * 24).decode()}"\n'
    )
    [forward] = load(here, text + OPEN).forwards
    assert forward.instances == ("open",) and not forward.takes("other")
    assert (forward.format, forward.method) == ("raw", "PUT")
    assert forward.headers == (("X-Source", "edge-1"),)
    assert (forward.username, forward.password) == ("gw", "pw")
    assert forward.trust is not None and len(forward.trust) == 1
    assert (forward.timeout, forward.connect_timeout) == (2.5, 3.0)
    assert (forward.batch, forward.max_age, forward.sign_key) == (50, 600, b"k" * 24)
    assert "pw" not in repr(forward)


@pytest.mark.parametrize(
    ("extra", "key", "problem"),
    [
        ("colour = 1\n", "colour", "unknown key; [[forward]] takes name, url"),
        ('format = "json"\n', "format", "'json' is not a format"),
        ('method = "GET"\n', "method", "'GET': give POST or PUT"),
        ("batch = 0\n", "batch", "0: give 1 to 1000 incidents"),
        ("max_age = 0\n", "max_age", "0 would give up every incident"),
        ("timeout = 0\n", "timeout", "0: give seconds from more than 0 to 3600"),
        ('timeout = "5"\n', "timeout", "must be a number of seconds, got a string"),
        ("instances = []\n", "instances", "must be a non-empty array of instance"),
        ('username = "gw"\n', None, "username without a password"),
        ('password = "pw"\n', "username", "required with a password"),
        ('headers = { "X Y" = "1" }\n', "headers.X Y", "is not a header name"),
        ('headers = { "Host" = "a" }\n', "headers.Host", "is gwebhook's to send"),
        ('sign_secret = "nope"\n', "sign_secret", "it is no Standard Webhooks secret"),
        ('verify = false\nca_file = "x"\n', "ca_file", "verify = false checks no"),
    ],
)
def test_a_bad_forward_is_refused(here, extra, key, problem):
    message = refused(here, FORWARD + extra)
    where = "gwebhook.toml: forward 'xsoar': " + (f"{key}: " if key else "")
    assert message.startswith(where + problem), message


def test_a_forward_of_an_instance_nobody_declared_is_refused(here):
    """A typo in instances would forward nothing: refused; default is known."""
    assert refused(here, FORWARD + 'instances = ["wallram"]\n' + OPEN) == (
        "gwebhook.toml: forward 'xsoar': instances: 'wallram' is no instance of "
        "this file (nor default); name declared instances, or leave instances out"
    )
    [forward] = load(
        here, FORWARD + 'instances = ["default", "open"]\n' + OPEN
    ).forwards
    assert forward.instances == ("default", "open")


def test_a_forward_needs_a_name_and_a_url(here):
    assert refused(here, '[[forward]]\nurl = "https://x.example/"\n').startswith(
        "gwebhook.toml: forward #1: name: required"
    )
    assert refused(here, '[[forward]]\nname = "a"\n') == (
        "gwebhook.toml: forward 'a': url: required; give the receiver's http:// or "
        "https:// URL"
    )
    assert "is not an http:// or https:// URL" in refused(
        here, '[[forward]]\nname = "a"\nurl = "ftp://x/"\n'
    )
    assert refused(here, FORWARD + FORWARD).endswith(
        "name: another [[forward]] has this name; give each its own"
    )
