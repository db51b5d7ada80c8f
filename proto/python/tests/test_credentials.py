"""engarde_client's credentials as the services read them: a bearer JWT (production) carries
the tenant and the subject; in development mode the tenant it was opened with cannot be
overridden by a call's own metadata; no credentials at all is UNAUTHENTICATED."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable, Iterator

import grpc
import pytest
from engarde.agent.v1 import agent_pb2, agent_service_pb2, agent_service_pb2_grpc
from engarde_client import Credentials, open_channel

from services import Services

JWT_SECRET = "the-python-client-tests-jwt-secret-0123456789"
SERVICE_SECRET = "the-python-client-tests-service-secret-012345"


def hs256_token(claims: dict[str, object]) -> str:
    """A JWT signed with JWT_SECRET, as an identity provider would issue it."""

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    signing_input = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode()) + "." + b64(json.dumps(claims).encode())
    signature = hmac.new(JWT_SECRET.encode(), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(signature)}"


def token_for(tenant: str, subject: str) -> str:
    return hs256_token({"sub": subject, "tenant_id": tenant, "exp": int(time.time()) + 600})


@pytest.fixture(scope="module")
def jwt_services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Services]:
    """The services in production auth mode (no Langflow: these calls need none)."""
    running = Services(
        tmp_path_factory.mktemp("jwt-services"), None,
        {"AUTH_MODE": "jwt", "JWT_HS256_SECRET": JWT_SECRET, "SERVICE_TOKEN_SECRET": SERVICE_SECRET},
    )
    yield running
    running.stop()


def create_agent(channel: grpc.Channel, name: str, metadata: tuple[tuple[str, str], ...] = ()) -> agent_pb2.Agent:
    return agent_service_pb2_grpc.AgentServiceStub(channel).CreateAgent(
        agent_service_pb2.CreateAgentRequest(name=name, agent_type=agent_pb2.AGENT_TYPE_COPY_GENERATION),
        metadata=metadata,
    )


def test_a_bearer_token_acts_for_its_tenant(jwt_services: Services) -> None:
    address = jwt_services.agent.address
    with open_channel(address, Credentials.bearer(token_for("acme", "ada"))) as acme:
        agent = create_agent(acme, "Copywriter")
        assert agent.tenant_id == "acme"
        default = agent_service_pb2_grpc.AgentServiceStub(acme).SetTenantDefaultModel(
            agent_service_pb2.SetTenantDefaultModelRequest()
        )
        assert default.updated_by == "ada", "the subject comes from the token"

    with open_channel(address, Credentials.bearer(token_for("beta", "bob"))) as beta:
        with pytest.raises(grpc.RpcError) as raised:
            agent_service_pb2_grpc.AgentServiceStub(beta).GetAgent(agent_service_pb2.GetAgentRequest(id=agent.id))
        assert raised.value.code() == grpc.StatusCode.NOT_FOUND

    # Development-mode credentials mean nothing to a production service.
    with open_channel(address, Credentials.dev_tenant("acme")) as unauthenticated:
        with pytest.raises(grpc.RpcError) as raised:
            create_agent(unauthenticated, "Nobody's")
        assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_a_call_cannot_switch_tenants_with_its_own_metadata(
    agent_channel: Callable[[str], grpc.Channel], tenant: str
) -> None:
    agent = create_agent(agent_channel(tenant), "Mine", metadata=(("x-tenant-id", f"{tenant}-other"),))
    assert agent.tenant_id == tenant


def test_credentials_refuse_empty_values() -> None:
    with pytest.raises(ValueError, match="token"):
        Credentials.bearer("")
    with pytest.raises(ValueError, match="tenant"):
        Credentials.dev_tenant("")
    with pytest.raises(ValueError, match="default_timeout"):
        open_channel("127.0.0.1:1", Credentials.dev_tenant("t"), default_timeout=0)
