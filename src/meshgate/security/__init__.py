"""Who is calling and what they may do: principals, API keys, JWTs, policies, rate limits.

Pure where it can be: the HTTP layer finds the credentials, this package says whose they
are (`Principal`), and the router's gate decides, for every entry, whether that principal may
make the call and whether its limits allow it now.
"""

from meshgate.security.principal import (
    LOCAL,
    NOBODY,
    PRINCIPAL_SCOPE_KEY,
    Principal,
    principal_of,
)

__all__ = ["LOCAL", "NOBODY", "PRINCIPAL_SCOPE_KEY", "Principal", "principal_of"]
