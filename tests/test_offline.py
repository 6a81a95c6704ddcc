"""No network at run time: with every socket blocked, a cell runs to "pass" without one connection attempt,
and a hub model id is refused offline instead of being fetched."""
from __future__ import annotations

import json
import subprocess
import sys

SCRIPT = r'''
import json, os, socket, sys
attempts = []

def refuse(*args, **kwargs):
    attempts.append(repr(args[:2]))
    raise OSError("network blocked by the test")

socket.socket.connect = lambda self, *a: refuse(*a)
socket.socket.connect_ex = lambda self, *a: refuse(*a)
socket.create_connection = refuse
socket.getaddrinfo = refuse

os.environ["HF_HUB_OFFLINE"] = "0"            # a user environment that allows the hub ...
import harness                                 # ... is forced offline by the harness
from harness.running.isolation import CellRunner
case = harness.load_case_file(sys.argv[1])
runner = CellRunner(known_issues=[])
record = runner.run(case, "cpu", "fp32")
runner.close()
plain = harness.run_cell(case, "cpu", "fp32", known_issues=[])
import transformers
try:
    transformers.AutoConfig.from_pretrained("google-bert/bert-base-uncased")
    hub = "fetched"
except Exception as exc:
    hub = type(exc).__name__ + ": " + str(exc)[:200]
print(json.dumps({"offline": os.environ["HF_HUB_OFFLINE"], "isolated": record["status"],
                  "plain": plain["status"], "hub": hub, "attempts": attempts}))
'''


def test_a_cell_runs_with_every_socket_blocked_and_nothing_is_fetched(write_case, tmp_path):
    path = write_case(devices=["cpu"])
    env_home = tmp_path / "hf_home"  # an empty hub cache: nothing could come from a cache either
    result = subprocess.run([sys.executable, "-c", SCRIPT, str(path)], capture_output=True, text=True, timeout=300,
                            env={"PATH": "/usr/bin:/bin", "HF_HOME": str(env_home), "HOME": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["offline"] == "1"
    assert out["isolated"] == "pass" and out["plain"] == "pass"
    assert out["hub"] != "fetched"
    assert "offline" in out["hub"].lower(), out["hub"]  # refused because offline, not because the network failed
    assert out["attempts"] == [], out["attempts"]
