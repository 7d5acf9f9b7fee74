"""
Instances declared by ``--config FILE``, served by a real ``twistd gwebhook``
over real TLS: each reached by name (or on a port of its own) with its own
credentials and nobody else's, each mapping what senders post its own way,
and each visible in what the ``gwebhook`` command and the metrics say.
"""

from __future__ import annotations

import hashlib
import ssl
from pathlib import Path

import pytest
import trustme
from cryptography import x509
from support.credentials import AUTH, HEADERS, basic
from support.daemon import Daemon
from support.http import ask, served_fingerprint
from support.instances import (
    connection,
    get,
    instance,
    instance_paths,
    post,
    read_back,
    show,
    write_config,
    write_secret,
)
from support.metrics import sample, scrape
from support.pki import leaf_fingerprint
from support.ports import free_port, wait_until_listening
from support.store import row_counts

pytestmark = pytest.mark.process

# Three senders' credentials: two Basic with the same user name and their own
# passwords, and a header token.
ALPHA = basic("sender", "alpha-secret")
GAMMA = basic("sender", "gamma-secret")
BETA = {"X-Token": "beta-token"}
BETA_ENV = {"BETA_TOKEN": "beta-token"}
CREDENTIALS = {"alpha": ALPHA, "beta": BETA, "gamma": GAMMA, "default": HEADERS}

# The 404 of a webhook path no instance takes: the same as an unknown path's.
NO_SUCH_PATH = (
    "no such path; send webhooks to /, /instance/execute/<name> "
    "or /xsoar/instance/execute/<name>"
)

# Wrong credentials are the point of several tests: a 401, never a 429.
NO_THROTTLE = ("--auth-fail-limit", "0")


def three_instances(directory: Path, **extra: dict) -> Path:
    """
    The config file of alpha (Basic, password from a file), beta (header
    token from the environment) and gamma (Basic, inline password);
    ``extra[name]`` adds keys to that instance.
    """
    write_secret(directory, "alpha.pw", "alpha-secret")
    return write_config(
        directory,
        instance(
            "alpha",
            username="sender",
            password_file="alpha.pw",
            **extra.get("alpha", {}),
        ),
        instance(
            "beta",
            username="_header:X-Token",
            password_env="BETA_TOKEN",
            **extra.get("beta", {}),
        ),
        instance(
            "gamma",
            username="sender",
            password="gamma-secret",
            **extra.get("gamma", {}),
        ),
    )


def start(daemon, config: Path, *args: str, **fields) -> Daemon:
    """A daemon serving ``config``'s instances, the environment beta reads."""
    env = {**BETA_ENV, **fields.pop("env", {})}
    return daemon("--config", str(config), *NO_THROTTLE, *args, env=env, **fields)


def stored(reply) -> dict:
    """The one incident a 200 answer lists."""
    assert reply.status == 200, reply.body
    [incident] = reply.json()
    return incident


# ------------------------------------------------------------------- routing


def test_each_instance_is_reached_by_name_with_its_own_credentials(daemon, tmp_path):
    """
    /instance/execute/<name> and /xsoar/instance/execute/<name> reach that
    instance with its credentials, and its incidents record it.
    """
    d = start(daemon, three_instances(tmp_path), *AUTH)
    sent = {}
    for name in ("alpha", "beta", "gamma"):
        for path in instance_paths(name):
            body = {"name": f"{name} at {path}"}
            incident = stored(post(d, path, body, CREDENTIALS[name]))
            sent[incident["id"]] = (name, body["name"], path)
    exported = read_back(d, "export")
    assert {
        i["id"]: (i["instance"], i["name"], i["request"]["path"]) for i in exported
    } == sent


def test_credentials_of_one_instance_never_open_another(daemon, tmp_path):
    """
    Each instance refuses the other instances' credentials (and none at all)
    with 401, on both of its paths, and nothing is stored.
    """
    d = start(daemon, three_instances(tmp_path), *AUTH)
    before = row_counts(d.db)
    for name in ("alpha", "beta", "gamma"):
        others = [c for other, c in CREDENTIALS.items() if other != name]
        for path in instance_paths(name):
            for headers in [*others, {}]:
                reply = post(d, path, {"name": "must not be stored"}, headers)
                assert reply.status == 401, (name, path, headers, reply.body)
                assert "error" in reply.json()
    # The command line's credentials are the default instance's only.
    for name in ("alpha", "beta", "gamma"):
        assert post(d, "/", {}, CREDENTIALS[name]).status == 401, name
    assert row_counts(d.db) == before


