#!/usr/bin/env python3
"""Provisions a tenant's agents, runs one, and lists what is installed: the three calls a
platform backend makes to put agent-service behind its /api/agents endpoints.

1. (optional) SetTenantDefaultModel: the model new agents get, e.g. an OpenAI-compatible server;
   without one an agent's flow runs offline and answers its prompt rendered with the input.
2. ProvisionAgents: an agent for every workflow of the tenant that has none (the built-in
   templates included), each with its Langflow flow, deployed and activated. Safe to repeat:
   workflows that have an agent are skipped.
3. ExecuteAgent (or, with --stream, StreamExecuteAgent): runs the agent of one workflow (by
   name) once, in a conversation (session).
4. ListInstalledAgents: every agent with its workflow's current name, status and statistics.

It needs agent-service (and workflow-service) with a Langflow (LANGFLOW_URL); see README, "A
Python client". Run it with the client on the path, e.g.:

    proto/python/generate
    PYTHONPATH=proto/python/src ~/.cache/engarde-tools/python-client/bin/python \\
        proto/python/examples/provision_execute_list.py --input "our spring sale"

Exit status: 0 on success, 1 when a call fails (its gRPC status is printed), 2 for bad usage.
"""

from __future__ import annotations

import argparse
import os
import sys
import uuid
from collections.abc import Iterator

import grpc
from engarde.agent.v1 import agent_pb2, agent_service_pb2, agent_service_pb2_grpc
from engarde.agent.v1 import execution_pb2, execution_service_pb2, execution_service_pb2_grpc
from engarde.workflow.v1 import workflow_pb2

from engarde_client import Credentials, field_violations, open_channel


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--target", default=os.environ.get("ENGARDE_AGENT_SERVICE", "127.0.0.1:50052"),
                   help="agent-service's address, host:port (env ENGARDE_AGENT_SERVICE)")
    p.add_argument("--tenant", default=os.environ.get("ENGARDE_TENANT", "default-tenant-001"),
                   help="the tenant, for services in development mode (env ENGARDE_TENANT)")
    p.add_argument("--token", default=os.environ.get("ENGARDE_TOKEN"),
                   help="a bearer JWT for the tenant, for services in production (env ENGARDE_TOKEN); "
                        "replaces --tenant")
    p.add_argument("--ca-file", help="PEM file of the CA of agent-service's certificate: connect over TLS")
    p.add_argument("--workflow", default="Social Media Content Pipeline",
                   help="the workflow whose agent to run (its name)")
    p.add_argument("--input", default="our spring sale", help="what to send to the agent")
    p.add_argument("--session", default="python-example", help="the conversation to run it in")
    p.add_argument("--stream", action="store_true",
                   help="print the answer as Langflow produces it (StreamExecuteAgent)")
    p.add_argument("--timeout", type=float, default=120.0,
                   help="seconds each call may take (provisioning makes a Langflow flow per agent)")
    model = p.add_argument_group("model", "the tenant's default model, for the agents provisioned now")
    model.add_argument("--model-provider", help='as Langflow names it, e.g. "OpenAI", "Ollama"')
    model.add_argument("--model-name", help='e.g. "gpt-4o-mini", "llama3.2"')
    model.add_argument("--model-base-url", default="", help="an OpenAI-compatible or Ollama server")
    model.add_argument("--model-api-key-ref", default="",
                       help="the NAME of the Langflow variable (or environment variable) holding the key; "
                            "the key itself never leaves Langflow")
    args = p.parse_args(argv)
    if bool(args.model_provider) != bool(args.model_name):
        p.error("--model-provider and --model-name go together")
    return args


def status_name(status: agent_pb2.AgentStatus.ValueType) -> str:
    return agent_pb2.AgentStatus.Name(status).removeprefix("AGENT_STATUS_").lower()


def set_default_model(agents: agent_service_pb2_grpc.AgentServiceStub, args: argparse.Namespace) -> None:
    model = agent_pb2.ModelSettings(
        provider=args.model_provider,
        model_name=args.model_name,
        base_url=args.model_base_url,
        api_key_ref=args.model_api_key_ref,
    )
    default = agents.SetTenantDefaultModel(agent_service_pb2.SetTenantDefaultModelRequest(model=model))
    print(f"default model: {default.model.provider} {default.model.model_name} (set by {default.updated_by})")


def provision(agents: agent_service_pb2_grpc.AgentServiceStub) -> None:
    # A request_id makes a retry of this very call (after a timeout, say) answer the first
    # call's result instead of provisioning again: make one per logical operation, reuse it on retry.
    answer = agents.ProvisionAgents(
        agent_service_pb2.ProvisionAgentsRequest(activate=True, request_id=f"provision-{uuid.uuid4()}")
    )
    print(f"provisioned: {len(answer.created) + answer.omitted_created} created, "
          f"{len(answer.skipped) + answer.omitted_skipped} skipped")
    for agent in answer.created:
        print(f"  + {agent.name} ({status_name(agent.status)})")
    for skipped in answer.skipped:
        if skipped.reason != agent_service_pb2.SKIP_REASON_ALREADY_HAS_AGENT:
            print(f"  - {skipped.workflow_name or skipped.workflow_id}: "
                  f"{agent_service_pb2.SkipReason.Name(skipped.reason)} {skipped.detail}".rstrip())
    for undeployed in answer.not_deployed:
        print(f"  ! agent {undeployed.agent_id} not deployed: {undeployed.reason}")


