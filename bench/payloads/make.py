"""
Writes the benchmark's payloads beside this file, the same bytes every time
(a seeded generator, no clock): what senders send, beside the small flat
incident that bench/post.lua builds itself.

    alert.json        a security alert of about 600 bytes, nested three
                      levels deep: source, host, user and process objects
                      and a tags array under rawJson
    alerts-100.json   an array of 100 such alerts, each different (about 60 kB)
    wallarm-hits.json a Wallarm "hit detected" notification: an array holding
                      one hit, indented as Wallarm's documentation shows it
                      (about 900 bytes)
    github-push.json  a GitHub push event: repository, pusher, sender, three
                      commits and the head commit (about 7 kB, compact)

    python3 bench/payloads/make.py           # write them
    python3 bench/payloads/make.py --check   # exit 1 if a file differs

The committed files are what the benchmark sends; run this after changing
it, and commit both.
"""

from __future__ import annotations

import hashlib
import json
import random
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SEED = 14

TACTICS = [
    ("T1059.001", "execution", "powershell.exe", "explorer.exe"),
    ("T1003.001", "credential-access", "rundll32.exe", "cmd.exe"),
    ("T1053.005", "persistence", "schtasks.exe", "cmd.exe"),
    ("T1218.011", "defense-evasion", "rundll32.exe", "winword.exe"),
    ("T1021.002", "lateral-movement", "psexesvc.exe", "services.exe"),
]
NAMES = [
    "Suspicious PowerShell command line",
    "Credential dumping from LSASS memory",
    "Scheduled task created by a script",
    "Signed binary proxy execution",
    "Remote service installed over SMB",
]
SEVERITIES = ["low", "medium", "high", "critical"]
USERS = ["jdoe", "asmith", "mkowalski", "svc_backup", "lnguyen", "pmartin"]


def _hex(rng: random.Random, n: int) -> str:
    return "".join(rng.choice("0123456789abcdef") for _ in range(n))


def alert(i: int, rng: random.Random) -> dict:
    """One EDR-style alert in the contract's shape (name, type, rawJson)."""
    k = rng.randrange(len(TACTICS))
    technique, tactic, image, parent = TACTICS[k]
    host = f"ws-{rng.randrange(1, 4000):04d}"
    user = rng.choice(USERS)
    minute, second = divmod(i % 3600, 60)
    return {
        "name": NAMES[k],
        "type": "Endpoint Alert",
        "occurred": f"2024-05-01T10:{minute:02d}:{second:02d}Z",
        "rawJson": {
            "alertId": f"EDR-{20240501000000 + i}",
            "severity": rng.choice(SEVERITIES),
            "source": {
                "product": "Falcon Sensor",
                "version": "7.14",
            },
            "host": {
                "hostname": f"{host}.corp.example.com",
                "ip": f"10.20.{rng.randrange(256)}.{rng.randrange(1, 255)}",
                "os": {"name": "Windows 10", "build": 19045},
            },
            "user": {
                "name": user,
                "domain": "CORP",
                "id": f"S-1-5-21-{rng.randrange(10**9)}",
            },
            "process": {
                "pid": rng.randrange(1000, 65000),
                "image": image,
                "cmdline": f"{image} -nop -w hidden -enc {_hex(rng, 20)}",
                "sha1": _hex(rng, 40),
                "parent": {"pid": rng.randrange(500, 9000), "image": parent},
            },
            "tags": ["edr", tactic, technique.lower()],
        },
    }


def wallarm_hits() -> list:
    """Wallarm's "hit detected" example, as its webhook documentation shows it."""
    return [
        {
            "anomality": 0.9806949806949808,
            "domain": "example.com",
            "heur_distance": 36.28571421111111,
            "method": "GET",
            "parameter": "GET_id_value",
            "path": "/",
            "payloads": ["'or 1=1--"],
            "point": ["get", "id"],
            "probability": 36.11111118571429,
            "remote_country": None,
            "remote_port": 41616,
            "remote_addr4": "111.17.1.1",
            "remote_addr6": None,
            "datacenter": "unknown",
            "tor": "none",
            "request_time": 1591261367,
            "create_time": 1591261381,
            "response_len": 345,
            "response_status": 404,
            "response_time": 257,
            "stamps": [1173],
            "regex": [],
            "stamps_hash": -1888294073,
            "regex_hash": -2147483648,
            "type": "sqli",
            "block_status": "monitored",
            "id": ["hits_production_6396_202006_v_1", "vpuRfnIBVc0URvOZ6ALA"],
            "object_type": "hit",
        }
    ]


