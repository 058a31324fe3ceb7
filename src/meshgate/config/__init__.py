"""Configuration: the settings' shapes (`settings.py`, `policy.py`, `registration.py` and a
module per table of its own) and how files, the environment and flags become them
(`loading.py`)."""

from meshgate.config.loading import (
    ConfigProblems,
    Problem,
    check_file,
    collect,
    find_command,
    load,
)
from meshgate.config.policy import (
    AutoscaleSettings,
    BreakerSettings,
    HealthSettings,
    InstanceBounds,
    RestartSettings,
    RetrySettings,
    ServerPolicy,
)
from meshgate.config.registration import (
    SERVICE_NAME,
    CallerInterceptor,
    Check,
    HeadersInterceptor,
    InterceptorSpec,
    Registration,
    SizeLimitInterceptor,
    TraceInterceptor,
)
from meshgate.config.security import (
    MESH_OPERATIONS,
    AuthSettings,
    JwtSettings,
    LimitSettings,
    MtlsSettings,
    RoleSettings,
    SecuritySettings,
)
from meshgate.config.settings import (
    DEFAULT_HOST,
    DEFAULT_PORT,
    MeshSettings,
    ServerSpec,
    Settings,
)

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "MESH_OPERATIONS",
    "SERVICE_NAME",
    "AuthSettings",
    "AutoscaleSettings",
    "BreakerSettings",
    "CallerInterceptor",
    "Check",
    "ConfigProblems",
    "HeadersInterceptor",
    "HealthSettings",
    "InstanceBounds",
    "InterceptorSpec",
    "JwtSettings",
    "LimitSettings",
    "MeshSettings",
    "MtlsSettings",
    "Problem",
    "Registration",
    "RestartSettings",
    "RetrySettings",
    "RoleSettings",
    "SecuritySettings",
    "ServerPolicy",
    "ServerSpec",
    "Settings",
    "SizeLimitInterceptor",
    "TraceInterceptor",
    "check_file",
    "collect",
    "find_command",
    "load",
]
