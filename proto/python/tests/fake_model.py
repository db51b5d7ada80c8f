"""A fake OpenAI-compatible model for the tests (never the product), on loopback, that the real
Langflow calls: `POST /v1/chat/completions`, answered whole or as server-sent events when asked
to stream. It accepts only the key that scripts/langflow gives Langflow as ENGARDE_TEST_MODEL_KEY
(the same fake as tests/e2e/fake_model.rs, reduced to what the example needs), and records what
it was asked."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

# Must match scripts/langflow's TEST_MODEL_KEY.
TEST_MODEL_KEY = "sk-engarde-test-0123456789abcdef"
TEST_MODEL_KEY_VAR = "ENGARDE_TEST_MODEL_KEY"
ANSWER_WORDS = ["Fresh", " ideas", " for", " your", " brand", ",", " ready", " to", " post", "."]
ANSWER = "".join(ANSWER_WORDS)


class FakeModel:
    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base's name)
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("content-length", "0"))) or b"{}")
                fake.received.append({"path": self.path, "authorization": self.headers.get("authorization", ""),
                                      "body": body})
                if self.path != "/v1/chat/completions":
                    return self._json(404, {"error": {"message": "not found"}})
                if self.headers.get("authorization") != f"Bearer {TEST_MODEL_KEY}":
                    return self._json(401, {"error": {"message": "Incorrect API key provided",
                                                      "type": "invalid_api_key", "code": "invalid_api_key"}})
                model = body.get("model", "fake")
                if not body.get("stream"):
                    return self._json(200, {
                        "id": "chatcmpl-fake", "object": "chat.completion", "created": 1, "model": model,
                        "choices": [{"index": 0, "message": {"role": "assistant", "content": ANSWER},
                                     "finish_reason": "stop"}],
                        "usage": {"prompt_tokens": 1, "completion_tokens": len(ANSWER_WORDS),
                                  "total_tokens": 1 + len(ANSWER_WORDS)},
                    })
                self.send_response(200)
                self.send_header("content-type", "text/event-stream")
                self.send_header("cache-control", "no-cache")
                self.send_header("connection", "close")
                self.end_headers()

                def chunk(delta: dict[str, Any], finish: str | None) -> bytes:
                    c = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1, "model": model,
                         "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
                    return f"data: {json.dumps(c)}\n\n".encode()

                self.wfile.write(chunk({"role": "assistant", "content": ""}, None))
                for word in ANSWER_WORDS:
                    self.wfile.write(chunk({"content": word}, None))
                self.wfile.write(chunk({}, "stop"))
                self.wfile.write(b"data: [DONE]\n\n")
                self.close_connection = True

            def _json(self, status: int, value: dict[str, Any]) -> None:
                data = json.dumps(value).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def base_url(self) -> str:
        """What an agent's model.base_url names: http://127.0.0.1:<port>/v1."""
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
