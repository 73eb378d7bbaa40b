"""API keys: who a request acts for (`Authorization: Bearer <key>`), and its rate limit.

Keys are configured as SHA-256 digests (app.config.ApiKey); a presented key is hashed and
looked up, so no key is ever stored or compared in the clear. With MEMSERVE_AUTH=off every
request acts for one local tenant ("") with no limits.
"""

from __future__ import annotations

import hashlib
import math
import secrets

from app.config import Settings
from app.errors import RateLimited, Unauthorized
from app.store.tenants import Tenant, TenantStore

KEY_PREFIX = "msk_"
LOCAL = Tenant("")


def new_api_key() -> str:
    """A fresh 256-bit random API key."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def key_digest(key: str) -> str:
    """What the configuration holds of a key: its hex SHA-256."""
    return hashlib.sha256(key.encode()).hexdigest()


class KeyRing:
    """The configured keys, by digest, with each key's limits resolved against the defaults."""

    def __init__(self, settings: Settings) -> None:
        self.off = settings.auth == "off"
        self.by_digest: dict[str, Tenant] = {}
        for k in settings.all_api_keys():
            self.by_digest[k.sha256] = Tenant(
                name=k.tenant,
                max_sessions=settings.max_sessions_per_key if k.max_sessions is None else k.max_sessions,
                rate_per_s=settings.rate_limit_per_s if k.rate_per_s is None else k.rate_per_s,
                burst=settings.rate_limit_burst if k.burst is None else k.burst,
            )

    def authenticate(self, authorization: str | None) -> Tenant:
        """The tenant of the request's bearer key; Unauthorized (401) without a known one."""
        if self.off:
            return LOCAL
        if not authorization:
            raise Unauthorized(
                "this API needs a key: send `Authorization: Bearer <key>`",
                headers={"WWW-Authenticate": 'Bearer realm="memserve"'},
            )
        scheme, _, key = authorization.partition(" ")
        tenant = self.by_digest.get(key_digest(key.strip())) if scheme.lower() == "bearer" else None
        if tenant is None:
            raise Unauthorized(
                "the API key is not valid",
                headers={"WWW-Authenticate": 'Bearer realm="memserve", error="invalid_token"'},
            )
        return tenant


async def check_rate(tenants: TenantStore, tenant: Tenant) -> None:
    """Count the request against the tenant's rate; RateLimited (429) when it is over."""
    wait_s = await tenants.take(tenant)
    if wait_s > 0:
        retry = max(1, math.ceil(wait_s))
        raise RateLimited(
            f"over {tenant.rate_per_s:g} requests per second (burst {tenant.burst}); retry in {retry} s",
            headers={"Retry-After": str(retry)}, retry_after_ms=math.ceil(wait_s * 1000),
        )  # fmt: skip
