"""Shared pieces of the benchmarks: realistic signed Stripe bodies, processes, wrk, RSS.

Nothing here is a test; the benchmarks are scripts run by hand (see bench/README.md).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
os.environ.setdefault("RELAY_SHARED_DIR", str(REPO.parent.parent / "shared"))
if not Path(os.environ["RELAY_SHARED_DIR"]).is_dir():
    os.environ["RELAY_SHARED_DIR"] = "/work/shared"
sys.path.insert(0, str(REPO))

from tests.helpers import STRIPE_SECRET, body_of, checkout_event, stop_process  # noqa: E402

PY = sys.executable
SIMMER_KEY = "simmer_sk_bench_0123456789"
WEBHOOK_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ------------------------------------------------------------------ bodies


class Bodies:
    """Realistic checkout.session.completed bodies (~3.5 KB, Stripe's pretty JSON) with unique
    event, session and payment-intent ids, built from one template (checkout_event) by
    replacing the ids, and signed like Stripe does (t=…,v1=HMAC-SHA256)."""

    def __init__(self, secret: str = STRIPE_SECRET) -> None:
        ev = checkout_event(email="buyer@example.com")
        self.secret = secret.encode()
        self.template = body_of(ev).decode()
        self.ids = (ev["id"], ev["data"]["object"]["id"], ev["data"]["object"]["payment_intent"])
        self.run = uuid.uuid4().hex[:8]

    def body(self, i: int) -> tuple[str, bytes]:
        """(session id, body) for the i-th event of this run."""
        tag = f"{self.run}{i:012d}"
        evt, cs, pi = self.ids
        session = cs[: len(cs) - len(tag)] + tag
        text = (
            self.template.replace(evt, evt[: len(evt) - len(tag)] + tag)
            .replace(cs, session)
            .replace(pi, pi[: len(pi) - len(tag)] + tag)
        )
        return session, text.encode()

    def sign(self, body: bytes, timestamp: int | None = None) -> str:
        t = int(time.time()) if timestamp is None else timestamp
        mac = hmac.new(self.secret, f"{t}.".encode() + body, hashlib.sha256).hexdigest()
        return f"t={t},v1={mac}"

    def raw_request(self, i: int, host: str, timestamp: int | None = None) -> tuple[str, bytes]:
        """(session id, a complete HTTP/1.1 POST /webhooks/stripe request)."""
        session, body = self.body(i)
        head = (
            f"POST /webhooks/stripe HTTP/1.1\r\nHost: {host}\r\n"
            f"User-Agent: Stripe/1.0 (+https://stripe.com/docs/webhooks)\r\n"
            f"Content-Type: application/json; charset=utf-8\r\n"
            f"Stripe-Signature: {self.sign(body, timestamp)}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        )
        return session, head.encode() + body


# ------------------------------------------------------------------ processes


def relay_env(db_url: str, *, dest_url: str | None = None, destination: str = "simmer",
              extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RELAY_", "DATABASE_URL"))}
    env.update({
        "PYTHONPATH": str(REPO),
        "RELAY_DATABASE_URL": db_url,
        "RELAY_STRIPE__WEBHOOK_SECRETS": STRIPE_SECRET,
    })
    url = dest_url or "http://127.0.0.1:9/unused"
    if destination == "simmer":
        env.update({
            "RELAY_SIMMER__SECRET_KEY": SIMMER_KEY,
            "RELAY_SIMMER__PROJECT_ID": "proj_bench",
            "RELAY_SIMMER__URL": url,
            "RELAY_SIMMER__RATE_LIMIT_PER_MINUTE": "0",
        })
    elif destination == "webhook":
        env.update({"RELAY_WEBHOOK__URL": url, "RELAY_WEBHOOK__SECRET": WEBHOOK_SECRET})
    env.update(extra or {})
    return env


class Proc:
    def __init__(self, name: str, argv: list[str], env: dict[str, str] | None, workdir: Path,
                 health: str) -> None:
        self.name, self.argv, self.env, self.workdir, self.health = name, argv, env, workdir, health
        self.log = workdir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 30) -> Proc:
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(self.argv, cwd=self.workdir, env=self.env, stdout=out,
                                         stderr=subprocess.STDOUT)
        deadline = time.time() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited {self.proc.returncode}:\n{self.log.read_text()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.health, timeout=1).status_code == 200:
                    return self
            if time.time() > deadline:
                raise RuntimeError(f"{self.name} did not become healthy:\n{self.log.read_text()}")
            time.sleep(0.05)

    def stop(self) -> None:
        stop_process(self.proc)

    def modules(self) -> str:
        """Which fast paths the process loaded (uvloop / httptools), from /proc/PID/maps."""
        maps = Path(f"/proc/{self.pid}/maps").read_text()
        found = [m for m in ("uvloop", "httptools") if f"/{m}/" in maps]
        return "+".join(found) or "asyncio+h11"


def relay_proc(workdir: Path, env: dict[str, str], *args: str) -> Proc:
    port = free_port()
    switch = os.environ.get("BENCH_SWITCHINTERVAL")  # experiment: sys.setswitchinterval in the relay
    probe = os.environ.get("BENCH_RELAY_MAIN")  # experiment: run the relay through another script
    if probe:
        return Proc("relay", [PY, probe, "serve", "--host", "127.0.0.1", "--port", str(port), *args],
                    env, workdir, f"http://127.0.0.1:{port}/healthz")
    if switch:
        code = f"import sys; sys.setswitchinterval({float(switch)}); from relay.cli import main; main()"
        return Proc("relay", [PY, "-c", code, "serve", "--host", "127.0.0.1", "--port", str(port), *args],
                    env, workdir, f"http://127.0.0.1:{port}/healthz")
    return Proc("relay", [PY, "-m", "relay", "serve", "--host", "127.0.0.1", "--port", str(port), *args],
                env, workdir, f"http://127.0.0.1:{port}/healthz")


def sink_proc(workdir: Path, *, record: bool = False, name: str = "sink") -> Proc:
    """bench/sink.py under uvicorn (uvloop + httptools): 200 to anything."""
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(REPO), BENCH_SINK_RECORD="1" if record else "0")
    return Proc(name, [PY, "-m", "uvicorn", "bench.sink:app", "--host", "127.0.0.1", "--port", str(port),
                       "--log-level", "warning", "--no-access-log"],
                env, workdir, f"http://127.0.0.1:{port}/healthz")


def url_of(proc: Proc) -> str:
    return proc.health.rsplit("/", 1)[0]


@contextlib.contextmanager
def workdir(prefix: str) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        if not os.environ.get("BENCH_KEEP"):
            shutil.rmtree(path, ignore_errors=True)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], p: float) -> float:
    s = sorted(values)
    if not s:
        return float("nan")
    k = min(len(s) - 1, max(0, round(p / 100 * (len(s) - 1))))
    return s[k]


# ------------------------------------------------------------------ wrk


def write_requests(path: Path, requests: list[bytes]) -> None:
    """One raw HTTP request after another, each preceded by its length line (for wrk.lua)."""
    with path.open("wb") as out:
        for req in requests:
            out.write(b"%d\n" % len(req))
            out.write(req)


def run_wrk(url: str, requests_file: Path, *, seconds: float, connections: int, threads: int,
            wrap: bool, stop_when: Any = None) -> dict[str, Any]:
    """wrk with bench/wrk.lua: cycles through the pre-signed requests (wrap) or stops each
    thread when its share is used up (no wrap: every request is a new event)."""
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: apt-get update && apt-get install -y wrk")
    # wrk's main thread sleeps for the whole duration even when every thread has stopped;
    # SIGINT ends it early and it still prints its summary (stop_when() decides).
    proc = subprocess.Popen(
        ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{max(1, round(seconds))}s", "--timeout", "10s",
         "-s", str(BENCH / "wrk.lua"), url, "--", str(requests_file), "wrap" if wrap else "once", str(threads)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    deadline = time.time() + seconds + 120
    while proc.poll() is None and time.time() < deadline:
        if stop_when is not None and stop_when():
            proc.send_signal(signal.SIGINT)
            break
        time.sleep(0.1)
    stdout, stderr = proc.communicate(timeout=max(1, deadline - time.time()))
    out = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
    if out.returncode != 0:
        raise RuntimeError(f"wrk failed: {out.stderr}\n{out.stdout}")
    for line in out.stdout.splitlines():
        if line.startswith("BENCH_JSON "):
            result = json.loads(line[len("BENCH_JSON "):])
            result["rps"] = result["requests"] / (result["duration_us"] / 1e6)
            result["stdout"] = out.stdout
            return result
    raise RuntimeError(f"wrk printed no summary:\n{out.stdout}\n{out.stderr}")


# ------------------------------------------------------------------ profiling


def pyspy_start(pid: int, seconds: float, out: Path) -> subprocess.Popen[bytes] | None:
    """py-spy record (raw collapsed stacks, per thread) when BENCH_PROFILE=1."""
    if os.environ.get("BENCH_PROFILE") != "1":
        return None
    exe = shutil.which("py-spy") or str(Path(PY).parent / "py-spy")
    return subprocess.Popen([exe, "record", "-p", str(pid), "-d", str(max(1, int(seconds))), "-r", "200",
                             "--format", "raw", "--threads", "--nonblocking", *(["--gil"] if os.environ.get("BENCH_PROFILE_GIL") else []), "-o", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def pyspy_report(proc: subprocess.Popen[bytes] | None, out: Path, top: int = 25) -> None:
    if proc is None:
        return
    proc.wait(120)
    if not out.exists():
        print("  (py-spy wrote nothing)")
        return
    own: dict[str, int] = {}
    incl: dict[str, int] = {}
    total = 0
    for line in out.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        count = int(n)
        frames = stack.split(";")
        total += count
        own[frames[-1]] = own.get(frames[-1], 0) + count
        for f in set(frames):
            incl[f] = incl.get(f, 0) + count
    print(f"  py-spy: {total} samples (all threads, idle included); top self time:")
    for f, n in sorted(own.items(), key=lambda kv: -kv[1])[:top]:
        print(f"    {n / total:6.1%}  {f[:150]}")
    print("  top inclusive:")
    for f, n in sorted(incl.items(), key=lambda kv: -kv[1])[:top]:
        print(f"    {n / total:6.1%}  {f[:150]}")
    print(f"  raw stacks: {out}")
