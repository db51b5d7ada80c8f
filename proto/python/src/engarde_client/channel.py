"""A gRPC channel to workflow-service or agent-service that carries the caller's credentials and
a default deadline on every call.

Every call to these services acts for one tenant, taken from the caller's credentials: a bearer
JWT (`authorization` metadata) in production, or, only against services started with
AUTH_MODE=dev, the `x-tenant-id` header. The credentials are added by an interceptor rather
than gRPC call credentials because gRPC refuses call credentials on a plaintext channel, and
the development setup (scripts/dev) is plaintext.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import grpc

# gRPC metadata: (key, value) pairs, keys in lowercase.
Metadata = Sequence[tuple[str, str | bytes]]


@dataclass(frozen=True)
class Credentials:
    """Who a call is made for. Build it with `bearer` (production) or `dev_tenant`."""

    metadata: tuple[tuple[str, str], ...]

    @classmethod
    def bearer(cls, token: str) -> Credentials:
        """A JWT issued for the tenant (its `tenant_id` claim names the tenant)."""
        if not token or token != token.strip():
            raise ValueError("token: a non-empty JWT without surrounding whitespace")
        return cls((("authorization", f"Bearer {token}"),))

    @classmethod
    def dev_tenant(cls, tenant: str, subject: str | None = None) -> Credentials:
        """Development mode (AUTH_MODE=dev) only: act as `tenant`, and as `subject` where a call
        records who made it (e.g. SetTenantDefaultModel; the services default to "developer")."""
        if not tenant:
            raise ValueError("tenant: a non-empty tenant id")
        pairs = [("x-tenant-id", tenant)]
        if subject:
            pairs.append(("x-subject", subject))
        return cls(tuple(pairs))


class _CallDetails(NamedTuple):
    # grpc.ClientCallDetails is an abstract class with these attributes; a NamedTuple with the
    # same fields is what gRPC's own interceptor examples build.
    method: str
    timeout: float | None
    metadata: Metadata | None
    credentials: grpc.CallCredentials | None
    wait_for_ready: bool | None
    compression: grpc.Compression | None


class _CredentialsInterceptor(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Adds the credentials' metadata to every call, and `default_timeout` (seconds) as its
    deadline when the call sets none: a call without a deadline can wait forever on a server
    that never answers."""

    def __init__(self, credentials: Credentials, default_timeout: float | None) -> None:
        self._metadata = credentials.metadata
        self._default_timeout = default_timeout

    def _details(self, details: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        metadata = list(details.metadata or ())
        own = {key for key, _ in self._metadata}
        # The call's own metadata may not override the credentials (a stray x-tenant-id would
        # otherwise send the call for another tenant).
        metadata = [(k, v) for k, v in metadata if k not in own] + list(self._metadata)
        timeout = details.timeout if details.timeout is not None else self._default_timeout
        return _CallDetails(  # type: ignore[return-value]
            details.method,
            timeout,
            metadata,
            details.credentials,
            getattr(details, "wait_for_ready", None),
            getattr(details, "compression", None),
        )

    def intercept_unary_unary(self, continuation: Callable[..., Any], details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation: Callable[..., Any], details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_stream_unary(
        self, continuation: Callable[..., Any], details: Any, request_iterator: Iterator[Any]
    ) -> Any:
        return continuation(self._details(details), request_iterator)

    def intercept_stream_stream(
        self, continuation: Callable[..., Any], details: Any, request_iterator: Iterator[Any]
    ) -> Any:
        return continuation(self._details(details), request_iterator)


def open_channel(
    target: str,
    credentials: Credentials,
    *,
    default_timeout: float | None = 30.0,
    root_certificates: bytes | None = None,
    tls: bool | None = None,
) -> grpc.Channel:
    """A channel to `target` ("host:port") whose every call carries `credentials` and, unless
    the call passes its own `timeout=`, a deadline of `default_timeout` seconds (None: none).

    TLS is used when `tls` is true, or when it is None and `root_certificates` (PEM bytes of the
    CA that signed the service's certificate) are given; with TLS and no root certificates the
    system's roots are trusted. Close the channel when done (it is a context manager)."""
    if default_timeout is not None and default_timeout <= 0:
        raise ValueError("default_timeout: seconds, greater than 0, or None")
    use_tls = tls if tls is not None else root_certificates is not None
    if use_tls:
        channel = grpc.secure_channel(target, grpc.ssl_channel_credentials(root_certificates=root_certificates))
    elif root_certificates is not None:
        raise ValueError("root_certificates: given with tls=False")
    else:
        channel = grpc.insecure_channel(target)
    return grpc.intercept_channel(channel, _CredentialsInterceptor(credentials, default_timeout))
