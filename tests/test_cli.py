"""The command line's answers when there is nothing to do, or it cannot be done: a
reason on one line and a non-zero exit, never a silent 0 or a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import relay
from tests.emulators.base import free_port
from tests.helpers import REPO, checkout_event, wait_until


def run(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None):
    clean = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_") and k != "PORT"}
    clean.update(env or {})
    clean.setdefault("PYTHONPATH", str(REPO))
    return subprocess.run([sys.executable, "-m", "relay", *args], env=clean, cwd=cwd,
                          capture_output=True, text=True, timeout=60)


def test_version():
    done = run("--version")
    assert done.returncode == 0 and done.stdout.strip() == f"relay {relay.__version__}"


@pytest.mark.parametrize("port", ["99999", "-1", "http"])
def test_serve_refuses_a_port_out_of_range(tmp_path, port):
    done = run("serve", "--port", port, cwd=tmp_path)
    assert done.returncode == 2 and "argument --port" in done.stderr
    assert not (tmp_path / "relay.db").exists()  # refused before anything was opened


def test_retry_and_deliveries_say_why_nothing_happened(relay, simmer, impact):
    relay.post_stripe(checkout_event(metadata={"irclickid": "c"}))
    wait_until(lambda: simmer.accepted and impact.accepted, message="delivered")
    delivered = relay.deliveries(destination="simmer")[0]
    assert delivered["status"] == "delivered"

    missing = relay.cli("retry", "99999", check=False)
    assert missing.returncode == 1 and "requeued" not in missing.stdout
    assert missing.stderr.strip() == "relay: no delivery 99999 (`relay deliveries` lists them)"

    done = relay.cli("retry", str(delivered["id"]), check=False)
    assert done.returncode == 1
    assert f"delivery {delivered['id']} is delivered already" in done.stderr
    assert f"relay resend {delivered['id']}" in done.stderr
    assert len(simmer.accepted) == 1  # nothing was sent again

    for args in (("deliveries", "--id", "9999"), ("deliveries", "--id", "9999", "--json")):
        shown = relay.cli(*args, check=False)
        assert shown.returncode == 1 and shown.stdout == ""
        assert shown.stderr.strip() == "relay: no delivery 9999 (`relay deliveries` lists them)"


def test_retry_requeues_what_it_can_and_names_the_rest(relay, simmer, impact):
    simmer.fail_next(1, 400, body={"error": "bad project"})
    relay.post_stripe(checkout_event(metadata={"irclickid": "c"}))
    wait_until(lambda: relay.deliveries(status="failed"), message="dead letter")
    failed = relay.deliveries(status="failed")[0]
    done = relay.cli("retry", str(failed["id"]), "424242", check=False)
    assert done.returncode == 1
    assert done.stdout.strip() == "requeued 1 delivery"
    assert "no delivery 424242" in done.stderr
    wait_until(lambda: simmer.accepted, message="requeued delivery sent")


def test_simulate_with_no_relay_running_is_one_line(tmp_path):
    port = free_port()
    done = run("simulate", "stripe", env={"RELAY_STRIPE__WEBHOOK_SECRETS": "whsec_x",
                                          "PORT": str(port)}, cwd=tmp_path)
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr == (
        f"relay: nothing answers at http://127.0.0.1:{port} — is relay serve running?\n"
    )


def test_simulate_posts_the_sample_of_the_event_asked_for(relay_factory, tmp_path):
    env = {
        "RELAY_DATABASE_URL": f"sqlite:///{tmp_path / 'relay.db'}",
        "RELAY_STRIPE__WEBHOOK_SECRETS": "whsec_local",
        "RELAY_DELIVER_TEST_EVENTS": "true",
    }
    server = relay_factory(env)
    done = server.cli("simulate", "stripe", "--event", "invoice.paid", "--url", server.url,
                      "--email", "sam@example.org")
    assert done.stdout.startswith("200 ") and '"kind":"subscription_renewed"' in done.stdout
    unknown = server.cli("simulate", "stripe", "--event", "invoice.payed", "--url", server.url,
                         check=False)
    assert unknown.returncode == 1 and "known: checkout.session.completed" in unknown.stderr


@pytest.mark.parametrize("make_url", [
    lambda tmp: f"sqlite:///{tmp / 'a-file'}/relay.db",
    lambda tmp: "sqlite:////proc/relay.db",
    lambda tmp: f"sqlite:///{tmp}",
])
def test_an_unusable_sqlite_path_is_one_line_saying_why(tmp_path, make_url):
    (tmp_path / "a-file").write_text("not a directory")
    url = make_url(tmp_path)
    expected = {
        "a-file": f"{tmp_path / 'a-file'} is a file, not a directory",
        "/proc/": "/proc takes no new files",
    }
    for command in (("migrate",), ("deliveries",), ("serve", "--port", str(free_port()))):
        done = run(*command, env={"RELAY_DATABASE_URL": url}, cwd=tmp_path)
        assert done.returncode == 1, done.stderr
        [line] = done.stderr.splitlines()
        assert line.startswith("relay: cannot open SQLite database")
        reason = next((v for k, v in expected.items() if k in url), "is a directory; name a file")
        assert reason in line


def test_events_refuses_what_it_cannot_list(tmp_path):
    """`relay events --limit 0` said "no events" and `--limit -1` listed everything; an id
    not stored was exit 1 in text but a silent 0 with --json; a misspelt source listed
    nothing, as if it had no events."""
    env = {"RELAY_DATABASE_URL": f"sqlite:///{tmp_path / 'relay.db'}"}
    for args, words in ((["--limit", "0"], "--limit"), (["--limit", "-1"], "--limit"),
                        (["--source", "strip"], "invalid choice: 'strip'")):
        done = run("events", *args, env=env, cwd=tmp_path)
        assert done.returncode == 2 and words in done.stderr, (args, done.stderr)
    for args in (("--id", "9999"), ("--id", "9999", "--json")):
        done = run("events", *args, env=env, cwd=tmp_path)
        assert done.returncode == 1 and done.stdout == "", (args, done)
        assert "no stored event with id 9999" in done.stderr
    assert "invalid choice" in run("replay", "--source", "strip", env=env, cwd=tmp_path).stderr
    listed = run("events", "--limit", "5", env=env, cwd=tmp_path)
    assert listed.returncode == 0 and listed.stdout.strip() == "no events"
