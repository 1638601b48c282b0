"""model_server.local.wait_answering: the one "poll until a started server answers" used by LocalServers, the tests
and the benchmarks, against real processes on loopback."""

from __future__ import annotations

import subprocess
import sys

from model_server.local import free_port, wait_answering


def test_an_answering_server_an_exited_process_and_a_silent_one_are_told_apart(tmp_path) -> None:
    (tmp_path / "ready").write_text("ok")
    port = free_port()
    cmd = [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(tmp_path)]
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    silent = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert wait_answering(f"http://127.0.0.1:{port}/ready", server, 30) is None
        # a 404 is not an answer: the poll goes on until the deadline
        assert wait_answering(f"http://127.0.0.1:{port}/absent", server, 0.5) == (
            f"did not answer http://127.0.0.1:{port}/absent within 0 s"
        )
        exited = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
        exited.wait(timeout=30)
        assert wait_answering(f"http://127.0.0.1:{free_port()}/", exited, 30) == "exited with code 3"
        assert wait_answering(f"http://127.0.0.1:{free_port()}/", silent, 1) is not None
        assert silent.poll() is None  # left running: stopping it is the caller's job
    finally:
        for proc in (server, silent):
            proc.terminate()
            proc.wait(timeout=30)
