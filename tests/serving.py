"""`dfj serve` in a subprocess on 127.0.0.1, for tests that need the real HTTP path (test_serve,
test_bootstrap_e2e). Ready once /health answers; every wait is bounded."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
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
