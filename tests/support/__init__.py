"""
What the tests share, one module per job (fixtures stay in ``conftest.py``,
but for those of ``postgres`` and ``haproxy``, which conftest loads as
plugins):

- ``credentials``: the user name and password the tests configure, and the
  headers and options that carry them;
- ``pki``: certificates and keys for servers, and clients that trust them;
- ``ports``: free and busy ports on 127.0.0.1, and waiting for a listener;
- ``wait``: polling for a condition, bounded in time;
- ``daemon``: real ``twistd gwebhook`` processes and the ``gwebhook`` command;
- ``http``: requests and raw connections to a server, and reading its answers;
- ``senders``: threads that keep posting while something else happens;
- ``store``: reading a store file the way a test checks it;
- ``proc``: what ``/proc`` says of a running process;
- ``metrics``: a Prometheus scrape;
- ``systemd``: the notify socket a service talks to;
- ``inprocess``: the server's own pieces wired in-process, without ``twistd``;
- ``postgres``: test databases on the machine's PostgreSQL, private clusters
  to stop and start, and reading rows back;
- ``haproxy``: a TCP load balancer in front of several daemons.

``tests/`` is on ``sys.path`` (``pythonpath`` in pytest's options), so test
modules import these as ``from support.http import send``.
"""
