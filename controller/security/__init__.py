"""Who may talk to the controller, and how much: mutual TLS, identities, roles, limits.

The pieces are separate so each can be tested alone: :mod:`.certs` (a local CA
for a quick start), :mod:`.identity` (certificate → ``Identity``), :mod:`.authz`
(role → allowed RPCs), :mod:`.ratelimit` (per-identity token buckets),
:mod:`.listen` (refuse plaintext off loopback), :mod:`.tls` (gRPC credentials
from PEM files, reloaded when they change) and :mod:`.interceptor` (the gRPC
edge that applies them all).
"""
