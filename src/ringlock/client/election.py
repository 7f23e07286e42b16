"""Leader election on a lock: the first in the queue leads, and says so in a key.

`campaign(value)` waits for the lock `{election/NAME}`, then writes `value` to the key
`{election/NAME}/leader`, fenced with the grant and attached to the holder's lease: the
same shard (the `{hash tag}`), so when the leader's lease ends, the cluster deletes the
key in the same command that hands the lock to the next candidate. `leader()` reads the
key; `observe()` watches it; `resign()` deletes it and releases. As etcd's
concurrency.Election, with the queue doing the ordering.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ringlock.client.locks import AsyncLock

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from ringlock.client.aio import AsyncClient, Key


class AsyncElection:
    def __init__(self, client: AsyncClient, name: bytes, ttl: float) -> None:
        self.client = client
        tag = b"{election/" + name + b"}"
        self.lock = AsyncLock(client, tag, ttl=ttl, on_lost=None)
        """The candidate's place in the queue; while held, `lock.valid` says it leads."""
        self.leader_key = tag + b"/leader"

    async def campaign(self, value: Key, timeout: float = -1) -> bool:
        """Wait to lead (at most `timeout` s; -1: as long as it takes), then announce
        `value`. False if the time ran out."""
        if not await self.lock.acquire(timeout=timeout):
            return False
        session = self.lock._session
        assert session is not None
        try:
            await self.client.put(self.leader_key, value, lease=session.lease,
                                  fence=self.lock)
        except BaseException:
            await self.lock.release()
            raise
        return True

    async def leader(self) -> bytes | None:
        """The value the current leader announced, or None if nobody leads."""
        return await self.client.get(self.leader_key)

    async def resign(self) -> None:
        """Stop leading: the next candidate in line leads at once."""
        if self.lock.locked():
            try:
                if self.lock.valid:
                    await self.client.delete(self.leader_key, fence=self.lock)
            finally:
                await self.lock.release()

    async def observe(self) -> AsyncIterator[bytes | None]:
        """Each change of leader as it happens: the new leader's value, or None when
        nobody leads (resigned, or its lease ended)."""
        async with self.client.watch(self.leader_key) as watch:
            async for event in watch:
                yield None if event.kind != "put" else event.value
