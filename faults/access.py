"""
The sequencer's access operations: clients that connect as users, with connect
tokens, and the three ways their access is taken back (a password change, a
deactivation, ``disconnect_user``). The oracle's rule (:mod:`faults.oracle`): once a
revocation is acknowledged, no broadcast published after it reaches a connection of
that user opened before it, and each such connection closes with 4003 within
REVOKE_SECONDS and does not come back.
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import TYPE_CHECKING

from faults.oracle import REVOKED, Violation

if TYPE_CHECKING:
    from faults.oracle import Client, Oracle
    from harness.servers import Server

USERS = ("fault.u0", "fault.u1", "fault.u2")
HOW = ("password", "deactivate", "disconnect")
# How long a revoked user's connection may stay open once the revocation is acknowledged.
REVOKE_SECONDS = 5.0


class AccessOps:
    """The access operations, for the sequencer's Run."""

    oracle: Oracle

    async def op_connect_user(
        self, server: Server, rng: random.Random, user: str, count: int
    ) -> None:
        token = (await self.oracle.publishers.ask({"op": "token", "user": user}))["token"]
        for _ in range(count):
            await self.oracle.connect(server, token=token, owner=user)

    async def op_revoke(self, server: Server, rng: random.Random, user: str, how: str) -> None:
        await revoke(self.oracle, user, how)


async def revoke(oracle: Oracle, user: str, how: str) -> None:
    """Take ``user``'s access back, ``how``; then hold the oracle's rule to it."""
    asked = time.monotonic()
    targets = [client for client in oracle.clients if client.owner == user]
    for client in targets:
        client.revoking = True  # a 4003 may come before the answer does
    # Connections open as it is asked for; one closed already (a restart) stays closed.
    open_then = {id(client) for client in targets if client.ws.close_code is None}
    answer = await oracle.publishers.ask({"op": "revoke", "user": user, "how": how})
    if not answer["sent"]:
        # Not acknowledged (the layer was away): it may or may not have reached them.
        return
    opened_before = [client for client in targets if client.welcomed_at < asked]
    for client in opened_before:
        client.revoked_after = answer["after"]
    deadline = time.monotonic() + REVOKE_SECONDS
    for client in opened_before:
        if client.task is None:
            continue
        _, open_still = await asyncio.wait([client.task], timeout=deadline - time.monotonic())
        if open_still:
            raise Violation(_still_open(client, how, answer["after"]))
        code, reason = client.ws.close_code, client.ws.close_reason
        # 4003; or 1013 "access recheck", when a hub.reset passed the revocation.
        if id(client) in open_then and code != REVOKED and reason != "access recheck":
            raise Violation(
                f"a connection of revoked user {client.owner} on {client.server.kind} was "
                f"closed with {code} {reason!r}, not 4003"
            )


def _still_open(client: Client, how: str, after: int) -> str:
    return (
        f"a connection of {client.owner} on {client.server.kind}:{client.server.port} was "
        f"still open {REVOKE_SECONDS}s after its revocation ({how}, acknowledged at id "
        f"{after}); its last frames:\n    " + "\n    ".join(client.recent)
    )
