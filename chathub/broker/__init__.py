"""Brokers carry room events between hub nodes. See ``base.Broker``."""

from chathub.broker.base import Broker, BrokerHandler
from chathub.broker.memory import MemoryBroker

__all__ = ["Broker", "BrokerHandler", "MemoryBroker"]
