"""Run the Autobahn|Testsuite fuzzingclient against ``/ws/echo``; fail on any FAILED case.

Usage: ``python tools/conformance.py [--full] [--cases 1.*,2.*] [--compression-cases 12.1.1]
[--build-dir build/autobahn]`` (``make conformance`` runs it with the project's virtualenv,
``make conformance-full`` with ``--full``).

Two relays are tested in one fuzzingclient run and one report: ``triorelay`` (compression off,
the default) with sections 1-7, 9 and 10, and ``triorelay-deflate``
(``TRIORELAY_COMPRESSION=true``) with the permessage-deflate sections 12 and 13.

Sections 12 and 13 are 216 cases: 18 message sizes (16 B to 128 KiB, whole or fragmented),
each sent 1000 times, for 5 payloads (12.1-12.5) and 7 sets of deflate parameters (13.1-13.7).
All of them took 1196 and 1337 s in two runs on this project's 2 shared cores, three quarters
of it in the 64 and 128 KiB sizes. By default this runs every payload and every parameter set
with 6 of the sizes (72 cases, 234 s of the second run): 16 B, 1 KiB, 16 KiB and 64 KiB whole
(a compressed message spanning several socket reads, so several bounded inflate calls), 8 KiB
and 32 KiB in 256-byte fragments. The sizes left out take no other path through the relay
(each chunk is inflated and counted the same way); ``--full`` runs all 216.

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
FULL_COMPRESSION_CASES = ["12.*", "13.*"]
_SIZES = (1, 4, 7, 9, 11, 13)  # see the module docstring
COMPRESSION_CASES = [f"12.{payload}.{size}" for payload in range(1, 6) for size in _SIZES] + [
    f"13.{parameters}.{size}" for parameters in range(1, 8) for size in _SIZES
]
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
    parser.add_argument("--full", action="store_true", help="all of sections 12 and 13")
    parser.add_argument("--build-dir", default="build/autobahn")
    args = parser.parse_args(argv)
    build = Path(args.build_dir).resolve()
    reports = build / "reports"
    build.mkdir(parents=True, exist_ok=True)
    python2 = find_python2()
    userbase = build / "userbase"
    wstest = install_wstest(python2, userbase)
    compression_cases = FULL_COMPRESSION_CASES if args.full else args.compression_cases.split(",")
    agents = {  # agent: (compression, cases)
        "triorelay": (False, [case for case in args.cases.split(",") if case]),
        "triorelay-deflate": (True, [case for case in compression_cases if case]),
    }
    agents = {agent: spec for agent, spec in agents.items() if spec[1]}
    relays: list[subprocess.Popen[bytes]] = []
    started = time.monotonic()
    try:
        servers = []
        for agent, (compression, _) in agents.items():
            relay, port = start_relay(build / f"{agent}.log", compression=compression)
            relays.append(relay)
            servers.append({"agent": agent, "url": f"ws://127.0.0.1:{port}/ws/echo"})
        every_case = [case for _, cases in agents.values() for case in cases]
        spec = {
            "outdir": str(reports),
            "servers": servers,
            "cases": every_case,
            "exclude-cases": [],
            # Each relay runs its own cases only.
            "exclude-agent-cases": {
                agent: [case for case in every_case if case not in cases]
                for agent, (_, cases) in agents.items()
            },
        }
        spec_path = build / "fuzzingclient.json"
        spec_path.write_text(json.dumps(spec, indent=2))
        env = dict(os.environ, PYTHONUSERBASE=str(userbase))
        subprocess.run([str(wstest), "-m", "fuzzingclient", "-s", str(spec_path)], check=True,
                       env=env, cwd=build)  # fmt: skip
    finally:
        for relay in relays:
            relay.send_signal(signal.SIGTERM)
            relay.wait(timeout=10)
    elapsed = time.monotonic() - started
    index = json.loads((reports / "index.json").read_text())
    status = 0
    for agent in agents:
        results = index.get(agent, {})
        behaviours = Counter(result["behavior"] for result in results.values())
        # UNIMPLEMENTED counts as a failure: for 12-13 it means deflate was not negotiated.
        passed = ("OK", "NON-STRICT", "INFORMATIONAL")
        failed = sorted(case for case, res in results.items() if res["behavior"] not in passed)
        print(f"conformance: {agent}: {len(results)} cases: {dict(behaviours)}")
        if not results or failed:
            print(f"conformance: {agent}: FAILED cases: {', '.join(failed) or 'no results'}")
            status = 1
    print(f"conformance: {elapsed:.0f} s; report {reports}/index.html")
    return status


if __name__ == "__main__":
    raise SystemExit(main())
