"""Run the Autobahn|Testsuite fuzzingclient against ``/ws/echo``; fail on any FAILED case.

Usage: ``python tools/conformance.py [--cases 1.*,2.*] [--build-dir build/autobahn]``
(``make conformance`` runs it with the project's virtualenv).

Autobahn|Testsuite is Python 2 only. The interpreter comes from ``$PYTHON2``, else the newest
pyenv 2.7; ``autobahntestsuite==0.8.2`` is installed with that interpreter's pip into a user
base under the build folder (``PYTHONUSERBASE``), once. The relay runs as
``python -m triorelay serve`` on a free port, with messages up to 16 MiB (section 9 sends them).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

DEFAULT_CASES = ["1.*", "2.*", "3.*", "4.*", "5.*", "6.*", "7.*", "9.*", "10.*"]
LISTENING = re.compile(r"Running on http://127\.0\.0\.1:(\d+)")


def find_python2() -> str:
    explicit = os.environ.get("PYTHON2")
    if explicit:
        return explicit
    candidates = sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/2.7*/bin/python")))
    if not candidates:
        raise SystemExit("conformance: no Python 2.7 found (set PYTHON2)")
    return candidates[-1]


def install_wstest(python2: str, userbase: Path) -> Path:
    wstest = userbase / "bin" / "wstest"
    if not wstest.exists():
        env = dict(os.environ, PYTHONUSERBASE=str(userbase))
        subprocess.run(
            [python2, "-m", "pip", "install", "--quiet", "--user", "autobahntestsuite==0.8.2"],
            check=True,
            env=env,
        )
    return wstest


def start_relay(log_path: Path) -> tuple[subprocess.Popen[bytes], int]:
    env = dict(
        os.environ,
        TRIORELAY_MAX_MESSAGE_BYTES=str(16 * 1024 * 1024),
        TRIORELAY_CONSUMER_BUFFER_BYTES=str(64 * 1024 * 1024),
        TRIORELAY_LOG_LEVEL="WARNING",
    )
    log = log_path.open("wb")
    relay = subprocess.Popen(
        [sys.executable, "-m", "triorelay", "serve", "--port", "0"],
        stderr=log,
        stdout=subprocess.DEVNULL,
        env=dict(env, TRIORELAY_LOG_LEVEL="INFO"),
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        match = LISTENING.search(log_path.read_text(errors="replace"))
        if match:
            return relay, int(match.group(1))
        if relay.poll() is not None:
            break
        time.sleep(0.1)  # polling a log file written by another process
    relay.kill()
    raise SystemExit(f"conformance: the relay did not start; see {log_path}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cases", default=",".join(DEFAULT_CASES))
    parser.add_argument("--build-dir", default="build/autobahn")
    args = parser.parse_args(argv)
    build = Path(args.build_dir).resolve()
    reports = build / "reports"
    build.mkdir(parents=True, exist_ok=True)
    python2 = find_python2()
    userbase = build / "userbase"
    wstest = install_wstest(python2, userbase)
    relay, port = start_relay(build / "relay.log")
    try:
        spec = {
            "outdir": str(reports),
            "servers": [{"agent": "triorelay", "url": f"ws://127.0.0.1:{port}/ws/echo"}],
            "cases": args.cases.split(","),
            "exclude-cases": [],
            "exclude-agent-cases": {},
        }
        spec_path = build / "fuzzingclient.json"
        spec_path.write_text(json.dumps(spec, indent=2))
        env = dict(os.environ, PYTHONUSERBASE=str(userbase))
        subprocess.run([str(wstest), "-m", "fuzzingclient", "-s", str(spec_path)], check=True,
                       env=env, cwd=build)  # fmt: skip
    finally:
        relay.send_signal(signal.SIGTERM)
        relay.wait(timeout=10)
    results = json.loads((reports / "index.json").read_text())["triorelay"]
    behaviours = Counter(result["behavior"] for result in results.values())
    failed = sorted(case for case, result in results.items() if result["behavior"] == "FAILED")
    print(f"conformance: {len(results)} cases: {dict(behaviours)}; report {reports}/index.html")
    if failed:
        print(f"conformance: FAILED cases: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
