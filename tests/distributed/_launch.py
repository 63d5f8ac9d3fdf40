"""Launches `_worker.py` in a fresh interpreter and parses its result."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))
WORKER = os.path.join(os.path.dirname(__file__), "_worker.py")


def worker_env(**extra):
    """The current environment with the worktree importable, plus `extra`."""
    env = dict(os.environ)
    path = env.get("PYTHONPATH")
    env["PYTHONPATH"] = ROOT + (os.pathsep + path if path else "")
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    env.update(extra)
    return env


def run_worker(command, args=None, timeout=240, **env):
    """Runs `_worker.py command args` and returns its JSON result."""
    proc = subprocess.run(
        [sys.executable, WORKER, command, json.dumps(args or {})],
        env=worker_env(KR_WORKER_WATCHDOG=str(max(timeout - 20, 10)), **env),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    lines = [
        line for line in proc.stdout.splitlines() if line.startswith("RESULT ")
    ]
    if proc.returncode != 0 or not lines:
        raise AssertionError(
            f"worker {command} failed (exit {proc.returncode}):\n"
            f"{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
        )
    return json.loads(lines[-1][len("RESULT ") :])
