"""The caller of the RPC being served, readable anywhere without importing gRPC.

The security interceptor sets it for the duration of each call (a context
variable, so concurrent calls on one event loop never see each other's caller);
servicers, the service layer and the audit log read it to name the actor.
"""

from __future__ import annotations

import contextvars

from controller.security.identity import Identity

caller: contextvars.ContextVar[Identity | None] = contextvars.ContextVar(
    "corral_caller", default=None
)


def current_identity() -> Identity | None:
    """The authenticated caller of the RPC being served; None on a server without mTLS."""
    return caller.get()


def current_actor() -> str | None:
    """``operator:alice``, ``agent:i-1`` … for the caller being served, or None."""
    identity = caller.get()
    return None if identity is None else identity.actor
