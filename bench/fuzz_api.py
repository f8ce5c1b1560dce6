#!/usr/bin/env python3
"""The controller's API fuzzed from its own OpenAPI document (Schemathesis), then audited.

One lab (agents/lab): agents-controller as a process on SQLite with tokens (as
installed), one host (a network namespace with its l2-agent and compute-agent on
libvirt's test driver), so builds, reboots and deletes really reach agents. Schemathesis
(`st run`, the test extra) reads `/openapi.json` with the lab's admin token and runs its
phases: examples, coverage (boundary and invalid values of every parameter), fuzzing
(random valid and invalid requests) and stateful (a build's 202 links to show, timeline,
reboot and delete of the instance it made). Checks: not_a_server_error,
response_schema_conformance (every answer, errors included, matches the schema) and
ignored_auth (an operation that needs the token refuses a request without it).

Then the database is audited through the store's own reads, once every operation has
ended (bounded wait): nothing half-created —

- every live instance has 1-8 ports (none when its build failed: state error with a
  fault, its ports released), an operation, no task left, a settled state;
- every port belongs to a live instance and is listed under it; no MAC and no fixed IP
  of one network is held twice;
- every operation has ended (done or error) and names an instance that exists;

then every live instance is deleted through the API and must end deleted, its ports gone.

One line, then the counts by status code and by operation:

  FUZZ cases=N requests=N 2xx=N 4xx=N 5xx=N failures=N errors=N half_created=N seconds=S

Usage (root): .venv/bin/python bench/fuzz_api.py [--quick] [--max-examples N]
              [--max-time S] [--seed N] [--keep DIR]
--quick is the CI budget (a few examples per operation, about a minute all told).
Exit status 0 only when 5xx=0, failures=0, errors=0 and half_created=0. The lab (its
processes, namespace, queues, database) is removed at the end, also on failure.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from agents.controller.db.engine import Database  # noqa: E402
from agents.controller.db.store import Store  # noqa: E402
from agents.lab.lab import Lab  # noqa: E402
from agents.lab.procs import console_script  # noqa: E402

CHECKS = "not_a_server_error,response_schema_conformance,ignored_auth"
SETTLED = {"running", "shutoff", "paused", "crashed", "error", "deleted"}


def run_schemathesis(
    lab: Lab, out: Path, max_examples: int, max_time: float | None, seed: int
) -> dict[str, Any]:
    ctl = lab.controller
    assert ctl is not None and ctl.token is not None
    out.mkdir(parents=True, exist_ok=True)
    cmd = [
        console_script("st"),
        "run",
        f"{ctl.url}/openapi.json",
        "--header",
        f"Authorization: Bearer {ctl.token}",
        "--checks",
        CHECKS,
        "--phases",
        "examples,coverage,fuzzing,stateful",
        "--max-examples",
        str(max_examples),
        "--seed",
        str(seed),
        "--workers",
        "1",
        "--request-timeout",
        "20",
        "--generation-database",
        "none",
        "--report",
        "ndjson,json",
        "--report-dir",
        str(out),
        "--no-color",
    ]
    if max_time is not None:
        cmd += ["--max-time", str(int(max_time))]
    started = time.monotonic()
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "bench.fuzz_hooks", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(cmd, cwd=out, env=env, capture_output=True, text=True, timeout=3600)
    (out / "st.out").write_text(proc.stdout + proc.stderr)
    reports = sorted(out.glob("json-*.json"))
    if not reports:
        raise SystemExit(f"st run left no report (exit {proc.returncode}):\n{proc.stdout[-4000:]}")
    report = json.loads(reports[-1].read_text())
    statuses: collections.Counter[str] = collections.Counter()
    per_operation: collections.Counter[tuple[str, str]] = collections.Counter()
    for ndjson in sorted(out.glob("ndjson-*.ndjson")):
        for line in ndjson.read_text().splitlines():
            event = json.loads(line)
            finished = event.get("ScenarioFinished")
            if not finished:
                continue
            recorder = finished.get("recorder", {})
            for interaction in recorder.get("interactions", {}).values():
                response = interaction.get("response")
                code = str(response["status_code"]) if response else "none"
                statuses[code] += 1
                request = interaction.get("request", {})
                label = recorder.get("label", "?")
                if "->" in label or not label.startswith(("GET", "POST", "DELETE")):
                    label = f"{request.get('method', '?')} (stateful)"
                per_operation[(label, code)] += 1
    return {
        "exit_code": proc.returncode,
        "seconds": round(time.monotonic() - started, 1),
        "cases": report["test_cases"]["generated"],
        "failures": len(report.get("failures", [])),
        "failure_details": report.get("failures", []),
        "errors": len(report.get("errors", [])),
        "error_details": report.get("errors", []),
        "statuses": statuses,
        "per_operation": per_operation,
        "stdout": proc.stdout,
    }


# --------------------------------------------------------------------------- audit


def _store(lab: Lab) -> tuple[Database, Store]:
    ctl = lab.controller
    assert ctl is not None
    url = ctl.database_url or f"sqlite:///{ctl.dir / 'state' / 'controller' / 'controller.sqlite'}"
    db = Database(url)
    return db, Store(db, agent_down_time=60)


def wait_settled(store: Store, timeout: float) -> list[dict[str, Any]]:
    """Operations still open after `timeout` (none once everything has ended)."""
    deadline = time.monotonic() + timeout
    while True:
        open_ops = [op for op in store.operations() if op["state"] not in ("done", "error")]
        if not open_ops or time.monotonic() > deadline:
            return open_ops
        time.sleep(0.5)


def audit(store: Store) -> list[str]:
    """Everything half-created, one line each (empty: all consistent)."""
    problems: list[str] = []
    live = {i["uuid"]: i for i in store.list_instances()}
    ports = store.ports()
    for uuid, listed in live.items():
        inst = store.show(uuid)
        name = f"instance {inst['name']} ({uuid})"
        if inst["state"] == "error":
            # a failed build releases its ports (docs/api.md); it must say why it failed
            if not inst["fault"]:
                problems.append(f"{name} is in error without a fault")
            if len(inst["ports"]) > 8:
                problems.append(f"{name} has {len(inst['ports'])} ports")
        elif not 1 <= len(inst["ports"]) <= 8:
            problems.append(f"{name} ({inst['state']}) has {len(inst['ports'])} ports")
        if not inst["operations"]:
            problems.append(f"{name} has no operation")
        elif inst["operations"][-1]["kind"] != "create":
            problems.append(f"{name}'s first operation is {inst['operations'][-1]['kind']}")
        if inst["task"] is not None:
            problems.append(f"{name} still has task {inst['task']}")
        if inst["state"] not in SETTLED:
            problems.append(f"{name} is left in state {inst['state']}")
        listed_ports = sorted(p["id"] for p in listed["ports"])
        owned = sorted(p["id"] for p in ports if p["instance_uuid"] == uuid)
        if listed_ports != owned:
            problems.append(f"{name}: ports {listed_ports} listed, {owned} in GET /v1/ports")
    macs: collections.Counter[str] = collections.Counter()
    ips: collections.Counter[tuple[str, str]] = collections.Counter()
    for port in ports:
        if port["instance_uuid"] not in live:
            problems.append(f"port {port['id']} belongs to no live instance")
            continue
        macs[port["mac"]] += 1
        if port["fixed_ip"]:
            ips[(port["network_id"], port["fixed_ip"])] += 1
    problems += [f"MAC {mac} is held {n} times" for mac, n in macs.items() if n > 1]
    problems += [
        f"address {ip} of {net} is held {n} times" for (net, ip), n in ips.items() if n > 1
    ]
    known = set(live) | {i["uuid"] for i in store.list_instances(state="deleted")}
    for op in store.operations():
        if op["state"] not in ("done", "error"):
            problems.append(f"operation {op['id']} ({op['kind']}) is still {op['state']}")
        if op["instance_uuid"] not in known:
            problems.append(f"operation {op['id']} names no instance ({op['instance_uuid']})")
    return problems


def delete_everything(lab: Lab, store: Store, timeout: float) -> list[str]:
    """DELETE every live instance through the API; what is left afterwards."""
    ctl = lab.controller
    assert ctl is not None
    import urllib.error
    import urllib.request

    for inst in store.list_instances():
        req = urllib.request.Request(
            f"{ctl.url}/v1/instances/{inst['uuid']}",
            method="DELETE",
            headers={"Authorization": f"Bearer {ctl.token}"},
        )
        for _attempt in range(20):  # instance.busy (409) while its last operation ends
            try:
                urllib.request.urlopen(req, timeout=10).close()
                break
            except urllib.error.HTTPError as err:
                if err.code != 409:
                    return [f"DELETE {inst['uuid']}: {err.code} {err.read()[:200]!r}"]
                time.sleep(0.5)
    still = wait_settled(store, timeout)
    left = [f"instance {i['name']} ({i['uuid']}) not deleted" for i in store.list_instances()]
    left += [f"port {p['id']} left after delete" for p in store.ports()]
    left += [f"operation {op['id']} still {op['state']}" for op in still]
    return left


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="the CI budget")
    p.add_argument("--max-examples", type=int, help="per operation (default 25; quick 4)")
    p.add_argument("--max-time", type=float, help="seconds for the whole Schemathesis run")
    p.add_argument("--seed", type=int, default=20261130)
    p.add_argument("--keep", type=Path, help="keep Schemathesis' reports and the logs here")
    args = p.parse_args(argv)
    max_examples = args.max_examples or (4 if args.quick else 25)
    started = time.monotonic()
    lab = Lab.create(prefix="fuzz-", stop_signal=signal.SIGKILL)
    result: dict[str, Any] = {}
    problems: list[str] = []
    try:
        # count at most 3 per request, and a host with room for a few hundred small
        # instances: the stateful phase's builds keep succeeding, so its show, reboot and
        # delete steps get real instances, without thousands of taps to remove afterwards
        lab.start_controller(settings={"redrive_after": 5, "reconcile_interval": 1, "max_count": 3})
        lab.add_host("node1", compute={"compute": {"vcpus": 256, "memory_mb": 524288}})
        # one instance built before the run: the event stream and the timeline have
        # something to replay, even for the few examples of --quick
        seed = lab.agentctl("send", "build", "--name", "seed", "--wait", "--timeout", "60")
        if seed.returncode != 0:
            raise SystemExit(f"the seed build failed:\n{seed.stdout}{seed.stderr}")
        out = lab.dir / "schemathesis"
        result = run_schemathesis(lab, out, max_examples, args.max_time, args.seed)
        db, store = _store(lab)
        try:
            wait_settled(store, 60)
            problems = audit(store)
            problems += delete_everything(lab, store, 60)
        finally:
            db.close()
        token = lab.controller.token if lab.controller else None
        for report in (f for f in out.rglob("*") if f.is_file()):
            if token and token in report.read_text(errors="replace"):
                problems.append(f"the API token is in Schemathesis' {report.name}")
        if args.keep:
            shutil.copytree(out, args.keep / "schemathesis", dirs_exist_ok=True)
            (args.keep / "lab.log").write_text(lab.logs())
    finally:
        lab.close()
    statuses = result["statuses"]
    by_class: collections.Counter[str] = collections.Counter()
    for code, n in statuses.items():
        by_class[f"{code[0]}xx" if code[0].isdigit() else code] += n
    print(
        f"FUZZ cases={result['cases']} requests={sum(statuses.values())}"
        f" 2xx={by_class['2xx']} 4xx={by_class['4xx']} 5xx={by_class['5xx']}"
        f" failures={result['failures']} errors={result['errors']}"
        f" half_created={len(problems)} seconds={time.monotonic() - started:.1f}"
    )
    print("by status: " + " ".join(f"{c}={n}" for c, n in sorted(statuses.items())))
    width = max((len(op) for op, _ in result["per_operation"]), default=10)
    for (op, code), n in sorted(result["per_operation"].items()):
        print(f"  {op:<{width}}  {code}  {n}")
    for problem in problems:
        print(f"HALF_CREATED {problem}")
    for failure in result["failure_details"][:10]:
        print(f"FAILURE {json.dumps(failure)[:600]}")
    for error in result["error_details"][:10]:
        print(f"ERROR {json.dumps(error)[:600]}")
    if result["exit_code"] not in (0, 1):
        print(result["stdout"][-3000:])
    ok = by_class["5xx"] == 0 and not result["failures"] and not result["errors"] and not problems
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
