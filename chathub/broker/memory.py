"""The in-process broker: the default when no Redis is configured (one node)."""

from __future__ import annotations

from chathub.broker.base import BrokerHandler


class MemoryBroker:
    """Delivers publications synchronously to this process's own handler."""

    def __init__(self) -> None:
        self._handler: BrokerHandler | None = None
        self._channels: set[str] = set()

    def set_handler(self, handler: BrokerHandler) -> None:
        self._handler = handler

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        self._channels.clear()

    async def publish(self, channel: str, payload: bytes) -> None:
        self.publish_nowait(channel, payload)

    def publish_nowait(self, channel: str, payload: bytes) -> None:
        if channel in self._channels and self._handler is not None:
            self._handler(channel, payload)

    def subscribe(self, channel: str) -> None:
        self._channels.add(channel)

    def unsubscribe(self, channel: str) -> None:
        self._channels.discard(channel)

    @property
    def channels(self) -> frozenset[str]:
        return frozenset(self._channels)
