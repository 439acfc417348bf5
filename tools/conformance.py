"""Run the Autobahn|Testsuite fuzzingclient against ``/ws/echo``; fail on any FAILED case.

Usage: ``python tools/conformance.py [--cases 1.*,2.*] [--compression-cases 12.*,13.*]
[--build-dir build/autobahn]`` (``make conformance`` runs it with the project's virtualenv).

Two relays are tested in one fuzzingclient run, one report: ``triorelay`` (compression off, the
default) with sections 1-7, 9 and 10, and ``triorelay-deflate`` (``TRIORELAY_COMPRESSION=true``)
with sections 12 and 13, the permessage-deflate ones.

Autobahn|Testsuite is Python 2 only. The interpreter comes from ``$PYTHON2``, else the newest
pyenv 2.7; ``autobahntestsuite==0.8.2`` is installed with that interpreter's pip into a user
base under the build folder (``PYTHONUSERBASE``), once. Each relay runs as
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
COMPRESSION_CASES = ["12.*", "13.*"]
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


def start_relay(log_path: Path, *, compression: bool) -> tuple[subprocess.Popen[bytes], int]:
    env = dict(
        os.environ,
        TRIORELAY_MAX_MESSAGE_BYTES=str(16 * 1024 * 1024),
        TRIORELAY_CONSUMER_BUFFER_BYTES=str(64 * 1024 * 1024),
        TRIORELAY_COMPRESSION="true" if compression else "false",
        TRIORELAY_LOG_LEVEL="INFO",
    )
    log = log_path.open("wb")
    relay = subprocess.Popen(
        [sys.executable, "-m", "triorelay", "serve", "--port", "0"],
        stderr=log,
        stdout=subprocess.DEVNULL,
        env=env,
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
    parser.add_argument("--compression-cases", default=",".join(COMPRESSION_CASES))
    parser.add_argument("--build-dir", default="build/autobahn")
    args = parser.parse_args(argv)
    build = Path(args.build_dir).resolve()
    reports = build / "reports"
    build.mkdir(parents=True, exist_ok=True)
    python2 = find_python2()
    userbase = build / "userbase"
    wstest = install_wstest(python2, userbase)
    cases = [case for case in args.cases.split(",") if case]
    compression_cases = [case for case in args.compression_cases.split(",") if case]
    relay, port = start_relay(build / "relay.log", compression=False)
    deflate_relay, deflate_port = start_relay(build / "relay-deflate.log", compression=True)
    started = time.monotonic()
    try:
        spec = {
            "outdir": str(reports),
            "servers": [
                {"agent": "triorelay", "url": f"ws://127.0.0.1:{port}/ws/echo"},
                {"agent": "triorelay-deflate", "url": f"ws://127.0.0.1:{deflate_port}/ws/echo"},
            ],
            "cases": cases + compression_cases,
            "exclude-cases": [],
            # Each relay runs its own sections only.
            "exclude-agent-cases": {
                "triorelay": compression_cases,
                "triorelay-deflate": cases,
            },
        }
        spec_path = build / "fuzzingclient.json"
        spec_path.write_text(json.dumps(spec, indent=2))
        env = dict(os.environ, PYTHONUSERBASE=str(userbase))
        subprocess.run([str(wstest), "-m", "fuzzingclient", "-s", str(spec_path)], check=True,
                       env=env, cwd=build)  # fmt: skip
    finally:
        for process in (relay, deflate_relay):
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=10)
    elapsed = time.monotonic() - started
    index = json.loads((reports / "index.json").read_text())
    status = 0
    for agent in ("triorelay", "triorelay-deflate"):
        results = index.get(agent, {})
        behaviours = Counter(result["behavior"] for result in results.values())
        failed = sorted(case for case, result in results.items() if result["behavior"] != "OK"
                        and result["behavior"] not in ("NON-STRICT", "INFORMATIONAL"))  # fmt: skip
        print(f"conformance: {agent}: {len(results)} cases: {dict(behaviours)}")
        if not results:
            print(f"conformance: {agent}: no results")
            status = 1
        if failed:
            print(f"conformance: {agent}: FAILED cases: {', '.join(failed)}")
            status = 1
    print(f"conformance: {elapsed:.0f} s of tests; report {reports}/index.html")
    return status


if __name__ == "__main__":
    raise SystemExit(main())