def test_root_and_unknown_names_go_to_the_default_instance(daemon, tmp_path):
    """
    ``/`` and a name the file does not declare reach the instance the
    command line describes, with the command line's credentials.
    """
    d = start(daemon, three_instances(tmp_path), *AUTH)
    # Names match exactly, case included.
    for path in ["/", *instance_paths("nosuch"), "/instance/execute/ALPHA"]:
        incident = stored(post(d, path, {"name": path}, HEADERS))
        assert show(d, incident["id"])["instance"] == "default"


def test_failed_authentications_add_up_across_instances(daemon, tmp_path):
    """
    The throttle counts a client's failures on every instance together:
    past the limit, each instance answers 429, even to right credentials.
    """
    config = three_instances(tmp_path)
    d = daemon("--config", str(config), *AUTH, "--auth-fail-limit", "3", env=BETA_ENV)
    assert post(d, "/instance/execute/alpha", {}, GAMMA).status == 401
    assert post(d, "/instance/execute/beta", {}, {}).status == 401
    assert post(d, "/", {}, ALPHA).status == 401
    before = row_counts(d.db)
    for name, path in (("gamma", "/instance/execute/gamma"), ("default", "/")):
        reply = post(d, path, {}, CREDENTIALS[name])
        assert reply.status == 429, (name, reply.body)
        assert int(reply.headers["retry-after"]) > 0
    assert row_counts(d.db) == before


def test_without_command_line_credentials_root_and_unknown_names_are_404(
    daemon, tmp_path
):
    """
    With neither credentials nor --allow-anonymous on the command line the
    daemon starts for the file's instances; ``/`` and unknown names answer
    404 with a JSON error, whatever credentials come with them, and store
    nothing.
    """
    d = start(daemon, three_instances(tmp_path))
    before = row_counts(d.db)
    for path in ["/", *instance_paths("nosuch")]:
        for headers in [{}, HEADERS, ALPHA]:
            reply = post(d, path, {"name": "nowhere"}, headers)
            assert reply.status == 404, (path, headers, reply.body)
            assert reply.json() == {"error": NO_SUCH_PATH}
    assert row_counts(d.db) == before
    # The file's instances are served all the same; with no type anywhere,
    # their incidents are Unclassified.
    incident = stored(post(d, "/instance/execute/alpha", {}, ALPHA))
    assert incident["type"] == "Unclassified"


def test_an_instance_on_its_own_port_is_that_instance_on_every_path(
    daemon, tmp_path, pki
):
    """
    On an instance's own port every webhook path is that instance, with the
    main certificate; the instance stays reachable by name on the main port.
    """
    own = free_port()
    d = start(daemon, three_instances(tmp_path, beta={"port": own}), *AUTH)
    wait_until_listening(own)
    assert served_fingerprint(own, pki.client_context()) == leaf_fingerprint(pki)
    health = get(d, "/healthz", port=own)
    assert (health.status, health.json()) == (200, {"status": "ok"})
    for path in ["/", *instance_paths("beta"), *instance_paths("alpha")]:
        incident = stored(post(d, path, {"name": path}, BETA, port=own))
        assert show(d, incident["id"])["instance"] == "beta", path
    # Another instance's name does not lead away from the port's instance.
    before = row_counts(d.db)
    for path in ["/", *instance_paths("alpha")]:
        for headers in (ALPHA, HEADERS):
            assert post(d, path, {}, headers, port=own).status == 401, (path, headers)
    assert row_counts(d.db) == before
    # By name on the main port, as before.
    incident = stored(post(d, "/instance/execute/beta", {}, BETA))
    assert show(d, incident["id"])["instance"] == "beta"


# ------------------------------------------------------------------- mapping

WALLARM_MAP = {
    "name": "title",
    "type": "join(' ', ['Wallarm', object_type])",
    "occurred": "create_time",
}


def test_a_mapping_wins_over_the_elements_own_fields(daemon, tmp_path):
    """
    A map expression with a value wins over the element's own field, which
    wins over the default; an expression that fails on an element (join
    given null) counts as null.
    """
    config = three_instances(
        tmp_path, alpha={"map": WALLARM_MAP, "incident_type": "Wallarm"}
    )
    d = start(daemon, config)
    body = [
        {
            "title": "SQLi on /login",
            "name": "own name",
            "object_type": "attack",
            "type": "own type",
            "create_time": 1700000000,
            "occurred": "2020-01-01T00:00:00Z",
        },
        {
            "name": "own name 1",
            "type": "own type 1",
            "occurred": "2021-02-03T04:05:06Z",
        },
        {"object_type": None},
    ]
    reply = post(d, "/instance/execute/alpha", body, ALPHA)
    assert reply.status == 200, reply.body
    first, second, third = (show(d, i["id"]) for i in reply.json())
    assert (first["name"], first["type"], first["occurred"]) == (
        "SQLi on /login",
        "Wallarm attack",
        "2023-11-14T22:13:20Z",
    )
    assert (second["name"], second["type"], second["occurred"]) == (
        "own name 1",
        "own type 1",
        "2021-02-03T04:05:06Z",
    )
    assert (third["name"], third["type"]) == (
        "Generic webhook triggered incident",
        "Wallarm",
    )
    assert third["occurred"] == third["request"]["received"]
    # The details are the element as sent.
    assert {k: v for k, v in first["rawJson"].items() if k != "headers"} == body[0]


