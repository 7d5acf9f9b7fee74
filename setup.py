from pathlib import Path

from setuptools import setup

setup(
    name="gwebhook",
    version="0.1.0",
    description="TLS-first webhook receiver that stores JSON payloads as incidents",
    long_description=Path("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    # 3.11: datetime.fromisoformat reads "Z" and any fraction of a second
    # only from 3.11 on; on 3.10 gwebhook would refuse "2024-05-01T10:00:00Z".
    python_requires=">=3.11",
    # twisted.plugins is a namespace the plugin file drops into; it has no __init__.py.
    packages=[
        "gwebhook",
        "gwebhook.config",
        "gwebhook.console",
        "gwebhook.store",
        "twisted.plugins",
    ],
    # The console's pages, style and JavaScript modules are served from the
    # installed package: no build step, nothing fetched from elsewhere.
    package_data={
        "twisted.plugins": ["gwebhook_plugin.py"],
        "gwebhook.console": [
            "static/*.html",
            "static/*.css",
            "static/*.svg",
            "static/js/*.js",
        ],
    },
    # Every floor is tested: .ci/run installs exactly these lowest versions
    # (uv's --resolution lowest-direct) and runs the in-process tests on them.
    install_requires=[
        # 26.10: twistd exits 1 when gwebhook refuses its options (26.4 exits
        # 0: a refused start-up looked like success); 26.4 brought
        # CertificateOptions.serverConnectionForTLS, which tls.py calls.
        "twisted[tls]>=26.10",
        "klein>=23.12",
        # 26.2: Connection.set_options (the renegotiation test reads a
        # connection's options); Twisted 26.10 itself needs 25.3.
        "pyopenssl>=26.2",
        "service-identity>=24.1",
        "treq>=23.11",
        "prometheus-client>=0.20",
        # 46: what pyOpenSSL 26.2 needs.
        "cryptography>=46",
        # JMESPath expressions of the instances' field mapping.
        "jmespath>=1.0",
        # PostgreSQL for several nodes (--db postgresql://...), loaded only
        # then; [binary] brings its own libpq, so nothing else is installed.
        # 3.2: RawCursor, whose $1 placeholders psycopg does not parse again
        # for every statement of more than 50 (the store's multi-row INSERTs).
        "psycopg[binary]>=3.2",
        # The store's JSON text of every incident (gwebhook/jsontext.py):
        # about ten times the standard library's speed.  3.10: wheels for
        # every Python gwebhook runs on; JSONEncodeError for what it cannot
        # write (integers beyond 64 bits), which goes to the standard library.
        "orjson>=3.10",
        # The progress bar `gwebhook export` and `gwebhook prune` draw on
        # standard error when it is a terminal.  4.66.3: the first without
        # CVE-2024-34062 (tqdm's own command line evaluated its arguments).
        "tqdm>=4.66.3",
    ],
    extras_require={
        # The TLS audit (tests/test_tls_audit.py) runs in a venv of its own:
        # sslyze pins an older cryptography than gwebhook installs.
        "audit": ["sslyze>=6.3"],
        "test": [
            "pytest>=8",
            "pytest-twisted>=1.14",
            # 1.2: issue_cert(not_before=, not_after=) for expired certificates.
            "trustme>=1.2",
            "hypothesis>=6.100",
            # 0.13: its import sorting and rule set are what the code follows.
            "ruff>=0.13",
            "pytest-timeout>=2.3",
            # 2.4.1: the mypy the code is checked with; mypy-zope 1.0.17 takes
            # up to 2.4.  Twisted's interfaces are zope.interface classes:
            # mypy needs the plugin.  jmespath ships no types of its own.
            "mypy>=2.4.1",
            "mypy-zope>=1.0.17",
            "types-jmespath>=1.1",
            # tqdm ships no types of its own either.
            "types-tqdm>=4.66",
            # The senders' own libraries sign or check the signature tests'
            # requests: 15.5 is stripe's first generate_signature_header.
            "stripe>=15.5",
            "slack-sdk>=3.0",
            "standardwebhooks>=1.0",
            # The read API's answers are validated against its OpenAPI 3.1
            # document, whose schemas are JSON Schema 2020-12: 4.18 brought
            # the referencing library that resolves their $refs.
            "jsonschema>=4.18",
            # The console's tests drive Debian's chromium (never a browser
            # of Playwright's own download) through its Python package.
            "playwright>=1.40",
        ],
    },
    entry_points={"console_scripts": ["gwebhook = gwebhook.cli:main"]},
)
