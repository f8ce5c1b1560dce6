"""Two agents-controller replicas on one PostgreSQL database, for real.

Each test has its own lab (agents/lab): a scratch PostgreSQL database (dropped at the
end), controllers as processes sharing it and one durable events queue, a host (a
namespace with both agents on libvirt's test driver). What is checked is what a replica
could get wrong: an operation driven twice (two cast hops for one attempt, a second
`instance.create.end`), one lost (not done), an instance built twice (a domain or an
address twice), a waiter on one replica blind to what the other consumed, two replicas
starting at once on an empty database, a second controller on one SQLite file, and an
event stream that must not skip an id PostgreSQL commits late.
"""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
import uuid as uuidlib
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import pytest

from agents.controller.db.engine import Database
from agents.controller.db.records import Records
from agents.controller.db.store import Store
from agents.lab.controller import LabController
from agents.lab.database import ScratchPostgres
from agents.lab.lab import Lab
from agents.lab.procs import console_script, tail, unique, wait_for
from common.config import BaseConfig, load
from common.messages import AgentHeartbeat, InstanceEvent, InstanceList
from common.rpc import COMPUTE_TOPIC, Messaging

pytestmark = pytest.mark.functional

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
# The API open (no tokens): these tests are about replicas, not authentication.
OPEN = {"auth": "none"}
FAST = {**OPEN, "redrive_after": 10, "reconcile_interval": 0.5, "host_sync_interval": 0}
COMPUTE = {"compute": {"heartbeat_interval": 1, "vcpus": 512, "memory_mb": 262144}}
L2 = {"l2": {"heartbeat_interval": 1}}


def _post(urls: list[str], body: dict[str, Any], key: str, deadline: float) -> dict[str, Any]:
    """POST a create with its Idempotency-Key, to the first controller that takes the
    connection; the same key again (to the next) while none answers."""
    last = ""
    while time.monotonic() < deadline:
        for url in urls:
            req = urllib.request.Request(
                f"{url}/v1/instances",
                data=json.dumps(body).encode(),
                method="POST",
                headers={"Content-Type": "application/json", "Idempotency-Key": key},
            )
            try:
                with urllib.request.urlopen(req, timeout=15) as resp:
                    return dict(json.loads(resp.read()))
            except urllib.error.HTTPError as err:
                raise AssertionError(f"POST {url}: {err.code} {err.read()!r}") from None
            except OSError as err:
                last = f"{url}: {err}"
        time.sleep(0.2)
    raise AssertionError(f"no controller took the create: {last}")


def _get(url: str, path: str) -> Any:
    with urllib.request.urlopen(f"{url}{path}", timeout=10) as resp:
        return json.loads(resp.read())


def _burst(urls: list[str], clients: int, count: int, prefix: str) -> dict[str, str]:
    """`clients` threads, each one create of `count` through `urls` (rotated per
    client); uuid -> the request id that asked for it."""
    asked: dict[str, str] = {}
    errors: list[str] = []
    lock = threading.Lock()
    deadline = time.monotonic() + 60

    def client(i: int) -> None:
        order = urls[i % len(urls) :] + urls[: i % len(urls)]
        body = {"name": f"{prefix}-c{i}", "count": count, "networks": ["net1"]}
        try:
            doc = _post(order, body, f"{prefix}-{i}", deadline)
        except AssertionError as err:
            errors.append(str(err))
            return
        with lock:
            for inst in doc["instances"]:
                asked[inst["uuid"]] = doc["request_id"]

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    for th in threads:
        th.start()
        time.sleep(0.02)
    for th in threads:
        th.join(70)
    assert not errors, errors
    return asked


def _settled(url: str, asked: dict[str, str]) -> bool:
    insts = {i["uuid"]: i for i in _get(url, "/v1/instances")}
    return all(
        u in insts and insts[u]["state"] in ("running", "error") and insts[u]["task"] is None
        for u in asked
    )


def _domains(lab: Lab, host: str) -> Counter[str]:
    messaging = Messaging(load(BaseConfig, [lab.write_shared()]).messaging)
    try:
        listing = messaging.rpc_client(COMPUTE_TOPIC, host, timeout=10).call("list_instances")
    finally:
        messaging.close()
    assert isinstance(listing, InstanceList)
    return Counter(str(i.uuid) for i in listing.instances)


