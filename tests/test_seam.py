"""Other libraries' internals are named only inside their seams (broadcast/seams/)."""

import ast
from pathlib import Path

import broadcast

APP = Path(broadcast.__file__).parent
SEAMS = {APP / "seams"}
# Internals the seams own, as attribute names or strings anywhere in a module.
INTERNALS = {
    "dataBuffer", "offset", "_tempDataLen", "disconnecting", "disconnected", "sendCloseFrame",
    "closeHandshakeTimeout", "abortConnection", "producerPaused", "streamingProducer",
    "handle_reply", "WebSocketsSansIOProtocol", "close_sent", "writable", "real_send",
    "_asgi_single_callable", "_group_key", "non_local_name", "_kwargs",
}  # fmt: skip
# Underscored names that are public API: Django's model metadata.
PUBLIC = {"_meta"}


def reach_ins(source: str) -> list[str]:
    """Internals named in ``source``: listed ones, and ``_private`` attributes not of self."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute):
            name, owner = node.attr, node.value
            private = name.startswith("_") and not name.startswith("__") and name not in PUBLIC
            own = isinstance(owner, ast.Name) and owner.id in {"self", "cls"}
            if name in INTERNALS or (private and not own):
                found.append(f"{node.lineno}: .{name}")
        elif isinstance(node, ast.Constant) and node.value in INTERNALS:
            found.append(f"{node.lineno}: {node.value!r}")
    return found


def test_no_module_outside_the_seams_names_another_librarys_internals():
    found = []
    for path in sorted(APP.rglob("*.py")):
        if "migrations" in path.parts or any(seam in path.parents for seam in SEAMS):
            continue
        found += [f"{path.relative_to(APP)}:{hit}" for hit in reach_ins(path.read_text())]
    assert found == []


def test_a_reach_in_is_found_as_an_attribute_or_a_name_in_a_string():
    source = (
        "def buffered(transport, protocol, layer):\n"
        "    layer._group_key('g')\n"
        "    getattr(protocol, 'sendCloseFrame')\n"
        "    return transport.dataBuffer, self._own, model._meta\n"
    )
    assert sorted(reach_ins(source)) == ["2: ._group_key", "3: 'sendCloseFrame'", "4: .dataBuffer"]
