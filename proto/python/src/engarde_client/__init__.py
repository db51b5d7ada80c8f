"""A thin layer over the generated gRPC stubs (the `engarde` package): a channel that sends the
caller's credentials and a default deadline with every call, and the field violations of an
INVALID_ARGUMENT answer. Use the generated stubs on the channel it opens::

    from engarde.agent.v1 import agent_service_pb2 as agents_pb, agent_service_pb2_grpc as agents_grpc
    from engarde_client import Credentials, open_channel

    with open_channel("127.0.0.1:50052", Credentials.dev_tenant("default-tenant-001")) as channel:
        agents = agents_grpc.AgentServiceStub(channel)
        print(agents.ListInstalledAgents(agents_pb.ListInstalledAgentsRequest()))
"""

from engarde_client.channel import Credentials, open_channel
from engarde_client.errors import field_violations

__all__ = ["Credentials", "field_violations", "open_channel"]