def _check_each_built_once(lab: Lab, url: str, host: str, asked: dict[str, str]) -> list[str]:
    """Every asked instance running with its operation done; one domain each on the host,
    nothing else there or in the controller; one address each; per operation one
    `instance.create.end` and no attempt cast twice. Returns the operations' hop names."""
    problems: list[str] = []
    insts = {i["uuid"]: i for i in _get(url, "/v1/instances")}
    assert set(insts) == set(asked), (set(insts) - set(asked), set(asked) - set(insts))
    domains = _domains(lab, host)
    assert set(domains) == set(asked) and max(domains.values()) == 1, domains
    ips = Counter(p["fixed_ip"] for i in insts.values() for p in i["ports"])
    assert max(ips.values()) == 1, ips
    hops: list[str] = []
    for u in asked:
        inst = insts[u]
        if inst["state"] != "running":
            problems.append(f"{inst['name']}: {inst['state']} ({inst['fault']})")
        events = _get(url, f"/v1/instances/{u}/timeline")["events"]
        names = Counter(e["event"] for e in events)
        ops = _get(url, f"/v1/operations?instance={u}")
        if [o["state"] for o in ops] != ["done"]:
            problems.append(f"{inst['name']}: operations {[o['state'] for o in ops]}")
        if names["instance.create.end"] != 1 or names["operation.done"] != 1:
            problems.append(
                f"{inst['name']}: "
                + "; ".join(
                    f"{e['at'][11:23]} rec={str(e.get('recorded_at'))[11:23]} {e['event']}"
                    f" {e.get('reason') or ''}"
                    for e in events
                )
            )
        cast_hops = [
            e.get("reason") or "attempt 1"
            for e in events
            if e["event"] in ("casts.sent", "operation.retried")
        ]
        if len(cast_hops) != len(set(cast_hops)):
            problems.append(f"{inst['name']}: an attempt cast twice: {cast_hops}")
        hops += [e["event"] for e in events if e["event"] in ("casts.sent", "operation.retried")]
    assert not problems, problems
    return hops


def test_two_replicas_serve_a_burst_and_build_each_instance_once(root: None) -> None:
    with Lab.create(prefix="trep-", stop_signal=signal.SIGKILL) as lab:
        first = lab.start_controller(postgres=PG_ADMIN, settings=FAST, replicas=2)
        second = lab.replicas[0]
        node = lab.add_host("node1", compute=COMPUTE, l2=L2)
        asked = _burst([first.url, second.url], clients=8, count=4, prefix="rep")
        assert len(asked) == 32
        wait_for(lambda: _settled(first.url, asked), 90, 0.5, what="every instance settled")
        # both replicas served creates
        served = [
            sum(1 for m, p, _ in c.request_durations() if m == "POST" and p == "/v1/instances")
            for c in (first, second)
        ]
        assert all(served), served
        hops = _check_each_built_once(lab, second.url, node.host, asked)
        # nothing stalled: each operation's casts went out once, none re-driven
        assert Counter(hops) == Counter({"casts.sent": 32}), Counter(hops)


def test_kill_9_of_a_replica_mid_burst_loses_and_duplicates_nothing(root: None) -> None:
    with Lab.create(prefix="trek-", stop_signal=signal.SIGKILL) as lab:
        first = lab.start_controller(postgres=PG_ADMIN, settings=FAST, replicas=2)
        second = lab.replicas[0]
        node = lab.add_host("node1", compute=COMPUTE, l2=L2)
        killer = threading.Timer(0.25, lambda: first.stop(signal.SIGKILL))
        killer.start()
        try:
            asked = _burst([first.url, second.url], clients=10, count=4, prefix="kil")
        finally:
            killer.join()
        assert not first.running()
        assert len(asked) == 40
        wait_for(lambda: _settled(second.url, asked), 90, 0.5, what="every instance settled")
        time.sleep(2 * FAST["redrive_after"])  # a late re-drive would show up now
        _check_each_built_once(lab, second.url, node.host, asked)


def test_a_waiter_on_one_replica_sees_what_another_consumed(root: None) -> None:
    """agentctl --wait against replica A; the operation's events are applied by another
    replica's event path (Records on the same database), never by A itself."""
    with Lab.create(prefix="trew-", stop_signal=signal.SIGKILL) as lab:
        a = lab.start_controller(postgres=PG_ADMIN, settings={**OPEN, "host_sync_interval": 0})
        assert a.database is not None
        db = Database(a.database.url)
        try:
            store = Store(db, agent_down_time=600)
            other = Records(store)  # replica B's side: what its event consumer runs
            host = unique("ghost-")
            other.apply(
                "agent.heartbeat",
                AgentHeartbeat(
                    host=host, kind="compute", version="t", started_at=datetime.now(UTC),
                    uptime_s=1, vcpus=8, memory_mb=8192,
                ),
            )  # fmt: skip
            waiter = subprocess.Popen(
                [console_script("agentctl"), "--json", "send", "build", "--name", "w1",
                 "--host", host, "--wait", "--timeout", "60"],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                env={**lab.agentctl_env(), "AGENTS_URL": a.url},
            )  # fmt: skip
            try:
                insts = wait_for(
                    lambda: _get(a.url, "/v1/instances?name=w1"), 30, 0.1, what="w1 accepted"
                )
                inst = insts[0]
                time.sleep(1.0)  # the waiter is following the stream by now
                uuid = uuidlib.UUID(inst["uuid"])
                rid = inst["request_id"]
                for phase, state in (("start", "building"), ("end", "running")):
                    other.apply(
                        f"instance.create.{phase}",
                        InstanceEvent(request_id=rid, host=host, instance_uuid=uuid, state=state),
                    )
                applied = time.monotonic()
                out, err = waiter.communicate(timeout=30)
                seen_after = time.monotonic() - applied
            finally:
                if waiter.poll() is None:
                    waiter.kill()
                    waiter.wait()
            assert waiter.returncode == 0, (out, err, tail(a.log))
            assert json.loads(out.splitlines()[-1])["ok"] is True, out
            # the stream looks at the database every 0.5 s (and holds a row behind a
            # gap in the ids for at most 2 s)
            assert seen_after < 4.0, seen_after
            print(f"waiter on replica A saw the other's events after {seen_after:.2f}s")
        finally:
            db.close()


