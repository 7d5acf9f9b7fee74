"""
The ready-to-use files in ``examples/`` work as their comments say: every
config file is accepted by the daemon's own reader once the secret, CA and
certificate files it names exist beside it, and the systemd drop-in is a
valid addition to the shipped unit that hands over exactly the files the
example config names.
"""

from __future__ import annotations

import base64
import http.client
import json
import shlex
import shutil
import ssl
import subprocess
import sys
from pathlib import Path

import pytest
import trustme

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

from support.ports import free_port, wait_until_listening

from gwebhook.config import load_config

pytestmark = pytest.mark.timeout(60)

REPOSITORY = Path(__file__).resolve().parent.parent
EXAMPLES = REPOSITORY / "examples"
CONFIGS = sorted(EXAMPLES.glob("*.toml"))
DROP_IN = EXAMPLES / "gwebhook-instances.conf"
UNIT = REPOSITORY / "systemd" / "gwebhook.service"
UNIT_TWISTD = "/opt/gwebhook/bin/twistd"
TWISTD = str(Path(sys.executable).with_name("twistd"))


def named_files(config: Path) -> dict[str, str]:
    """Every file a config names, by the key naming it (auth.password_file...)."""
    named = {}
    for table in tomllib.loads(config.read_text("utf-8")).get("instance", []):
        for section, key in (
            ("auth", "password_file"),
            ("mtls", "client_ca"),
            (None, "cert"),
            (None, "key"),
        ):
            holder = table if section is None else table.get(section, {})
            if key in holder:
                named[holder[key]] = key
    return named


def write_stand_ins(directory: Path, named: dict[str, str]) -> None:
    """A file of the right kind for each name: a secret, a CA, a cert or key."""
    ca = trustme.CA()
    leaf = ca.issue_cert("localhost")
    for name, key in named.items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if key == "client_ca":
            ca.cert_pem.write_to_path(str(path))
        elif key == "cert":
            leaf.cert_chain_pems[0].write_to_path(str(path))
        elif key == "key":
            leaf.private_key_pem.write_to_path(str(path))
        else:
            path.write_text("Bearer stand-in secret\n", "utf-8")


def test_there_are_examples():
    """The examples folder holds config files and the systemd drop-in."""
    assert CONFIGS, "no examples/*.toml"
    assert DROP_IN.is_file()
    assert (EXAMPLES / "README.md").is_file()


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
def test_each_example_config_is_accepted_with_its_files_beside_it(config, tmp_path):
    """
    Copied into a directory of its own with stand-ins for the files it
    names, each example is read by the daemon's config reader without a
    refusal, and declares at least one instance.
    """
    copy = tmp_path / "gwebhook.toml"
    shutil.copyfile(config, copy)
    write_stand_ins(tmp_path, named_files(config))
    loaded = load_config(str(copy), {})
    assert loaded.instances


def credentials_of(drop_in: Path) -> dict[str, str]:
    """The drop-in's LoadCredential= lines: credential name -> source path."""
    loaded = {}
    for line in drop_in.read_text("utf-8").splitlines():
        if line.startswith("LoadCredential="):
            name, source = line.split("=", 1)[1].split(":", 1)
            loaded[name] = source
    return loaded


def test_the_drop_in_hands_over_the_config_and_every_file_it_names():
    """
    The drop-in loads gwebhook.toml and, under the names the example config
    uses for them, the files that config names (relative paths are read
    beside the config, in the credentials directory); --config names the
    copy.
    """
    config = EXAMPLES / "wallarm-and-github.toml"
    credentials = credentials_of(DROP_IN)
    assert set(credentials) == {"gwebhook.toml", *named_files(config)}
    assert all(source.startswith("/etc/gwebhook/") for source in credentials.values())
    assert "--config ${CREDENTIALS_DIRECTORY}/gwebhook.toml" in DROP_IN.read_text()


@pytest.mark.process
def test_the_drop_in_passes_systemd_analyze_verify_with_the_unit(tmp_path):
    """systemd-analyze verify reads the unit with the drop-in, without a warning."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed, so the units cannot be verified")
    units = tmp_path / "units"
    (units / "gwebhook.service.d").mkdir(parents=True)
    # verify needs ExecStart's executable to exist: point it at this venv's.
    for source, target in (
        (UNIT, units / "gwebhook.service"),
        (DROP_IN, units / "gwebhook.service.d" / "instances.conf"),
    ):
        target.write_text(source.read_text().replace(UNIT_TWISTD, TWISTD))
    result = subprocess.run(
        [analyze, "verify", "--man=no", str(units / "gwebhook.service")],
        capture_output=True,
        text=True,
        timeout=60,
        # Drop-ins are found on the unit search path; ":" keeps the defaults.
        env={"SYSTEMD_UNIT_PATH": f"{units}:", "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr
    assert (result.stdout + result.stderr).strip() == "", "warnings: " + result.stderr


@pytest.mark.process
def test_a_drop_in_with_a_mistake_is_not_passed_silently(tmp_path):
    """The check above reads the drop-in: a wrong key in it is reported."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed, so the units cannot be verified")
    units = tmp_path / "units"
    (units / "gwebhook.service.d").mkdir(parents=True)
    (units / "gwebhook.service").write_text(
        UNIT.read_text().replace(UNIT_TWISTD, TWISTD)
    )
    (units / "gwebhook.service.d" / "instances.conf").write_text(
        DROP_IN.read_text().replace(UNIT_TWISTD, TWISTD) + "LoadCredentials=x:/y\n"
    )
    result = subprocess.run(
        [analyze, "verify", "--man=no", str(units / "gwebhook.service")],
        capture_output=True,
        text=True,
        timeout=60,
        env={"SYSTEMD_UNIT_PATH": f"{units}:", "PATH": "/usr/bin:/bin"},
    )
    assert "LoadCredentials" in result.stderr