def test_a_mapped_name_that_is_not_a_string_is_refused_with_400(daemon, tmp_path):
    """
    A map.name that gives a number is answered 400 naming the instance, the
    key and the element's index, and nothing of the request is stored.
    """
    d = start(daemon, three_instances(tmp_path, alpha={"map": WALLARM_MAP}))
    before = row_counts(d.db)
    body = [{"title": "fine"}, {"title": 42}]
    reply = post(d, "/instance/execute/alpha", body, ALPHA)
    assert reply.status == 400, reply.body
    error = reply.json()["error"]
    for words in ("alpha", "map.name", "element 1"):
        assert words in error, error
    assert row_counts(d.db) == before


def test_fields_are_shown_without_nulls_and_empty_when_none(daemon, tmp_path):
    """
    ``[instance.fields]`` results are the incident's ``fields`` in ``show``
    and ``export``, the null ones left out; an instance without fields
    shows ``{}``.
    """
    fields = {"severity": "threat", "source": "src.ip", "absent": "no.such.key"}
    d = start(daemon, three_instances(tmp_path, alpha={"fields": fields}))
    mapped = stored(
        post(
            d,
            "/instance/execute/alpha",
            {"threat": "high", "src": {"ip": "192.0.2.7"}},
            ALPHA,
        )
    )
    plain = stored(post(d, "/instance/execute/gamma", {"threat": "high"}, GAMMA))
    assert show(d, mapped["id"])["fields"] == {
        "severity": "high",
        "source": "192.0.2.7",
    }
    assert show(d, plain["id"])["fields"] == {}
    exported = {i["id"]: i for i in read_back(d, "export")}
    assert exported[mapped["id"]]["fields"] == {
        "severity": "high",
        "source": "192.0.2.7",
    }
    assert exported[mapped["id"]]["instance"] == "alpha"
    assert exported[plain["id"]]["fields"] == {}
    assert exported[plain["id"]]["instance"] == "gamma"


def test_each_instance_has_its_own_default_incident_type(daemon, tmp_path):
    """
    An instance's incident_type is its incidents' default type; an instance
    without one takes --incident-type; an element's own type wins over both.
    """
    config = three_instances(tmp_path, alpha={"incident_type": "Alpha Alert"})
    d = start(daemon, config, *AUTH, "--incident-type", "From The Command Line")
    assert stored(post(d, "/instance/execute/alpha", {}, ALPHA))["type"] == (
        "Alpha Alert"
    )
    assert stored(post(d, "/instance/execute/beta", {}, BETA))["type"] == (
        "From The Command Line"
    )
    assert stored(post(d, "/", {}, HEADERS))["type"] == "From The Command Line"
    own = stored(post(d, "/instance/execute/alpha", {"type": "Own"}, ALPHA))
    assert own["type"] == "Own"


# ------------------------------------------------------------- reading back


def test_list_show_and_export_print_the_instance_and_list_filters(daemon, tmp_path):
    """
    ``gwebhook list``, ``show`` and ``export`` print each incident's
    instance; ``list --instance NAME`` lists that instance's only.
    """
    d = start(daemon, three_instances(tmp_path), *AUTH)
    sent = {}
    for name, path in (
        ("alpha", "/instance/execute/alpha"),
        ("beta", "/xsoar/instance/execute/beta"),
        ("alpha", "/xsoar/instance/execute/alpha"),
        ("default", "/"),
    ):
        incident = stored(post(d, path, {"name": path}, CREDENTIALS[name]))
        sent[incident["id"]] = name
    listed = read_back(d, "list")
    assert {i["id"]: i["instance"] for i in listed} == sent
    assert {i["id"]: i["instance"] for i in read_back(d, "export")} == sent
    for incident_id, name in sent.items():
        shown = show(d, incident_id)
        assert shown["instance"] == name
        assert "client_cert" not in shown["request"]
    for name in ("alpha", "beta", "default", "gamma"):
        mine = read_back(d, "list", "--instance", name)
        assert [i["id"] for i in mine] == [i for i, n in sent.items() if n == name]
        assert {i["instance"] for i in mine} <= {name}