def _account(login: str, number: int) -> dict:
    api = f"https://api.github.com/users/{login}"
    return {
        "name": login,
        "email": f"{number}+{login}@users.noreply.github.com",
        "login": login,
        "id": number,
        "node_id": f"MDQ6VXNlcj{number}",
        "avatar_url": f"https://avatars.githubusercontent.com/u/{number}?v=4",
        "gravatar_id": "",
        "url": api,
        "html_url": f"https://github.com/{login}",
        "followers_url": f"{api}/followers",
        "repos_url": f"{api}/repos",
        "type": "User",
        "site_admin": False,
    }


def _commit(rng: random.Random, n: int, repo: str, author: dict) -> dict:
    sha = _hex(rng, 40)
    person = {
        "name": author["login"],
        "email": author["email"],
        "username": author["login"],
    }
    return {
        "id": sha,
        "tree_id": _hex(rng, 40),
        "distinct": True,
        "message": f"Store: group commit for batch {n} (fewer fsyncs per request)\n\n"
        "The writer takes every queued request in one transaction.",
        "timestamp": f"2024-05-01T12:{10 + n:02d}:33+02:00",
        "url": f"https://github.com/{repo}/commit/{sha}",
        "author": person,
        "committer": person,
        "added": [f"tests/test_batch_{n}.py"],
        "removed": [],
        "modified": ["gwebhook/store/sqlite.py", "gwebhook/channel.py", "CHANGELOG.md"],
    }


def github_push(rng: random.Random) -> dict:
    """A push of three commits, with the keys GitHub's push event carries."""
    repo = "example-org/gwebhook"
    api = f"https://api.github.com/repos/{repo}"
    owner = _account("example-org", 1000001)
    pusher = _account("jdoe", 5812345)
    commits = [_commit(rng, n, repo, pusher) for n in range(3)]
    repository = {
        "id": 712345678,
        "node_id": "R_kgDOKnQxTg",
        "name": "gwebhook",
        "full_name": repo,
        "private": True,
        "owner": owner,
        "html_url": f"https://github.com/{repo}",
        "description": "A TLS-first webhook receiver",
        "fork": False,
        "url": f"https://github.com/{repo}",
        **{
            f"{name}_url": f"{api}/{name}{{/number}}"
            for name in (
                "branches",
                "collaborators",
                "comments",
                "commits",
                "contents",
                "issues",
                "labels",
                "milestones",
                "pulls",
                "releases",
            )
        },
        "created_at": 1698765432,
        "updated_at": "2024-05-01T09:58:12Z",
        "pushed_at": 1714558353,
        "git_url": f"git://github.com/{repo}.git",
        "ssh_url": f"git@github.com:{repo}.git",
        "clone_url": f"https://github.com/{repo}.git",
        "homepage": None,
        "size": 1843,
        "stargazers_count": 12,
        "watchers_count": 12,
        "language": "Python",
        "has_issues": True,
        "has_projects": False,
        "has_wiki": False,
        "forks_count": 1,
        "archived": False,
        "disabled": False,
        "open_issues_count": 3,
        "license": {"key": "mit", "name": "MIT License", "spdx_id": "MIT"},
        "topics": ["webhooks", "twisted", "soc"],
        "visibility": "private",
        "default_branch": "main",
        "master_branch": "main",
        "organization": "example-org",
    }
    head = commits[-1]
    return {
        "ref": "refs/heads/main",
        "before": _hex(rng, 40),
        "after": head["id"],
        "repository": repository,
        "pusher": {"name": pusher["login"], "email": pusher["email"]},
        "organization": {
            "login": "example-org",
            "id": 1000001,
            "url": "https://api.github.com/orgs/example-org",
            "description": "",
        },
        "sender": pusher,
        "created": False,
        "deleted": False,
        "forced": False,
        "base_ref": None,
        "compare": f"https://github.com/{repo}/compare/{commits[0]['id'][:12]}...{head['id'][:12]}",
        "commits": commits,
        "head_commit": head,
    }


def compact(document: object) -> bytes:
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()


def payloads() -> dict[str, bytes]:
    """Every payload file's name and bytes."""
    rng = random.Random(SEED)
    return {
        "alert.json": compact(alert(0, rng)),
        "alerts-100.json": compact([alert(i, rng) for i in range(1, 101)]),
        "wallarm-hits.json": json.dumps(wallarm_hits(), indent=2).encode() + b"\n",
        "github-push.json": compact(github_push(rng)),
    }


def main(argv: list[str]) -> int:
    check = "--check" in argv
    differ = []
    for name, data in payloads().items():
        path = HERE / name
        if check:
            if not path.exists() or path.read_bytes() != data:
                differ.append(name)
            continue
        path.write_bytes(data)
        digest = hashlib.sha256(data).hexdigest()[:12]
        print(f"{name}: {len(data):,} bytes, sha256 {digest}")
    if differ:
        print("differ from make.py's output: " + ", ".join(differ), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
