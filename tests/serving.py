"""Real HTTP servers on 127.0.0.1 for the tests: `dfj serve` in a subprocess (the real serving path;
ready once /health answers, every wait bounded) and a recording OpenAI-compatible chat server
(what a client sent, answered with a fixed reply)."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx

SMALL_PIXELS = str(16 * 28 * 28)
NAME = "tiny-judge"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`dfj serve` in a subprocess; ready once /health answers."""

    def __init__(self, model_dir, port, log_path, *extra):
        self.port, self.log_path = port, log_path
        self.url = f"http://127.0.0.1:{port}"
        cmd = [sys.executable, "-m", "deepfakejudge", "serve", "--model", str(model_dir), "--served-model-name", NAME,
               "--device", "cpu", "--max-pixels", SMALL_PIXELS, "--port", str(port), "--log-level", "warning", *extra]
        self.log = open(log_path, "ab")  # noqa: SIM115 - open for the subprocess's lifetime
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=self.log)
        deadline = time.time() + 90
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited: {Path(log_path).read_text()[-2000:]}")
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.2)
        self.stop()
        raise AssertionError(f"server not ready in 90 s: {Path(log_path).read_text()[-2000:]}")

    def health(self):
        return httpx.get(self.url + "/health", timeout=5).json()

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)
        self.log.close()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()
                return
        self.log.close()


class RecordingChatServer:
    """An OpenAI-compatible chat server on 127.0.0.1 that keeps every request body and answers each
    with `answer`; `/v1/models` names `model_id` as a vLLM model (so prefill is on), with the
    `listed` fields added to its entry (vLLM's `root`, `parent`)."""

    def __init__(self, answer: str, model_id: str = "m", listed: dict | None = None):
        self.bodies: list[dict] = []
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, body):
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                self._send({"data": [{"id": model_id, "object": "model", "owned_by": "vllm", **(listed or {})}]})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with outer.lock:
                    outer.bodies.append(body)
                self._send({"choices": [{"index": 0, "finish_reason": "stop",
                                         "message": {"role": "assistant", "content": answer}}]})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def texts(self) -> list[str]:
        """The user text of every request, in order."""
        out = []
        for body in self.bodies:
            (user,) = [m for m in body["messages"] if m["role"] == "user"]
            content = user["content"]
            out.append(content if isinstance(content, str) else "".join(p["text"] for p in content if p["type"] == "text"))
        return out

    @property
    def urls(self) -> list[str | None]:
        """The image URL of every request (None where it sent no image first), in order."""
        out = []
        for body in self.bodies:
            parts = body["messages"][0]["content"]
            out.append(parts[0]["image_url"]["url"] if parts[0]["type"] == "image_url" else None)
        return out

    def close(self):
        self.server.shutdown()
        self.server.server_close()
