"""The contract's topic tree, and the one rule for placing it under a prefix on a broker.

Every topic of the contract is ``cityops/v1/{device_type}/{device_id}/{channel}`` (gateways:
``cityops/v1/gateway/{gateway_id}/batch``). Where several trees share a broker (a deployment
beside the demo, two sites on one broker), each keeps to its own prefix: ``{prefix}/cityops/v1/...``
(``mqtt.topic_prefix``; empty means the tree itself). ``prefixed`` is that rule; ingest's
subscription and decoder and the simulator's publisher all place topics through it.
"""

from __future__ import annotations

from typing import Final

TOPIC_ROOT: Final = "cityops/v1"
#: The subtree of what cityops publishes itself (``scenes/outbound.py``); ingest, subscribed to
#: the whole tree, passes over it.
OUT_TREE: Final = "out"
PREFIX_MAX_CHARS: Final = 128


def check_prefix(prefix: str) -> str:
    """Return ``prefix`` if topics can be placed under it; raise ValueError saying why not."""
    if not prefix:
        return prefix
    if prefix.startswith("$"):
        msg = f"a topic prefix must not start with '$' (the broker's own topics): {prefix!r}"
        raise ValueError(msg)
    if any(char in prefix for char in "+#\x00"):
        msg = f"a topic prefix must not hold a wildcard (+, #) or NUL: {prefix!r}"
        raise ValueError(msg)
    if "" in prefix.split("/"):
        msg = f"a topic prefix must not start or end with '/' nor hold '//': {prefix!r}"
        raise ValueError(msg)
    return prefix


def prefixed(prefix: str, topic: str) -> str:
    """``topic`` placed under ``prefix``: ``{prefix}/{topic}``, or ``topic`` for no prefix."""
    return f"{prefix}/{topic}" if prefix else topic


def topic_root(prefix: str) -> str:
    """The root every contract topic starts with under ``prefix``."""
    return prefixed(prefix, TOPIC_ROOT)


def topic_filter(prefix: str) -> str:
    """The subscription that covers every contract topic under ``prefix``."""
    return f"{topic_root(prefix)}/#"
