"""The by-hand launcher (`python -m tests.emulators`), as the README's "Try it" and a user
trying `relay backfill` use it: a real launcher process, real `relay` commands."""

from __future__ import annotations

import os
import random
import socket
import subprocess
import sys
import threading

from tests.helpers import REPO, wait_until


def free_block(size: int = 12) -> int:
    """A first port of `size` consecutive ports that are free now."""
    for _ in range(50):
        base = random.randrange(20000, 60000)  # noqa: S311 - not for security
        socks = []
        try:
            for port in range(base, base + size):
                sock = socket.socket()
                socks.append(sock)
                sock.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
    raise AssertionError("no block of free ports")


def exports_of(text: str) -> dict[str, str]:
    return dict(line.removeprefix("export ").replace("'", "").split("=", 1)
                for line in text.splitlines() if line.startswith("export "))


def launcher(*args: str, **kw):
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    return [sys.executable, "-u", "-m", "tests.emulators", *args], {"cwd": REPO, "env": env, **kw}


def relay(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith(("RELAY_", "DATABASE_URL"))}
    full.update(env, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "relay", *args], env=full, cwd=REPO,
                          capture_output=True, text=True, timeout=60)


def test_a_missed_purchase_tried_by_hand_with_the_processor_stand_ins(tmp_path):
    base = str(free_block())
    cmd, kw = launcher("--processors", "--base-port", base)
    running = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(running.stdout.readline, "")),
                              daemon=True)
    reader.start()
    try:
        wait_until(lambda: any("stand-ins running" in line for line in lines) or running.poll() is not None,
                   timeout=60, message="the launcher started")
        assert running.poll() is None, "".join(lines)
        # The README's second step, while the stand-ins run: it took their ports and crashed.
        cmd, kw = launcher("--env-only", "--processors", "--base-port", base)
        printed = subprocess.run(cmd, capture_output=True, text=True, timeout=60, **kw)
        assert printed.returncode == 0, printed.stderr
        env = exports_of(printed.stdout)
        assert env == exports_of("".join(lines))
        assert env["RELAY_STRIPE__API_BASE"] == f"http://127.0.0.1:{int(base) + 8}"
        env.update(RELAY_STRIPE__WEBHOOK_SECRETS="whsec_launcher_test", RELAY_DELIVER_TEST_EVENTS="true",
                   RELAY_DATABASE_URL=f"sqlite:///{tmp_path / 'relay.db'}")

        missed = relay(env, "simulate", "stripe", "--url", env["RELAY_STRIPE__API_BASE"])
        assert missed.returncode == 0 and '"status":"missed"' in missed.stdout, missed
        wait_until(lambda: any("(missed by relay)" in line for line in lines), message="launcher line")
        first = relay(env, "backfill", "stripe", "--since", "1h")
        assert first.returncode == 0, first.stderr
        assert "1 event found; 1 new conversion recorded (8 deliveries planned)" in first.stdout
        again = relay(env, "backfill", "stripe", "--since", "1h")
        assert "0 new conversions recorded (0 deliveries planned), 1 already recorded" in again.stdout
    finally:
        running.terminate()
        running.wait(30)
