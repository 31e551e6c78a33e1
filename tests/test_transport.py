"""Prepared frames and the outbox's handling of a server's send."""

import asyncio

import pytest
from websockets.frames import Frame, Opcode
from websockets.streams import StreamReader

from broadcast.clients.outbox import Outbox
from broadcast.protocol import text_frame
from broadcast.stream.outgoing import Outgoing
from tests.clients import uvicorn_connection


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
        self.tasks = set()

    async def __call__(self, event):
        task = asyncio.current_task()
        await self.writable.wait()
        assert asyncio.current_task() is task, "a send finished in another task than began it"
        self.sent.append(event.get("text", event["type"]))
        self.tasks.add(task)


def push(outbox, text, msg_id=None):
    outbox.push(Outgoing.of_text(text, msg_id))


async def test_the_public_path_sends_in_the_clients_own_task_never_the_pushers():
    send, cuts = BackpressuredSend(), []
    outbox = Outbox(send, 1000, lambda: cuts.append(1))
    push(outbox, "a")
    push(outbox, "b")
    assert send.sent == [] and outbox.pending == 2  # the fan-out's task sends nothing
    await asyncio.sleep(0)
    assert send.sent == ["a", "b"] and outbox.pending == 0
    assert asyncio.current_task() not in send.tasks and len(send.tasks) == 1


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
    await asyncio.sleep(0)
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
    await asyncio.sleep(0)
    assert outbox.closed


async def test_ids_replayed_from_history_are_skipped_when_their_live_copy_arrives_late():
    send, cuts = BackpressuredSend(), []
    outbox = Outbox(send, 10_000, lambda: cuts.append(1))
    outbox.hold()
    push(outbox, "held 5", 5)
    push(outbox, "held 8", 8)
    outbox.release(after_id=6)  # history went up to 6
    push(outbox, "late 6", 6)
    push(outbox, "control")
    push(outbox, "live 9", 9)
    await asyncio.sleep(0)
    assert send.sent == ["held 8", "control", "live 9"]
    assert outbox.pending == 0


async def test_uvicorn_close_sends_the_code_and_is_a_no_op_once_the_client_is_gone(settings):
    settings.BROADCAST_FAST_PATH = True  # whatever the environment says (CI's public leg)
    from broadcast.seams.servers import direct_writer

    loop = asyncio.get_running_loop()
    send, client = await uvicorn_connection()
    writer = direct_writer(send)
    assert type(writer).__name__ == "SansioWriter"
    assert writer.close(1012, "service restart")
    frame = parse(await loop.sock_recv(client, 4096))
    assert frame.opcode is Opcode.CLOSE and frame.data[:2] == (1012).to_bytes(2, "big")
    client.close()

    # The client vanished before the app heard of it (a shutdown racing a disconnect):
    # closing it must not raise into the shutdown that closes everyone else.
    send, client = await uvicorn_connection()
    writer = direct_writer(send)
    client.close()
    for _ in range(100):
        if send.__self__.disconnected:
            break
        await asyncio.sleep(0.01)
    assert writer.close(1012, "service restart") is False


async def test_held_messages_are_released_only_when_they_fit_behind_the_replay():
    send, cuts = BackpressuredSend(), []
    outbox = Outbox(send, 500, lambda: cuts.append(1))
    outbox.hold()
    for n in range(3):
        push(outbox, f"live {n}".ljust(100), 10 + n)  # 300 bytes held
    send.writable.clear()  # the client stops reading while history is written
    loop = asyncio.get_running_loop()
    for n in range(3):
        assert await outbox.write_paced(Outgoing.of_text(f"old {n}".ljust(100), n), loop.time() + 1)
    assert outbox.pending == 300
    release = asyncio.ensure_future(outbox.release_paced(2, loop.time() + 1))
    await asyncio.sleep(0.05)
    assert not release.done()  # 300 in flight + 300 held would pass the 500 bound
    send.writable.set()
    assert await release
    await asyncio.sleep(0.01)
    assert [text.strip() for text in send.sent] == [
        "old 0",
        "old 1",
        "old 2",
        "live 0",
        "live 1",
        "live 2",
    ]
    assert cuts == [] and not outbox.closed


def behind_a_blocked_send(texts):
    """An outbox with ``texts`` queued behind a send that does not complete."""
    send = BackpressuredSend()
    outbox = Outbox(send, 1000, lambda: None)
    send.writable.clear()
    for text in texts:
        push(outbox, text)
    return send, outbox


async def test_a_close_through_the_send_goes_out_behind_what_is_queued():
    send, outbox = behind_a_blocked_send(["1", "2", "3"])
    loop = asyncio.get_running_loop()
    closing = asyncio.ensure_future(outbox.close_through_send(1012, "restart", loop.time() + 5))
    await asyncio.sleep(0.01)
    send.writable.set()  # the client reads again
    await asyncio.wait_for(closing, 1)
    assert send.sent == ["1", "2", "3", "websocket.close"]
    assert outbox.closed


async def test_a_close_through_the_send_drops_the_queue_when_the_client_reads_too_late():
    send, outbox = behind_a_blocked_send(["1", "2", "3"])
    loop = asyncio.get_running_loop()
    closing = asyncio.ensure_future(outbox.close_through_send(1012, "restart", loop.time() + 0.05))
    await asyncio.sleep(0.1)
    assert outbox.closed and outbox.pending == 0
    send.writable.set()
    await asyncio.wait_for(closing, 1)
    assert send.sent == ["websocket.close"]


async def test_drain_waits_for_a_backlog_to_leave_and_gives_up_at_its_deadline(settings):
    settings.BROADCAST_FAST_PATH = True
    from broadcast.seams.servers import direct_writer
    from broadcast.stream.shutdown import drain

    loop = asyncio.get_running_loop()
    send, client = await uvicorn_connection()
    writer = direct_writer(send)
    frame = text_frame(b"x" * 60_000)
    for _ in range(100):  # 6 MB: more than the socket pair buffers
        writer.write(frame, writer.buffered())
    assert writer.buffered() > 0
    started = loop.time()
    assert await drain([writer], loop.time() + 0.2) == 1  # the client reads nothing
    assert 0.2 <= loop.time() - started < 1

    async def read_all():
        while await loop.sock_recv(client, 1 << 20):
            pass

    reading = asyncio.ensure_future(read_all())
    assert await drain([writer], loop.time() + 10) == 0
    assert writer.buffered() == 0
    assert loop.time() - started < 5
    reading.cancel()
    client.close()
