"""The broker interface: publish a room event to every node that has the room active.

Guarantees every implementation gives (the conformance suite checks them):

* **Per-channel order.** Messages published to one channel by one node are handed to
  each subscribed node's handler in publish order.
* **At most once.** A handler sees each publication at most once; a node that was not
  subscribed when a message was published does not get it later. Gaps are closed by the
  hub from the message store (``since_seq`` replay), not by the broker.
* **Publisher included.** The publishing node receives its own publication too when it is
  subscribed, so every node fans out through the same path.
* **Handler on the loop.** The handler is called on the node's event loop, never
  concurrently with itself, and must not block.

The payload is opaque bytes; ``chathub.server.node`` defines the envelope.
"""

from __future__ import annotations

from typing import Callable, Protocol, runtime_checkable

BrokerHandler = Callable[[str, bytes], None]


@runtime_checkable
class Broker(Protocol):
    def set_handler(self, handler: BrokerHandler) -> None:
        """Register the function that receives (channel, payload) for subscribed channels."""

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def publish(self, channel: str, payload: bytes) -> None:
        """Publish to every node subscribed to ``channel``. Raises ``BrokerUnavailable``."""

    def subscribe(self, channel: str) -> None:
        """Start receiving ``channel`` (idempotent; may complete asynchronously)."""

    def unsubscribe(self, channel: str) -> None:
        """Stop receiving ``channel`` (idempotent)."""


class BrokerUnavailable(Exception):
    """The broker could not accept the publication."""
