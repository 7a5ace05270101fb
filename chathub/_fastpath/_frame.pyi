"""RFC 6455 server-side (unmasked) frame encoding; see _frame.pyx."""

__all__ = ["encode_frame_header", "encode_frame"]

def encode_frame_header(opcode: int, length: int, fin: bool = True, rsv1: bool = False) -> bytes: ...
def encode_frame(
    opcode: int, payload: bytes | bytearray | memoryview, fin: bool = True, rsv1: bool = False
) -> bytes: ...
