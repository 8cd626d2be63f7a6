"""Which Flower node speaks for which agency.

With node authentication (the default), ``pplink coordinator serve`` registers each agency's node
key under the agency's id, so the SuperLink reports every node with the name and key it was
registered under; :func:`identify_nodes` believes a node only when both match. Where Flower
authenticates no node (``--insecure`` test deployments), nodes have no name, and each is asked to
identify itself with a reply signed by an agency's key from the agreement.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from flwr.serverapp import Grid

from coordinator.flower.exchange import RoundSettings, RunRecorder, exchange_step
from pplink.agreement import AgreementConfig
from pplink.errors import PplinkError, TransportError
from pplink.messages import AnyRequest, IdentifyReply, IdentifyRequest, RoundStep, sign_message, verify_message
from pplink.wire import unpack_reply

__all__ = ["NODES_FILE", "NodeDirectory", "NodeLike", "identify_nodes", "load_registered_keys", "wait_for_nodes"]

#: Written by ``pplink coordinator serve``: the agencies' registered Flower node keys.
NODES_FILE = "nodes.json"


class NodeLike(Protocol):
    """What :func:`identify_nodes` reads of Flower's ``NodeInfo``."""

    node_id: int
    name: str
    public_key: bytes
    status: str


@dataclass(frozen=True)
class NodeDirectory:
    """Which online node speaks for which agency, and which nodes were set aside.

    Attributes:
        node_of: per agency, the id of the node that speaks for it.
        ignored: per ignored node id, why it is not used.
        unnamed: nodes that carry no name at all (nodes Flower could not authenticate: they must
            identify themselves).
    """

    node_of: dict[str, int]
    ignored: dict[int, str]
    unnamed: tuple[int, ...] = ()


def identify_nodes(agreement: AgreementConfig, nodes: Iterable[NodeLike],
                   node_keys: Mapping[str, bytes] | None) -> NodeDirectory:
    """Map online nodes to agencies by the name and key they were registered under.

    Args:
        agreement: the agreement naming the agencies.
        nodes: Flower's ``NodeInfo`` for the nodes the SuperLink lists.
        node_keys: per agency, the registered node key (PEM); ``None`` trusts names alone.

    Returns:
        The agencies' nodes, and the nodes ignored with the reason for each.
    """
    agencies = set(agreement.agency_ids)
    claims: dict[str, list[int]] = {}
    ignored: dict[int, str] = {}
    unnamed: list[int] = []
    for node in nodes:
        if node.status and node.status != "online":
            continue
        name = node.name
        if not name and node_keys is None:
            unnamed.append(node.node_id)
            continue
        if name not in agencies:
            ignored[node.node_id] = f"registered as {name!r}, which is not an agency in the agreement"
            continue
        if node_keys is not None:
            expected = node_keys.get(name)
            if expected is None or expected.strip() != bytes(node.public_key).strip():
                ignored[node.node_id] = f"claims {name!r} but its key is not the one registered for {name}"
                continue
        claims.setdefault(name, []).append(node.node_id)
    node_of, duplicated = _unique_claims(claims, "registered as")
    ignored.update(duplicated)
    return NodeDirectory(node_of=node_of, ignored=ignored, unnamed=tuple(sorted(unnamed)))


def _unique_claims(claims: Mapping[str, list[int]], how: str) -> tuple[dict[str, int], dict[int, str]]:
    """Keep the parties claimed by exactly one node; ignore every node of a party claimed twice."""
    node_of: dict[str, int] = {}
    ignored: dict[int, str] = {}
    for party, ids in claims.items():
        if len(ids) > 1:
            for node_id in ids:
                ignored[node_id] = f"one of {len(ids)} nodes {how} {party!r}; none of them is used"
        else:
            node_of[party] = ids[0]
    return node_of, ignored