def test_samples_are_kept_per_instance(daemon, tmp_path):
    """
    ``store_samples = true`` keeps that instance's 20 most recent incidents,
    whatever other instances receive; ``gwebhook samples --instance NAME``
    gives them; an instance without it keeps none.
    """
    config = three_instances(
        tmp_path, alpha={"store_samples": True}, gamma={"store_samples": True}
    )
    d = start(daemon, config, *AUTH)
    stored(post(d, "/instance/execute/gamma", {"name": "gamma's only"}, GAMMA))
    names = [f"alpha {n}" for n in range(22)]
    reply = post(d, "/instance/execute/alpha", [{"name": n} for n in names], ALPHA)
    assert reply.status == 200, reply.body
    stored(post(d, "/instance/execute/beta", {"name": "beta keeps none"}, BETA))
    stored(post(d, "/", {"name": "nor does the default"}, HEADERS))

    alpha = read_back(d, "samples", "--instance", "alpha")
    assert [s["name"] for s in alpha] == names[2:]
    assert {s["instance"] for s in alpha} == {"alpha"}
    assert all("fields" in s for s in alpha)
    gamma = read_back(d, "samples", "--instance", "gamma")
    assert [(s["name"], s["instance"]) for s in gamma] == [("gamma's only", "gamma")]
    assert read_back(d, "samples", "--instance", "beta") == []
    everything = read_back(d, "samples")
    assert sorted(s["name"] for s in everything) == sorted([*names[2:], "gamma's only"])


# ------------------------------------------------------------------- metrics


def test_metrics_count_failures_and_incidents_per_instance(daemon, tmp_path):
    """
    gwebhook_auth_failures_total and gwebhook_incidents_created_total carry
    the instance a request was for.
    """
    metrics = free_port()
    d = start(daemon, three_instances(tmp_path), *AUTH, "--metrics-port", str(metrics))
    for _ in range(2):
        assert post(d, "/instance/execute/alpha", {}, GAMMA).status == 401
    assert post(d, "/instance/execute/beta", {}, {}).status == 401
    assert post(d, "/", {}, ALPHA).status == 401
    three = [{"name": f"a{n}"} for n in range(3)]
    assert post(d, "/instance/execute/alpha", three, ALPHA).status == 200
    assert post(d, "/xsoar/instance/execute/beta", {}, BETA).status == 200

    samples = scrape(metrics)
    failures = "gwebhook_auth_failures_total"
    assert sample(samples, failures, instance="alpha", reason="wrong") == 2
    assert sample(samples, failures, instance="beta", reason="missing") == 1
    assert sample(samples, failures, instance="default", reason="wrong") == 1
    assert sample(samples, failures, instance="gamma", reason="wrong") == 0
    created = "gwebhook_incidents_created_total"
    assert sample(samples, created, instance="alpha") == 3
    assert sample(samples, created, instance="beta") == 1
    assert sample(samples, created, instance="default") == 0


# ---------------------------------------------------------------------- mTLS


# What a client is told when its certificate does not open the instance:
# what to fix on its side, never which CA or names the instance accepts.
CLIENT_CERT_REFUSALS = {
    "missing": "a client certificate issued by this instance's CA is required",
    "untrusted": (
        "the client certificate is not accepted: it must be issued by this "
        "instance's CA and allow client authentication"
    ),
    "name": "the client certificate's name is not accepted by this instance",
}


@pytest.fixture(scope="module")
def client_ca() -> trustme.CA:
    """The CA that issues the senders' client certificates."""
    return trustme.CA()


def client_context(pki, directory: Path, leaf: trustme.LeafCert | None):
    """A context trusting the server's CA and presenting ``leaf`` (if any)."""
    context = pki.client_context()
    if leaf is not None:
        pem = directory / f"client-{id(leaf)}.pem"
        leaf.private_key_and_cert_chain_pem.write_to_path(str(pem))
        context.load_cert_chain(str(pem))
    return context


