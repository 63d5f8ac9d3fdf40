"""Runs a worker script in a fresh interpreter and reads its JSON result.

Both sides live here: a test calls `run_worker(script, command, args)`; the
script ends with `serve(COMMANDS)`, which runs `COMMANDS[command](**args)`
and prints the one line `RESULT <json>` that `run_worker` parses. Workers
return raw facts (numbers, lists, flags); the tests make the assertions.
"""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))


def worker_env(**extra):
    """The current environment with the worktree importable, plus `extra`."""
    env = dict(os.environ)
    path = env.get("PYTHONPATH")
    env["PYTHONPATH"] = ROOT + (os.pathsep + path if path else "")
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    # XLA flags add up: a worker's device count joins the suite's flags
    # (conftest.py) instead of replacing them.
    flags = " ".join(
        f for f in (env.get("XLA_FLAGS"), extra.pop("XLA_FLAGS", None)) if f
    )
    env.update(extra)
    if flags:
        env["XLA_FLAGS"] = flags
    return env


def run_worker(script, command, args=None, timeout=240, **env):
    """Runs `script command args` and returns its JSON result."""
    proc = subprocess.run(
        [sys.executable, script, command, json.dumps(args or {})],
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
            f"worker {os.path.basename(script)} {command} failed "
            f"(exit {proc.returncode}):\n"
            f"{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
        )
    return json.loads(lines[-1][len("RESULT ") :])


def serve(commands):
    """A worker's main: runs the command named on the command line."""
    import faulthandler

    command, args = sys.argv[1], json.loads(sys.argv[2])
    # A hung worker prints every thread's stack to stderr (which the test
    # shows) shortly before `run_worker`'s timeout kills it.
    faulthandler.dump_traceback_later(
        float(os.environ.get("KR_WORKER_WATCHDOG", "200")), exit=True
    )
    result = commands[command](**args)
    print("RESULT " + json.dumps(result), flush=True)
