"""gwebhook: a TLS-first webhook receiver that stores JSON payloads as incidents."""
