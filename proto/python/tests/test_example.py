"""The example (examples/provision_execute_list.py) against the real services and Langflow: what
it prints, and what it leaves behind as another client reads it."""

from __future__ import annotations

from collections.abc import Callable

import grpc
import pytest
from engarde.agent.v1 import agent_pb2, agent_service_pb2, agent_service_pb2_grpc
from engarde.agent.v1 import execution_pb2, execution_service_pb2, execution_service_pb2_grpc
from engarde_client import field_violations

from conftest import RunExample
from fake_model import ANSWER, TEST_MODEL_KEY, TEST_MODEL_KEY_VAR, FakeModel

# The built-in template library every tenant sees (workflow-service seeds eleven).
TEMPLATES = 11
WORKFLOW = "Social Media Content Pipeline"
OpenChannel = Callable[[str], grpc.Channel]


def installed(channel: grpc.Channel) -> list[agent_service_pb2.InstalledAgent]:
    stub = agent_service_pb2_grpc.AgentServiceStub(channel)
    answer = stub.ListInstalledAgents(agent_service_pb2.ListInstalledAgentsRequest(page_size=200))
    assert answer.next_page_token == ""
    return list(answer.installed_agents)


def executions_of(channel: grpc.Channel, agent_id: str) -> list[execution_pb2.Execution]:
    stub = execution_service_pb2_grpc.ExecutionServiceStub(channel)
    return list(stub.ListExecutions(execution_service_pb2.ListExecutionsRequest(agent_id=agent_id)).executions)


def the_agent(items: list[agent_service_pb2.InstalledAgent]) -> agent_pb2.Agent:
    [agent] = [i.agent for i in items if i.workflow_name == WORKFLOW]
    return agent


def test_provisions_executes_and_lists_and_a_rerun_adds_only_an_execution(
    run_example: RunExample, agent_channel: OpenChannel, tenant: str
) -> None:
    first = run_example("--tenant", tenant, "--input", "our spring sale", "--session", "launch")
    assert first.returncode == 0, first.stderr
    assert f"provisioned: {TEMPLATES} created, 0 skipped" in first.stdout
    assert f"installed agents: {TEMPLATES}" in first.stdout
    assert "executed Social Media Content Pipeline Agent: succeeded in " in first.stdout

    channel = agent_channel(tenant)
    items = installed(channel)
    assert len(items) == TEMPLATES
    assert {i.agent.status for i in items} == {agent_pb2.AGENT_STATUS_ACTIVE}, "provisioned with activate"
    assert all(i.agent.langflow_workflow_id for i in items), "each agent has its Langflow flow"
    agent = the_agent(items)
    [execution] = executions_of(channel, agent.id)
    assert execution.status == execution_pb2.EXECUTION_STATUS_SUCCEEDED
    assert execution.session_id == "launch"
    # No model: the flow answers the step's prompt rendered with the input, which the example printed.
    assert "our spring sale" in execution.output
    assert execution.output.splitlines()[0] in first.stdout
    assert agent.total_executions == 1

    again = run_example("--tenant", tenant, "--input", "the summer one", "--session", "launch")
    assert again.returncode == 0, again.stderr
    assert f"provisioned: 0 created, {TEMPLATES} skipped" in again.stdout
    items = installed(channel)
    assert len(items) == TEMPLATES, "a second provisioning makes no agent twice"
    agent = the_agent(items)
    assert agent.total_executions == 2
    assert [e.input for e in executions_of(channel, agent.id)] == ["the summer one", "our spring sale"]


