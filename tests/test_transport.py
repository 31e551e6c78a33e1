"""Prepared frames and the outbox's handling of a server's send."""

import asyncio

import pytest
from websockets.frames import Frame, Opcode
from websockets.streams import StreamReader

from broadcast.hub import Outbox
from broadcast.transport import text_frame


def parse(data: bytes) -> Frame:
    """Parse with the websockets library, as a client does."""
    reader = StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    parser = Frame.parse(reader.read_exact, mask=False)
    try:
        next(parser)
    except StopIteration as done:
        return done.value
    raise AssertionError("incomplete frame")


@pytest.mark.parametrize("length", [0, 1, 125, 126, 127, 65535, 65536, 70_000])
def test_text_frames_parse_as_one_final_text_frame(length):
    data = ("é" * (length // 2) + "x" * (length % 2)).encode()
    frame = parse(text_frame(data))
    assert (frame.opcode, frame.fin, frame.data) == (Opcode.TEXT, True, data)


class BackpressuredSend:
    """A server send that suspends while paused, like uvicorn's (writable.wait())."""

    def __init__(self):
        self.writable = asyncio.Event()
        self.writable.set()
        self.sent = []

    async def __call__(self, event):
        await self.writable.wait()
        self.sent.append(event["text"])


def push(outbox, text):
    outbox.push(text_frame(text.encode()), {"type": "websocket.send", "text": text}, len(text))


async def test_a_send_that_does_not_block_completes_inside_push():
    send, cuts = BackpressuredSend(), []
    outbox = Outbox(send, 1000, lambda: cuts.append(1))
    push(outbox, "a")
    push(outbox, "b")
    assert send.sent == ["a", "b"]  # written before push returned: no task involved
    assert outbox.pending == 0


async def test_frames_wait_in_order_behind_a_blocked_send():
    send, cuts = BackpressuredSend(), []
    outbox = Outbox(send, 1000, lambda: cuts.append(1))
    send.writable.clear()
    for text in ["1", "2", "3"]:
        push(outbox, text)
    await asyncio.sleep(0.01)
    assert send.sent == [] and outbox.pending == 3
    send.writable.set()
    await asyncio.sleep(0.01)
    assert send.sent == ["1", "2", "3"] and outbox.pending == 0
    push(outbox, "4")
    assert send.sent[-1] == "4"
    assert cuts == []


async def test_a_backlog_over_the_limit_cuts_the_client_instead_of_growing():
    send, cuts = BackpressuredSend(), []
    outbox = Outbox(send, 250, lambda: cuts.append(1))
    send.writable.clear()
    push(outbox, "x" * 100)
    push(outbox, "y" * 100)
    assert not outbox.closed
    push(outbox, "z" * 100)
    assert outbox.closed and cuts == [1] and outbox.pending == 0
    push(outbox, "after")
    send.writable.set()
    await asyncio.sleep(0.01)
    assert send.sent == []  # the blocked send was cancelled with the client


async def test_a_failing_send_drops_the_client():
    async def broken(event):
        raise ConnectionResetError("gone")

    outbox = Outbox(broken, 1000, lambda: None)
    push(outbox, "a")
    assert outbox.closed


async def test_ids_replayed_from_history_are_skipped_when_their_live_copy_arrives_late():
    send, cuts = BackpressuredSend(), []
    outbox = Outbox(send, 10_000, lambda: cuts.append(1))
    outbox.hold()
    outbox.push(text_frame(b"x"), {"type": "websocket.send", "text": "held 5"}, 6, 5)
    outbox.push(text_frame(b"x"), {"type": "websocket.send", "text": "held 8"}, 6, 8)
    outbox.release(after_id=6)  # history went up to 6
    outbox.push(text_frame(b"x"), {"type": "websocket.send", "text": "late 6"}, 6, 6)
    outbox.push(text_frame(b"x"), {"type": "websocket.send", "text": "control"}, 7, None)
    outbox.push(text_frame(b"x"), {"type": "websocket.send", "text": "live 9"}, 6, 9)
    assert send.sent == ["held 8", "control", "live 9"]
    assert outbox.pending == 0