def installed_agents(agents: agent_service_pb2_grpc.AgentServiceStub) -> Iterator[agent_service_pb2.InstalledAgent]:
    """Every installed agent, page after page."""
    token = ""
    while True:
        page = agents.ListInstalledAgents(
            agent_service_pb2.ListInstalledAgentsRequest(page_size=100, page_token=token)
        )
        yield from page.installed_agents
        token = page.next_page_token
        if not token:
            return


def execute(executions: execution_service_pb2_grpc.ExecutionServiceStub, agent: agent_pb2.Agent,
            args: argparse.Namespace) -> execution_pb2.Execution:
    request = execution_service_pb2.ExecuteAgentRequest(
        agent_id=agent.id, input=args.input, session_id=args.session, request_id=f"execute-{uuid.uuid4()}"
    )
    if args.stream:
        print(f"streaming {agent.name}:")
        execution = execute_streamed(executions, request)
    else:
        execution = executions.ExecuteAgent(request).execution
    status = execution_pb2.ExecutionStatus.Name(execution.status).removeprefix("EXECUTION_STATUS_").lower()
    print(f"executed {agent.name}: {status} "
          f"in {execution.latency_ms:.0f} ms (execution {execution.id}, session {execution.session_id})")
    if not args.stream:
        print("  " + execution.output.replace("\n", "\n  "))
    return execution


def execute_streamed(executions: execution_service_pb2_grpc.ExecutionServiceStub,
                     request: execution_service_pb2.ExecuteAgentRequest) -> execution_pb2.Execution:
    """The same run, streamed: `started`, the text as it comes (a model's tokens, or the flow's
    message), then `finished`, the recorded execution. A run that fails ends the stream with its
    error status, raised here as from ExecuteAgent."""
    finished = None
    print("  ", end="")
    for event in executions.StreamExecuteAgent(request):
        kind = event.WhichOneof("event")
        if kind == "output_text":
            print(event.output_text.replace("\n", "\n  "), end="", flush=True)
        elif kind == "finished":
            finished = event.finished
    print()
    if finished is None:
        raise RuntimeError("the stream ended without its finished event")
    return finished


def print_installed(installed: list[agent_service_pb2.InstalledAgent]) -> None:
    print(f"installed agents: {len(installed)}")
    print(f"  {'agent':<48} {'status':<9} {'category':<22} {'runs':>4}  upgrade")
    for item in installed:
        agent = item.agent
        status = status_name(agent.status)
        category = workflow_pb2.WorkflowCategory.Name(item.category).removeprefix("WORKFLOW_CATEGORY_").lower()
        upgrade = "yes" if item.upgrade_available else "-"
        print(f"  {agent.name[:48]:<48} {status:<9} {category:<22} {agent.total_executions:>4}  {upgrade}")


def run(args: argparse.Namespace) -> int:
    credentials = Credentials.bearer(args.token) if args.token else Credentials.dev_tenant(args.tenant)
    root_certificates = None
    if args.ca_file:
        with open(args.ca_file, "rb") as f:
            root_certificates = f.read()
    with open_channel(args.target, credentials, default_timeout=args.timeout,
                      root_certificates=root_certificates) as channel:
        agents = agent_service_pb2_grpc.AgentServiceStub(channel)
        executions = execution_service_pb2_grpc.ExecutionServiceStub(channel)

        if args.model_provider:
            set_default_model(agents, args)
        provision(agents)

        chosen = next((i.agent for i in installed_agents(agents) if i.workflow_name == args.workflow), None)
        if chosen is None:
            print(f"no installed agent runs the workflow {args.workflow!r}", file=sys.stderr)
            return 1
        if chosen.status not in (agent_pb2.AGENT_STATUS_DEPLOYED, agent_pb2.AGENT_STATUS_ACTIVE):
            # E.g. paused, in ERROR, or made before a Langflow was configured: see DeployAgent,
            # ActivateAgent and ResetAgent.
            print(f"the agent {chosen.name!r} is {status_name(chosen.status)}: it cannot run",
                  file=sys.stderr)
            return 1
        execute(executions, chosen, args)

        print_installed(list(installed_agents(agents)))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return run(args)
    except grpc.RpcError as error:
        # Every failed call is a grpc.Call too: its status code and message, and for bad input
        # the fields at fault.
        call = error if isinstance(error, grpc.Call) else None
        code = call.code().name if call else "UNKNOWN"
        print(f"call failed: {code}: {call.details() if call else error}", file=sys.stderr)
        for field, description in field_violations(error):
            print(f"  {field}: {description}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
