from pathlib import Path

from setuptools import setup

setup(
    name="gwebhook",
    version="0.1.0",
    description="TLS-first webhook receiver that stores JSON payloads as incidents",
    long_description=Path("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    # twisted.plugins is a namespace the plugin file drops into; it has no __init__.py.
    packages=["gwebhook", "twisted.plugins"],
    package_data={"twisted.plugins": ["gwebhook_plugin.py"]},
    install_requires=[
        "twisted[tls]>=24.7",
        "klein>=23.12",
        "pyopenssl>=24.0",
        "service-identity>=24.1",
        "treq>=23.11",
        "prometheus-client>=0.20",
        "cryptography>=42",
    ],
    extras_require={
        # The TLS audit (tests/test_tls_audit.py) runs in a venv of its own:
        # sslyze pins an older cryptography than gwebhook installs.
        "audit": ["sslyze>=6.3"],
        "test": [
            "pytest>=8",
            "pytest-twisted>=1.14",
            "trustme>=1.1",
            "hypothesis>=6.100",
            "ruff>=0.6",
            "pytest-timeout>=2.3",
        ],
    },
    entry_points={"console_scripts": ["gwebhook = gwebhook.cli:main"]},
)
