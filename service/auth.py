"""Optional bearer-token authentication for the HTTP service.

When ``RANKIQ_API_TOKEN`` is set, every route except the probes in :data:`OPEN_PATHS` needs
``Authorization: Bearer <token>``. The comparison is constant-time (``hmac.compare_digest`` on
bytes) so response timing does not leak how much of a guess was right.
"""

from __future__ import annotations

import hmac

#: Routes that never need the token: orchestrators probe them without credentials.
#: (``/healthz`` is BentoML's alias of ``/livez``.)
OPEN_PATHS = frozenset({"/livez", "/readyz", "/healthz"})


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header value, else ``None``."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def token_matches(expected: str, authorization: str | None) -> bool:
    """Whether the header carries ``expected`` (constant-time comparison)."""
    given = bearer_token(authorization)
    if given is None:
        # still compare, so a missing header costs the same as a wrong one
        hmac.compare_digest(expected.encode(), b"\0" * len(expected.encode()))
        return False
    return hmac.compare_digest(expected.encode(), given.encode())


def needs_auth(path: str, token: str | None) -> bool:
    """Whether a request to ``path`` must present the token (``token`` None: auth off)."""
    return token is not None and path not in OPEN_PATHS