def exec_start(drop_in: Path) -> str:
    """The drop-in's last ExecStart=, its continuation lines joined."""
    lines = drop_in.read_text("utf-8").splitlines()
    start = max(n for n, line in enumerate(lines) if line.startswith("ExecStart=/"))
    command = []
    for line in lines[start:]:
        command.append(line.removesuffix("\\").strip())
        if not line.endswith("\\"):
            break
    return " ".join(command).removeprefix("ExecStart=")


def post(port: int, path: str, body: dict, headers: dict, ca: Path) -> tuple:
    """One POST over TLS to 127.0.0.1; the status and the JSON answer."""
    context = ssl.create_default_context(cafile=str(ca))
    connection = http.client.HTTPSConnection(
        "localhost", port, timeout=10, context=context
    )
    try:
        connection.request("POST", path, json.dumps(body).encode(), headers)
        reply = connection.getresponse()
        return reply.status, json.loads(reply.read())
    finally:
        connection.close()


@pytest.mark.process
@pytest.mark.process
def test_the_drop_in_command_line_serves_the_example_senders(tmp_path):
    """
    The drop-in's ExecStart, run as systemd would run it (every file in one
    credentials directory, the store in the state directory; here on
    127.0.0.1 and free ports), serves the example's two senders with their
    own credentials and the command line's default instance beside them.
    """
    credentials, state = tmp_path / "credentials", tmp_path / "state"
    credentials.mkdir()
    state.mkdir()
    own_port, main_port = free_port(), free_port()
    config = (EXAMPLES / "wallarm-and-github.toml").read_text("utf-8")
    (credentials / "gwebhook.toml").write_text(
        config.replace("port = 9443", f"port = {own_port}"), "utf-8"
    )
    (credentials / "wallarm.token").write_text("Bearer wallarm-token\n")
    (credentials / "github.password").write_text("github-password\n")
    (credentials / "password").write_text("unit-password\n")
    ca = trustme.CA()
    leaf = ca.issue_cert("localhost")
    leaf.cert_chain_pems[0].write_to_path(str(credentials / "server.crt"))
    leaf.private_key_pem.write_to_path(str(credentials / "server.key"))
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))

    command = exec_start(DROP_IN)
    for unit_path, here in [
        (UNIT_TWISTD, TWISTD),
        ("${CREDENTIALS_DIRECTORY}", str(credentials)),
        ("/var/lib/gwebhook", str(state)),
    ]:
        command = command.replace(unit_path, here)
    argv = shlex.split(command)
    argv[argv.index("--port") + 1] = str(main_port)
    argv[argv.index("gwebhook") + 1 : argv.index("gwebhook") + 1] = [
        "--interface",
        "127.0.0.1",
    ]
    log = (tmp_path / "daemon.log").open("wb")
    daemon = subprocess.Popen(argv, cwd=state, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until_listening(main_port, timeout=20)
        wait_until_listening(own_port, timeout=20)
        ca_file = tmp_path / "ca.pem"
        token = {"Authorization": "Bearer wallarm-token"}
        github = "Basic " + base64.b64encode(b"github:github-password").decode()
        default = "Basic " + base64.b64encode(b"webhook:unit-password").decode()
        status, answer = post(
            main_port,
            "/instance/execute/wallarm",
            {"summary": "from Wallarm", "type": "Info"},
            token,
            ca_file,
        )
        assert (status, answer[0]["name"], answer[0]["type"]) == (
            200,
            "from Wallarm",
            "Wallarm Info",
        )
        status, answer = post(
            own_port, "/", {"name": "x"}, {"Authorization": github}, ca_file
        )
        assert (status, answer[0]["type"]) == (200, "GitHub")
        status, _ = post(own_port, "/", {}, token, ca_file)
        assert status == 401
        status, answer = post(
            main_port, "/", {"name": "y"}, {"Authorization": default}, ca_file
        )
        assert (status, answer[0]["type"]) == (200, "Unclassified")
    finally:
        daemon.terminate()
        daemon.wait(timeout=30)
        log.close()
