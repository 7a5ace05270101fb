"""The stores' result records; see _records_py.py."""

from typing import Any

__all__ = ["bind", "new_result", "new_message_init", "NEW_FIELDS", "STORED_FIELDS", "RESULT_FIELDS"]

NEW_FIELDS: tuple[str, ...]
STORED_FIELDS: tuple[str, ...]
RESULT_FIELDS: tuple[str, ...]

def bind(new_message: type, stored_message: type, append_result: type) -> None: ...
def new_result(t: Any, r: Any, seq: Any, m: Any) -> Any: ...
def new_message_init(
    self: Any, tenant_id: Any, room: Any, sender: Any, text: Any, ts: Any, msg_id: Any,
    client_msg_id: Any = None, reply_to: Any = None,
) -> None: ...