def test_with_a_model_the_agents_answer_through_it(
    run_example: RunExample, agent_channel: OpenChannel, tenant: str, fake_model: FakeModel
) -> None:
    result = run_example(
        "--tenant", tenant, "--input", "our autumn range",
        "--model-provider", "OpenAI", "--model-name", "fake-gpt",
        "--model-base-url", fake_model.base_url, "--model-api-key-ref", TEST_MODEL_KEY_VAR,
    )
    assert result.returncode == 0, result.stderr
    assert "default model: OpenAI fake-gpt" in result.stdout
    assert ANSWER in result.stdout

    channel = agent_channel(tenant)
    agent = the_agent(installed(channel))
    assert agent.configuration.model.model_name == "fake-gpt"
    assert agent.configuration.model.api_key_ref == TEST_MODEL_KEY_VAR
    [execution] = executions_of(channel, agent.id)
    assert execution.output == ANSWER
    # The model was asked by Langflow, with the key it holds (never sent by us), about our input.
    asked = [r for r in fake_model.received if "our autumn range" in str(r["body"].get("messages"))]
    assert asked, f"the model was not asked about the input: {fake_model.received}"
    assert all(r["authorization"] == f"Bearer {TEST_MODEL_KEY}" for r in asked)


def test_bad_input_names_the_field(run_example: RunExample, agent_channel: OpenChannel, tenant: str) -> None:
    result = run_example("--tenant", tenant, "--input", "")
    assert result.returncode == 1
    assert "call failed: INVALID_ARGUMENT" in result.stderr
    assert "\n  input: " in result.stderr, "the field violation is printed by name"

    # The same through the client's helper, for a call made directly.
    stub = execution_service_pb2_grpc.ExecutionServiceStub(agent_channel(tenant))
    agent = the_agent(installed(agent_channel(tenant)))
    with pytest.raises(grpc.RpcError) as raised:
        stub.ExecuteAgent(execution_service_pb2.ExecuteAgentRequest(agent_id=agent.id, input="x", session_id="a b"))
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [field for field, _ in field_violations(raised.value)] == ["session_id"]


def test_an_unknown_workflow_is_reported(run_example: RunExample, tenant: str) -> None:
    result = run_example("--tenant", tenant, "--workflow", "No Such Workflow")
    assert result.returncode == 1
    assert "no installed agent runs the workflow 'No Such Workflow'" in result.stderr


def test_another_tenant_sees_none_of_it(run_example: RunExample, agent_channel: OpenChannel, tenant: str) -> None:
    assert run_example("--tenant", tenant).returncode == 0
    agent = the_agent(installed(agent_channel(tenant)))

    stranger = agent_channel(f"{tenant}-other")
    assert installed(stranger) == []
    with pytest.raises(grpc.RpcError) as raised:
        agent_service_pb2_grpc.AgentServiceStub(stranger).GetAgent(agent_service_pb2.GetAgentRequest(id=agent.id))
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND


def test_the_deadline_is_honoured(agent_channel: OpenChannel, tenant: str) -> None:
    # open_channel's default deadline applies to a call that sets none; a call's own wins.
    stub = agent_service_pb2_grpc.AgentServiceStub(agent_channel(tenant))
    with pytest.raises(grpc.RpcError) as raised:
        stub.ProvisionAgents(agent_service_pb2.ProvisionAgentsRequest(activate=True), timeout=0.001)
    assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


def test_streamed_the_answer_arrives_as_the_model_writes_it(
    run_example: RunExample, agent_channel: OpenChannel, tenant: str, fake_model: FakeModel
) -> None:
    result = run_example(
        "--tenant", tenant, "--stream", "--input", "our winter range",
        "--model-provider", "OpenAI", "--model-name", "fake-gpt",
        "--model-base-url", fake_model.base_url, "--model-api-key-ref", TEST_MODEL_KEY_VAR,
    )
    assert result.returncode == 0, result.stderr
    # The tokens, printed as they came, make the answer once (no second copy after the stream).
    assert f"streaming {WORKFLOW} Agent:\n  {ANSWER}\nexecuted {WORKFLOW} Agent: succeeded in " in result.stdout
    assert result.stdout.count(ANSWER) == 1

    channel = agent_channel(tenant)
    [execution] = executions_of(channel, the_agent(installed(channel)).id)
    assert execution.status == execution_pb2.EXECUTION_STATUS_SUCCEEDED
    assert execution.output == ANSWER
    assert execution.input == "our winter range"
