"""
WebSocket frames built once per broadcast.

Server-to-client frames are not masked, so a broadcast is the same bytes for every
client: the hub frames it once per process (like gorilla/websocket's
``PreparedMessage``) and a direct writer (:mod:`broadcast.servers`) writes those
bytes to each client's transport. On the ASGI path, the server would encode the text
and build the frame again for every client, which profiling showed to be most of the
hub's cost per delivery.
"""

from __future__ import annotations


def text_frame(data: bytes) -> bytes:
    """An unmasked, unfragmented text frame (RFC 6455, section 5.2)."""
    length = len(data)
    if length < 126:
        header = bytes((0x81, length))
    elif length < 65536:
        header = bytes((0x81, 126)) + length.to_bytes(2, "big")
    else:
        header = bytes((0x81, 127)) + length.to_bytes(8, "big")
    return header + data
