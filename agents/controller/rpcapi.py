"""The controller's RPC endpoint: what agents ask the controller (topic `controller`).

Served by every replica on the deployment-wide target (`Messaging.rpc_server(
CONTROLLER_TOPIC, None, ...)`): replicas share one queue and any one answers. Calls
only, each answered from the database; nothing here changes desired state.

`desired_state(ctxt, payload=DesiredStateRequest)` -> `DesiredState`: what the agent of
`kind` on `host` should have, and what is known to be gone (`Store.desired_state`).
An agent calls it on start (`Messaging.controller_client().call(...)`, docs/api.md
"Agents' side") because a cast taken and not carried out before the agent died is
lost: the database is the record, casts are hints. A request that does not validate
is refused with InvalidMessage, a database outage with DatabaseError; the caller gets
either as RemoteError naming it, and the log has one warning line, no traceback.
"""

from __future__ import annotations

from typing import Any

import structlog

from agents.controller.db.engine import DatabaseError
from agents.controller.db.store import Store
from common.errors import InvalidMessage
from common.messages import DesiredState, DesiredStateRequest
from common.rpc import expect, expected_errors

log = structlog.get_logger()


class ControllerEndpoint:
    def __init__(self, store: Store, retention_days: float) -> None:
        self.store = store
        self.retention_days = retention_days

    @expected_errors(InvalidMessage, DatabaseError)
    def desired_state(self, ctxt: Any, payload: object = None, **extra: Any) -> DesiredState:
        try:
            req = expect(payload, DesiredStateRequest)
        except InvalidMessage as err:
            log.warning("desired_state_refused", problem=err.reason)
            raise
        assert isinstance(req, DesiredStateRequest)
        try:
            state = self.store.desired_state(req.host, req.kind, self.retention_days)
        except DatabaseError as err:
            log.warning("desired_state_failed", host=req.host, kind=req.kind, error=err.reason)
            raise
        log.info(
            "desired_state_sent",
            host=req.host,
            kind=req.kind,
            instances=len(state.instances),
            ports=len(state.ports),
            deleted_instances=len(state.deleted_instances),
            released_ports=len(state.released_ports),
        )
        return state
