"""The NOTIFY channels schedulers listen on, and what their payloads say.

The queue channel says the queue may have changed (work to place, a slot freed, an agent
came, went or lost its credential); the events channel that tasks have new events (payload:
their ids, separated by spaces); the cancel channel that a task was cancelled (payload: its
id). Whatever changes the agents or the queue notifies in the same transaction, so
every replica hears of it at commit.
"""

from __future__ import annotations

QUEUE_CHANNEL = "agentmesh_queue"
EVENTS_CHANNEL = "agentmesh_events"
CANCEL_CHANNEL = "agentmesh_cancel"

# The queue channel's payload when attempts ended and nothing was queued: their slots are
# free, which needs a round only where a task waits for a slot (Dispatcher.slot_freed).
SLOT_FREED = "freed"

# A SQL call that tells every replica to read the agents and the queue again.
NOTIFY_QUEUE = f"pg_notify('{QUEUE_CHANNEL}', '')"


def submitted_by(origin: str) -> str:
    """The queue channel's payload when tasks were submitted through `origin` (a scheduler
    replica, which hands them to its own dispatcher without waiting for the notification:
    see Dispatcher.submitted); other replicas read the queue."""
    return f"submitted by {origin}" if origin else ""


WAKE_QUEUE = f"SELECT {NOTIFY_QUEUE}"
