"""The agency's Flower ClientApp: a thin adapter over :mod:`nodes.match_round`.

Each handler unpacks the request, calls :func:`nodes.match_round.handle_request` and packs the
signed reply. Every exception is caught: the coordinator receives only a
:class:`~pplink.messages.NodeErrorReply` (pplink error code and a message without record values),
while the traceback goes to the node's own log (``<out-dir>/pplink-node.log`` and the SuperNode's
output), never upstream, which is where Flower would send ``str(exception)`` of an uncaught error.

The SuperNode passes the settings as ``--node-config`` (see ``pplink node join``)::

    agreement="…" party="…" data-path="…" secret="…" key="…" out-dir="…"
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from nodes.match_round import NODE_LOG, NodeSettings, error_reply, handle_request
from nodes.scoring.round import ScoringNodeSettings, handle_scoring
from pplink.errors import TransportError
from pplink.messages import AnyRequest, RoundStep, ScoringRequest
from pplink.wire import pack, unpack_request

__all__ = ["app"]

_log = logging.getLogger("pplink.node")

app = ClientApp()


def _node_log(settings: NodeSettings) -> logging.Handler | None:
    """Attach a file handler for the node's local log (one process per message, so per call)."""
    try:
        settings.out_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        handler = logging.FileHandler(settings.out_dir / NODE_LOG, encoding="utf-8")
    except OSError:
        return None
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    _log.addHandler(handler)
    _log.setLevel(logging.INFO)
    return handler


def _process_age() -> float | None:
    """Seconds since this process started (Linux; None elsewhere): Flower's own work before the handler."""
    try:
        ticks = int(Path("/proc/self/stat").read_text(encoding="ascii").rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text(encoding="ascii").split()[0])
        return uptime - ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def _serve(step: RoundStep, message: Message, context: Context) -> Message:
    age = _process_age()
    started = time.perf_counter()
    settings: NodeSettings | None = None
    request: AnyRequest | None = None
    handler = None
    try:
        scoring = ScoringNodeSettings.from_node_config(context.node_config)
        settings = scoring.base
        handler = _node_log(settings)
        request, blob = unpack_request(message.content, what=f"{step.value} from the coordinator")
        if (step is RoundStep.SCORE) != isinstance(request, ScoringRequest):
            raise TransportError(f"{step.value}: a {request.kind} does not belong in this message type")
        if isinstance(request, ScoringRequest):
            reply, out_blob = handle_scoring(scoring, request, blob)
        else:
            reply, out_blob = handle_request(settings, request, blob)
        _log.info("%s: run %s: %s answered in %.2f s, %s s after its process started", settings.party,
                  request.run_id, step.value, time.perf_counter() - started, "?" if age is None else f"{age:.2f}")
    except Exception as err:  # noqa: BLE001 - every failure becomes an error reply, never a raise
        _log.exception("%s failed at this node", step.value)
        reply, out_blob = error_reply(settings, request, step, err), None
    finally:
        if handler is not None:
            _log.removeHandler(handler)
            handler.close()
    return Message(pack(reply, out_blob), reply_to=message)


@app.query("identify")
def identify(message: Message, context: Context) -> Message:
    """Say, signed, which agency this node speaks for (deployments without node authentication)."""
    return _serve(RoundStep.IDENTIFY, message, context)


@app.query("encode")
def encode(message: Message, context: Context) -> Message:
    """Encode this agency's records and reply with the signed encodings."""
    return _serve(RoundStep.ENCODE, message, context)


@app.query("resolve")
def resolve(message: Message, context: Context) -> Message:
    """Check and stage this agency's pseudonym map."""
    return _serve(RoundStep.RESOLVE, message, context)


@app.query("score")
def score(message: Message, context: Context) -> Message:
    """Answer one message of a vertical scoring run (:mod:`nodes.scoring.round`)."""
    return _serve(RoundStep.SCORE, message, context)


@app.query("rollback")
def rollback(message: Message, context: Context) -> Message:
    """Put back the result this agency had before a round that failed elsewhere."""
    return _serve(RoundStep.ROLLBACK, message, context)