def wait_for_nodes(grid: Grid, settings: RoundSettings, recorder: RunRecorder,
                    log: Callable[[str], None]) -> NodeDirectory:
    """Wait for every agency's node to come online, then ask unauthenticated nodes who they are.

    Polls the grid's node list (every ``settings.poll_interval`` seconds, clamped to 0.01..1 s) until
    every agency has a node, there are at least as many unnamed nodes as agencies still missing, or
    ``settings.wait_nodes`` seconds have passed. Each ignored node is logged once, and the agencies
    still awaited are kept on ``recorder``. If agencies are still missing and some nodes carry no
    name, those nodes are sent a signed identify request and only signed answers are trusted.

    Args:
        grid: the Flower grid to list nodes on and send identify requests through.
        settings: the round's settings (agreement, registered node keys, wait and poll times, key).
        recorder: the run record that shows which agencies are still awaited.
        log: receives one line per ignored node and per identify step.

    Returns:
        The agencies' node ids and the ignored nodes with the reason; an agency whose node never
        came online or identified itself is absent from ``node_of``.
    """
    agencies = settings.agreement.agency_ids
    deadline = time.monotonic() + settings.wait_nodes
    logged: set[int] = set()
    while True:
        directory = identify_nodes(settings.agreement, grid.get_nodes(), settings.node_keys)
        for node_id, why in directory.ignored.items():
            if node_id not in logged:
                logged.add(node_id)
                log(f"IGNORED node {node_id}: {why}")
        waiting = tuple(a for a in agencies if a not in directory.node_of)
        recorder.update(waiting_for=waiting)
        if not waiting or len(directory.unnamed) >= len(waiting) or time.monotonic() >= deadline:
            break
        time.sleep(min(1.0, max(settings.poll_interval, 0.01)))
    if not waiting or not directory.unnamed:
        return directory
    found, ignored = _identify_unnamed(grid, settings, directory.unnamed, recorder, log)
    found = {party: node_id for party, node_id in found.items() if party not in directory.node_of}
    return NodeDirectory(node_of={**directory.node_of, **found}, ignored={**directory.ignored, **ignored})


def _identify_unnamed(grid: Grid, settings: RoundSettings, unnamed: Iterable[int], recorder: RunRecorder,
              log: Callable[[str], None]) -> tuple[dict[str, int], dict[int, str]]:
    """Ask nodes Flower could not authenticate which agency they are; trust only signed answers."""
    agreement = settings.agreement
    log(f"run {settings.run_id}: asking unauthenticated nodes to identify themselves: "
        f"{', '.join(map(str, unnamed))}")
    asked = {f"node {node_id}": (node_id, sign_message(IdentifyRequest(
        run_id=settings.run_id, agreement_digest=agreement.agreement_id, node_id=node_id,
        nonce=os.urandom(16).hex()), settings.key)) for node_id in unnamed}
    requests: dict[str, tuple[int, AnyRequest, bytes | None]] = {k: (n, r, None) for k, (n, r) in asked.items()}
    replies, absent = exchange_step(grid, settings, RoundStep.IDENTIFY, requests, recorder, log)
    claims: dict[str, list[int]] = {}
    ignored: dict[int, str] = {asked[label][0]: why for label, why in absent.items()}
    for label, message in replies.items():
        node_id, request = asked[label]
        assert isinstance(request, IdentifyRequest)
        try:
            if message.has_error():
                raise TransportError(f"Flower error {message.error.code}")
            reply, _ = unpack_reply(message.content, what=f"identify reply from {label}")
            if not isinstance(reply, IdentifyReply):
                raise TransportError(f"{label}: a {reply.kind}, not an identify reply")
            if (reply.run_id, reply.agreement_digest, reply.node_id, reply.nonce) != (
                    settings.run_id, agreement.agreement_id, node_id, request.nonce):
                raise TransportError(f"{label}: the reply is not an answer to this request")
            if reply.party not in agreement.agency_ids:
                raise TransportError(f"{label}: claims {reply.party!r}, which is not an agency in the agreement")
            verify_message(reply, agreement.agency(reply.party).public_key, what=f"identify reply from {label}")
        except PplinkError as err:
            ignored[node_id] = f"REFUSED identify reply: {err}"
            log(f"IGNORED node {node_id}: {ignored[node_id]}")
            continue
        claims.setdefault(reply.party, []).append(node_id)
    node_of, duplicated = _unique_claims(claims, "identified as")
    for node_id, why in duplicated.items():
        log(f"IGNORED node {node_id}: {why}")
    return node_of, {**ignored, **duplicated}


def load_registered_keys(state_dir: Path) -> dict[str, bytes] | None:
    """The agencies' registered node keys from ``<state>/nodes.json``, or None if none were registered."""
    path = Path(state_dir) / NODES_FILE
    if not path.is_file():
        return None
    data = json.loads(path.read_text(encoding="utf-8"))
    if not data.get("auth", True):
        return None
    return {party: str(info["public_key_pem"]).encode("ascii") for party, info in data["nodes"].items()}
