"""chathub: a real-time chat hub over WebSocket."""

__version__ = "0.1.0"
