"""proto/python/generate: the code comes from the include root proto/ with its google.api
imports (vendored there once the contracts carry HTTP annotations), google/api itself is not
generated (googleapis-common-protos provides it at run time), and each run replaces the last."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import google.api.annotations_pb2

from services import REPO

GENERATE = REPO / "proto" / "python" / "generate"
SERVICE = "engarde/agent/v1/agent_service.proto"
RPC = "rpc ListInstalledAgents(ListInstalledAgentsRequest) returns (ListInstalledAgentsResponse)"


def annotated_copy(root: Path) -> str | None:
    """proto/ copied to `root`, with ListInstalledAgents mapped to an HTTP path unless the
    contracts already map it: GET /api/agents/installed, as the platform's UI calls it. Answers
    the path it added, or None when the contracts had their own."""
    shutil.copytree(REPO / "proto", root, ignore=shutil.ignore_patterns("python"))
    api = root / "google" / "api"
    if not (api / "annotations.proto").exists():
        # Not vendored yet: the copies googleapis-common-protos ships.
        api.mkdir(parents=True)
        shipped = Path(google.api.annotations_pb2.__file__).parent
        for name in ("annotations.proto", "http.proto"):
            shutil.copy(shipped / name, api / name)
    service = root / SERVICE
    text = service.read_text()
    if f"{RPC};" in text:
        if 'import "google/api/annotations.proto";' not in text:
            text = text.replace('import "google/protobuf/field_mask.proto";',
                                'import "google/api/annotations.proto";\nimport "google/protobuf/field_mask.proto";')
        text = text.replace(f"{RPC};", f'{RPC} {{\n    option (google.api.http) = {{get: "/api/agents/installed"}};\n  }}')
        service.write_text(text)
        return "/api/agents/installed"
    assert f"{RPC} {{" in text and "google.api.http" in text, "ListInstalledAgents is declared as expected"
    return None


def test_generates_annotated_contracts_and_replaces_stale_output(tmp_path: Path) -> None:
    root, out = tmp_path / "proto", tmp_path / "out"
    added = annotated_copy(root)
    stale = out / "engarde" / "agent" / "v1" / "gone_pb2.py"
    stale.parent.mkdir(parents=True)
    stale.write_text("raise ImportError('stale')\n")

    env = dict(os.environ, PYTHON=sys.executable)
    subprocess.run([str(GENERATE), "--proto-root", str(root), "--out", str(out)], env=env, check=True, timeout=300)

    assert not stale.exists(), "a proto that is gone leaves no module behind"
    assert not (out / "google").exists(), "google/api comes from googleapis-common-protos, not from us"
    for module in ("agent_service_pb2.py", "agent_service_pb2.pyi", "agent_service_pb2_grpc.py",
                   "agent_service_pb2_grpc.pyi"):
        assert (out / "engarde" / "agent" / "v1" / module).is_file(), module
    assert (out / "engarde" / "py.typed").is_file()

    # The generated module imports (with google.api from the runtime package) and carries the rule.
    check = (
        "from google.api import annotations_pb2\n"
        "from engarde.agent.v1 import agent_service_pb2, agent_service_pb2_grpc\n"
        "method = agent_service_pb2.DESCRIPTOR.services_by_name['AgentService'].methods_by_name['ListInstalledAgents']\n"
        "rule = method.GetOptions().Extensions[annotations_pb2.http]\n"
        "print(*[r.get for r in [rule, *rule.additional_bindings] if r.get], sep='\\n')\n"
        "assert agent_service_pb2_grpc.AgentServiceStub\n"
    )
    result = subprocess.run([sys.executable, "-c", check], env=dict(os.environ, PYTHONPATH=str(out)),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    paths = result.stdout.splitlines()
    assert paths, "the generated descriptor carries the HTTP rule"
    if added:
        assert paths == [added]



def test_a_broken_contract_fails_and_keeps_the_last_output(tmp_path: Path) -> None:
    root, out = tmp_path / "proto", tmp_path / "out"
    shutil.copytree(REPO / "proto", root, ignore=shutil.ignore_patterns("python"))
    env = dict(os.environ, PYTHON=sys.executable)
    subprocess.run([str(GENERATE), "--proto-root", str(root), "--out", str(out)], env=env, check=True, timeout=300)
    good = (out / "engarde" / "agent" / "v1" / "agent_service_pb2.py").read_text()

    (root / SERVICE).write_text((root / SERVICE).read_text() + "\nmessage Broken { NoSuchType field = 1; }\n")
    result = subprocess.run([str(GENERATE), "--proto-root", str(root), "--out", str(out)], env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "NoSuchType" in result.stderr
    assert (out / "engarde" / "agent" / "v1" / "agent_service_pb2.py").read_text() == good
    assert [p.name for p in out.iterdir()] == ["engarde"], "no staging directory is left behind"
