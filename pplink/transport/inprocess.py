"""Run a ServerApp and its ClientApps in one process, without Ray or a SuperLink (tests, demos).

Flower 1.41 has no supported in-process runner: its simulation engine needs Ray (~25 s to start).
:class:`InProcessGrid` is a small :class:`flwr.serverapp.Grid` that hands each pushed message to
the destination node's ClientApp at once and keeps the reply until it is pulled. Messages cross
the same inflate/deflate step Flower's HTTP grid uses, so content that would not survive the wire
fails here too. A node can be switched off (it stops appearing in ``get_nodes`` and never replies)
or given any callable in place of its ClientApp, to play a node that drops out or lies.

Pinned to flwr 1.41: ``Message()`` reads the sender's run, node and task ids from Flower's
process-wide ``TaskIdentity``, which :func:`run_in_process` sets for the ServerApp's duration
and restores afterwards.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

from flwr.app import Context, Message, RecordDict
from flwr.app.error import Error
from flwr.common.constant import ErrorCode
from flwr.proto.node_pb2 import NodeInfo  # pylint: disable=E0611
from flwr.serverapp import Grid, ServerApp
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects, no_object_id_recompute
from flwr.supercore.inflatable.inflatable_utils import inflate_object_from_contents
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

__all__ = ["InProcessGrid", "InProcessNode", "run_in_process"]

#: Flower's node id of the SuperLink, the sender of every ServerApp message.
_SUPERLINK_NODE_ID = 1
NodeHandler = Callable[[Message, Context], Message]


@dataclass
class InProcessNode:
    """One simulated SuperNode.

    Attributes:
        node_id: its Flower node id.
        app: the ClientApp, or any ``(message, context) -> reply`` callable.
        node_config: what its ``--node-config`` would hold.
        name: the name it was registered under (pplink: the agency id).
        public_key: its registered node-authentication key (PEM), if any.
        online: False plays a node that has dropped out: absent from ``get_nodes``, no replies.
        drop_on: message types on whose arrival the node goes offline without replying.
    """

    node_id: int
    app: NodeHandler
    node_config: dict[str, object] = field(default_factory=dict)
    name: str = ""
    public_key: bytes = b""
    online: bool = True
    drop_on: frozenset[str] = frozenset()


def _through_wire(message: Message) -> Message:
    """Deflate and inflate a message as Flower's HTTP grid does (a copy that shares nothing)."""
    with no_object_id_recompute():
        message_id = message.object_id
        contents = {obj_id: obj.deflate() for obj_id, obj in get_all_nested_objects(message).items()}
    copy = inflate_object_from_contents(message_id, contents)
    assert isinstance(copy, Message)
    copy.metadata.__dict__["_message_id"] = message.metadata.message_id
    return copy


class InProcessGrid(Grid):
    """A Grid whose nodes are ClientApps called in this process.

    Args:
        nodes: the simulated SuperNodes.
        run_id: the Flower run id the messages carry.
    """

    def __init__(self, nodes: Sequence[InProcessNode], *, run_id: int = 1) -> None:
        self.nodes: dict[int, InProcessNode] = {n.node_id: n for n in nodes}
        self._run = Run.create_empty(run_id)
        self._contexts: dict[int, Context] = {}
        self._replies: dict[str, Message] = {}
        self._ids = itertools.count(1)
        #: Every message pushed, in order: (message type, destination node id).
        self.sent: list[tuple[str, int]] = []

    def set_run(self, run: Run) -> None:
        """Set the run this grid operates in."""
        self._run = run

    @property
    def run(self) -> Run:
        """Run information."""
        return self._run

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str,
                       ttl: float | None = None) -> Message:
        """Create a message (deprecated in Flower; kept for the abstract interface)."""
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        """The ids of the nodes that are online."""
        return [n.node_id for n in self.nodes.values() if n.online]

    def get_nodes(self) -> Iterable[NodeInfo]:
        """The online nodes, with the name and key they were registered under."""
        return [NodeInfo(node_id=n.node_id, name=n.name, public_key=n.public_key, status="online")
                for n in self.nodes.values() if n.online]

    def _context(self, node: InProcessNode) -> Context:
        if node.node_id not in self._contexts:
            self._contexts[node.node_id] = Context(run_id=self._run.run_id, node_id=node.node_id,
                                                   node_config=dict(node.node_config),  # type: ignore[arg-type]
                                                   state=RecordDict(), run_config={})
        return self._contexts[node.node_id]

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        """Deliver each message to its node now; keep the reply (if any) for :meth:`pull_messages`."""
        ids: list[str] = []
        for message in messages:
            message_id = f"m{next(self._ids)}"
            message.metadata.__dict__["_message_id"] = message_id
            ids.append(message_id)
            dst = message.metadata.dst_node_id
            self.sent.append((message.metadata.message_type, dst))
            node = self.nodes.get(dst)
            if node is None or not node.online:
                continue
            if message.metadata.message_type in node.drop_on:
                node.online = False
                continue
            try:
                reply = node.app(_through_wire(message), self._context(node))
            except Exception as err:  # noqa: BLE001 - as a SuperNode does: the error travels back
                reply = Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=repr(err)),
                                reply_to=message)
            self._replies[message_id] = _through_wire(reply)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        """The replies available for these message ids (each returned once)."""
        return [self._replies.pop(i) for i in message_ids if i in self._replies]

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        """Push messages and return every reply (in process, replies are immediate)."""
        return self.pull_messages(self.push_messages(messages))


@contextmanager
def _task_identity(run_id: int) -> Iterator[None]:
    saved = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)  # noqa: SLF001
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = run_id, _SUPERLINK_NODE_ID, 1
    try:
        yield
    finally:
        TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved  # noqa: SLF001


def run_in_process(server_app: ServerApp, grid: InProcessGrid, run_config: Mapping[str, object]) -> Context:
    """Run ``server_app`` against ``grid`` with ``run_config``, as a SuperLink would.

    Returns:
        The ServerApp's context (its ``state`` holds whatever the app left there).
    """
    context = Context(run_id=grid.run.run_id, node_id=_SUPERLINK_NODE_ID, node_config={},
                      state=RecordDict(), run_config=dict(run_config))  # type: ignore[arg-type]
    with _task_identity(grid.run.run_id):
        server_app(grid, context)
    return context
