"""An OpenAI-compatible chat endpoint on 127.0.0.1, standing in for a user's judge model."""

import contextlib
import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer


class FakeJudge(BaseHTTPRequestHandler):
    """An OpenAI-compatible chat endpoint: answers "Yes" or "4" after checking the key; the first
    request gets a 503 (the client must retry)."""

    key, requests, fail_first = "sk-test-not-a-real-key", [], True

    def do_POST(self):  # http.server's name
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        FakeJudge.requests.append({"path": self.path, "auth": self.headers["Authorization"], "body": body})
        if FakeJudge.fail_first:
            FakeJudge.fail_first = False
            return self._reply(503, {"error": "busy"})
        if self.headers["Authorization"] != f"Bearer {FakeJudge.key}":
            return self._reply(401, {"error": "bad key"})
        text = "Yes" if "Reference answer" in body["messages"][-1]["content"] else "4"
        self._reply(200, {"choices": [{"message": {"content": text}} for _ in range(body["n"])]})

    def _reply(self, code, payload):
        data = json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def serving(fail_first: bool):
    """Serves `FakeJudge` on a free port; yields the base URL (`.../v1`). Its record of requests starts empty."""
    FakeJudge.requests, FakeJudge.fail_first = [], fail_first
    server = HTTPServer(("127.0.0.1", 0), FakeJudge)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/v1"
    finally:
        server.shutdown()
        server.server_close()
