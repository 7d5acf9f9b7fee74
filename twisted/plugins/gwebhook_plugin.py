from twisted.application.service import ServiceMaker

gwebhook = ServiceMaker(
    "gwebhook",
    "gwebhook.tap",
    "A TLS webhook receiver that stores every JSON payload as an incident.",
    "gwebhook",
)
