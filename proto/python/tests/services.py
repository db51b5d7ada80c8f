"""The two services as the tests run them: the debug binaries that `cargo build --workspace
--bins` made, each on its own SQLite file and a free loopback port, in development auth mode,
agent-service pointed at workflow-service and at the Langflow the test run started."""

from __future__ import annotations

import os
import queue
import subprocess
import threading
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]


def binary_dir() -> Path:
    """Where the service binaries are: ENGARDE_BIN_DIR, else the workspace's target/debug."""
    return Path(os.environ.get("ENGARDE_BIN_DIR") or REPO / "target" / "debug")


class ServiceProcess:
    """One service binary, started with `env` (and nothing else of the test's environment, as the
    Rust e2e tests do), once it has printed "<name> listening on <addr>"."""

    def __init__(self, name: str, env: dict[str, str], log_dir: Path) -> None:
        binary = binary_dir() / name
        if not binary.is_file():
            raise RuntimeError(f"{binary} is missing: run `cargo build --workspace --bins` (or set ENGARDE_BIN_DIR)")
        self.name = name
        self.log = log_dir / f"{name}.log"
        full_env = {
            "PATH": os.environ.get("PATH", ""),
            "LISTEN_ADDR": "127.0.0.1:0",
            "RUST_LOG": "info",
            "AUTH_MODE": "dev",
            **env,
        }
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                [str(binary)], env=full_env, stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL
            )
        lines: queue.Queue[str | None] = queue.Queue()
        assert self.process.stdout is not None
        stdout = self.process.stdout

        def read() -> None:
            # Keeps draining stdout after the address is known, so the service never blocks on
            # a full pipe.
            for raw in stdout:
                lines.put(raw.decode(errors="replace"))
            lines.put(None)

        threading.Thread(target=read, daemon=True).start()
        prefix = f"{name} listening on "
        while True:
            try:
                line = lines.get(timeout=60)
            except queue.Empty:
                line = None
            if line is None:
                self.stop()
                raise RuntimeError(f"{name} did not start; its log:\n{self.logs()}")
            if line.startswith(prefix):
                self.address = line[len(prefix):].strip()
                return

    def logs(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class Services:
    """workflow-service and agent-service, wired together, with a Langflow when one is given;
    `env` (e.g. AUTH_MODE=jwt and its keys) goes to both."""

    def __init__(self, data_dir: Path, langflow_url: str | None, env: dict[str, str] | None = None) -> None:
        shared = env or {}
        self.workflow = ServiceProcess(
            "workflow-service", {"DATABASE_URL": f"sqlite://{data_dir / 'workflow.db'}", **shared}, data_dir
        )
        agent_env = {
            "DATABASE_URL": f"sqlite://{data_dir / 'agent.db'}",
            "WORKFLOW_SERVICE_URL": f"http://{self.workflow.address}",
            **shared,
        }
        if langflow_url:
            agent_env["LANGFLOW_URL"] = langflow_url
        try:
            self.agent = ServiceProcess("agent-service", agent_env, data_dir)
        except BaseException:
            self.workflow.stop()
            raise

    def stop(self) -> None:
        self.agent.stop()
        self.workflow.stop()
