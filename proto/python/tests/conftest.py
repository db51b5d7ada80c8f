"""Fixtures: the services (started once for the whole run, on SQLite, with the test run's
Langflow), a fake model, a fresh tenant per test (so tests share the services, not their data),
and the example run as a user runs it: a separate Python process with the client on its path."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from engarde_client import Credentials, open_channel

from fake_model import FakeModel
from services import Services

HERE = Path(__file__).resolve().parent
PACKAGE = HERE.parent
EXAMPLE = PACKAGE / "examples" / "provision_execute_list.py"


@pytest.fixture(scope="session")
def langflow_url() -> str:
    url = os.environ.get("TEST_LANGFLOW_URL", "").strip().rstrip("/")
    if not url:
        pytest.fail("TEST_LANGFLOW_URL is not set: run scripts/test, which starts Langflow, "
                    "or set TEST_LANGFLOW_URL (e.g. http://127.0.0.1:7860)")
    return url


@pytest.fixture(scope="session")
def services(tmp_path_factory: pytest.TempPathFactory, langflow_url: str) -> Iterator[Services]:
    running = Services(tmp_path_factory.mktemp("services"), langflow_url)
    yield running
    running.stop()


@pytest.fixture(scope="session")
def fake_model() -> Iterator[FakeModel]:
    model = FakeModel()
    yield model
    model.stop()


@pytest.fixture
def tenant() -> str:
    return f"py-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def agent_channel(services: Services) -> Iterator[Callable[[str], grpc.Channel]]:
    """A channel to agent-service for a tenant; closed after the test."""
    opened: list[grpc.Channel] = []

    def open_for(tenant: str) -> grpc.Channel:
        channel = open_channel(services.agent.address, Credentials.dev_tenant(tenant), default_timeout=60)
        opened.append(channel)
        return channel

    yield open_for
    for channel in opened:
        channel.close()


RunExample = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def run_example(services: Services) -> RunExample:
    """Runs the example against the services with `args`; answers its exit status and output."""

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(PACKAGE / "src"), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        result = subprocess.run(
            [sys.executable, str(EXAMPLE), "--target", services.agent.address, *args],
            env=env, capture_output=True, text=True, timeout=600,
        )
        # Shown by pytest when the test fails.
        print(f"$ {EXAMPLE.name} {' '.join(args)}\n--- exit {result.returncode}\n--- stdout\n{result.stdout}"
              f"--- stderr\n{result.stderr}")
        if result.returncode != 0:
            print("--- agent-service's log, last 40 lines\n" + "\n".join(services.agent.logs().splitlines()[-40:]))
        return result

    return run