def test_client_certificates_open_an_mtls_instance(daemon, tmp_path, pki, client_ca):
    """
    An instance with [instance.mtls] takes a client certificate issued by its
    CA with a listed name (and ``show`` records its subject and SHA-256);
    another CA's, another name's, or none at all get 401 saying what to fix,
    counted by reason.  The default instance on the same listener is served
    with or without a client certificate, and records none.
    """
    client_ca.cert_pem.write_to_path(str(tmp_path / "clients-ca.pem"))
    config = write_config(
        tmp_path,
        instance(
            "sensors",
            client_ca="clients-ca.pem",
            client_names=["sensor-1.example.com"],
        ),
    )
    metrics = free_port()
    d = start(daemon, config, *AUTH, "--metrics-port", str(metrics))
    good = client_ca.issue_cert(
        "sensor-1.example.com", common_name="sensor-1.example.com"
    )
    path = "/instance/execute/sensors"
    reply = post(
        d, path, {"name": "from sensor 1"}, context=client_context(pki, tmp_path, good)
    )
    incident = stored(reply)
    der = ssl.PEM_cert_to_DER_cert(good.cert_chain_pems[0].bytes().decode("ascii"))
    subject = x509.load_der_x509_certificate(der).subject.rfc4514_string()
    shown = show(d, incident["id"])
    assert shown["instance"] == "sensors"
    assert shown["request"]["client_cert"] == {
        "subject": subject,
        "sha256": hashlib.sha256(der).hexdigest(),
    }

    before = row_counts(d.db)
    refused = {
        "untrusted": trustme.CA().issue_cert(
            "sensor-1.example.com", common_name="sensor-1.example.com"
        ),
        "name": client_ca.issue_cert(
            "sensor-2.example.com", common_name="sensor-2.example.com"
        ),
        "missing": None,
    }
    for why, leaf in refused.items():
        context = client_context(pki, tmp_path, leaf)
        reply = post(d, path, {"name": why}, context=context)
        assert reply.status == 401, (why, reply.body)
        assert reply.json() == {"error": CLIENT_CERT_REFUSALS[why]}
    assert row_counts(d.db) == before
    samples = scrape(metrics)
    for why in refused:
        reason = f"client_certificate_{why}"
        assert (
            sample(
                samples,
                "gwebhook_auth_failures_total",
                instance="sensors",
                reason=reason,
            )
            == 1
        ), reason

    # The listener asks for a certificate but lets the default instance's
    # senders in without one; one sent to it anyway is not recorded.
    for leaf in (None, good):
        context = client_context(pki, tmp_path, leaf)
        incident = stored(post(d, "/", {}, HEADERS, context=context))
        assert "client_cert" not in show(d, incident["id"])["request"]


def _x509_v2_pem(directory: Path) -> Path:
    """
    A self-signed X.509 v2 certificate and its key: OpenSSL takes it in a
    handshake, cryptography cannot read it.
    """
    import warnings

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from OpenSSL import crypto

    key = ec.generate_private_key(ec.SECP256R1())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        pkey = crypto.PKey.from_cryptography_key(key)
        cert = crypto.X509()
        cert.set_version(1)  # v2: cryptography knows v1 and v3 only
        cert.get_subject().CN = "sensor-1.example.com"
        cert.set_issuer(cert.get_subject())
        cert.set_pubkey(pkey)
        cert.gmtime_adj_notBefore(0)
        cert.gmtime_adj_notAfter(3600)
        cert.set_serial_number(2)
        cert.sign(pkey, "sha256")
        pem = crypto.dump_certificate(crypto.FILETYPE_PEM, cert)
    path = directory / "v2.pem"
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        + pem
    )
    return path


@pytest.mark.parametrize("body", [{"name": "v2"}, None])
def test_a_client_certificate_that_cannot_be_read_is_a_counted_401(
    daemon, tmp_path, pki, client_ca, body
):
    """
    A certificate the handshake took but cryptography cannot read (X.509
    v2) is refused like an untrusted one, with or without a body: no 500,
    no dropped connection, no traceback in the log.
    """
    client_ca.cert_pem.write_to_path(str(tmp_path / "clients-ca.pem"))
    config = write_config(tmp_path, instance("sensors", client_ca="clients-ca.pem"))
    metrics = free_port()
    d = start(daemon, config, "--metrics-port", str(metrics))
    context = pki.client_context()
    context.load_cert_chain(str(_x509_v2_pem(tmp_path)))
    path = "/instance/execute/sensors"
    if body is None:
        c = connection(d, None, context)
        try:
            reply = ask(c, "POST", path, b"", {"Content-Length": "0"})
        finally:
            c.close()
    else:
        reply = post(d, path, body, context=context)
    assert reply.status == 401, reply.body
    assert reply.json() == {"error": CLIENT_CERT_REFUSALS["untrusted"]}
    assert row_counts(d.db)["incidents"] == 0
    failures = sample(
        scrape(metrics),
        "gwebhook_auth_failures_total",
        instance="sensors",
        reason="client_certificate_untrusted",
    )
    assert failures == 1
    assert "Traceback" not in d.output() + d.log.read_text()