def test_two_replicas_starting_at_once_on_an_empty_database(root: None) -> None:
    with Lab.create(prefix="tres-", stop_signal=signal.SIGKILL) as lab:
        scratch = ScratchPostgres.create(PG_ADMIN)
        first = LabController(
            dir=lab.dir / "controller",
            etc=lab.write_shared().parent,
            events_queue=lab.scope.queue(unique(f"{lab.exchange}.controller-")),
            settings=OPEN,
        )
        first.database = scratch  # dropped by the lab's close(), with the first controller
        lab.controller = first
        etc = lab.dir / "etc-controller-2"
        etc.mkdir()
        (etc / "shared.conf").write_text(lab.shared_conf())
        second = LabController(
            dir=lab.dir / "controller-2", etc=etc, events_queue="", settings=OPEN,
            replica_of=first,
        )  # fmt: skip
        lab.replicas.append(second)
        failures: list[str] = []

        def start(ctl: LabController) -> None:
            try:
                ctl.start()
            except Exception as err:
                failures.append(f"{ctl.dir.name}: {err}")

        threads = [threading.Thread(target=start, args=(c,)) for c in (first, second)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(90)
        assert not failures, failures
        assert _get(first.url, "/healthz")["status"] == "ok"
        assert _get(second.url, "/healthz")["status"] == "ok"
        db = Database(scratch.url)
        try:
            assert db.current_revision() == db.head_revision()
        finally:
            db.close()
        names = [n["name"] for n in _get(second.url, "/v1/networks")]
        assert sorted(names) == sorted(lab.networks())
        for log in (first.log, second.log):
            assert "Traceback" not in log.read_text(), tail(log)


def test_a_second_controller_on_one_sqlite_file_refuses_to_start(root: None) -> None:
    with Lab.create(prefix="tresq-") as lab:
        ctl = lab.start_controller()
        proc = subprocess.run(ctl.command(), capture_output=True, text=True, timeout=60)
        said = proc.stdout + proc.stderr
        assert proc.returncode != 0, said
        assert "another agents-controller uses this SQLite file" in said, said
        assert "run replicas on PostgreSQL" in said
        assert _get(ctl.url, "/healthz")["status"] == "ok"  # the first one serves on


def test_a_stream_never_skips_an_event_id_committed_late() -> None:
    """PostgreSQL hands out ids at insert: id N+1 can commit before N. A reader must not
    get N+1 (and resume after it) while N is still open; a gap that stays (a rolled
    back writer) holds the rows after it for EVENT_GAP_HOLD_S only."""
    from sqlalchemy.orm import Session

    from agents.controller.db.store import EVENT_GAP_HOLD_S
    from tests.functional.controller.conftest import postgres_database

    with postgres_database() as url:
        db = Database(url)
        try:
            db.upgrade()
            store = Store(db, agent_down_time=60)

            def add(s: Session, name: str) -> None:
                store.add_event(s, datetime.now(UTC), None, None, source="t", event=name, host=None)
                s.flush()

            slow = Session(db.engine)
            slow.begin()
            add(slow, "first")  # id N, not committed
            with db.writing() as s:
                add(s, "second")  # id N+1, committed
            assert store.events_after(0) == []  # N+1 held: N may still come
            slow.commit()
            slow.close()
            got = store.events_after(0)
            assert [e["event"] for e in got] == ["first", "second"]
            last = got[-1]["id"]

            gone = Session(db.engine)
            gone.begin()
            add(gone, "rolled back")
            gone.rollback()
            gone.close()
            with db.writing() as s:
                add(s, "third")
            assert store.events_after(last) == []
            time.sleep(EVENT_GAP_HOLD_S + 0.2)
            assert [e["event"] for e in store.events_after(last)] == ["third"]
        finally:
            db.close()
