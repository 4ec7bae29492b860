"""Keys held by nodes: a node's heartbeat lists labels and fingerprints (never secrets), and
the scheduler keeps `api_keys` in step with them, writing only when they change."""

from __future__ import annotations

import grpc
import pytest

from agentmesh.keys.pool import fingerprint
from agentmesh.v1 import keys_pb2
from tests.keys.conftest import KeyMesh
from tests.keys.test_admin_rpcs import field_of, refused

DESK_KEY = "AIzaSy-held-by-desk-31f0aa92"
DESK_SPARE = "AIzaSy-held-by-desk-spare-4c1d"
NEW_DESK_KEY = "AIzaSy-held-by-desk-new-80e2"
FP = fingerprint(DESK_KEY)
SPARE_FP = fingerprint(DESK_SPARE)


async def node_rows(key_mesh: KeyMesh) -> dict[str, tuple[object, ...]]:
    """name -> (fingerprint, has a secret, source, node_id, enabled, disabled_reason)."""
    rows = await key_mesh.rows(
        "SELECT name, fingerprint, key_value IS NOT NULL, source, node_id, enabled,"
        " disabled_reason FROM api_keys ORDER BY name"
    )
    return {row["name"]: tuple(row.values())[1:] for row in rows}


async def test_a_node_registers_labels_and_fingerprints_only(key_mesh: KeyMesh) -> None:
    await key_mesh.heartbeat("desk-1", "desk", [("GEMINI_KEY", FP), ("SPARE", SPARE_FP)])

    assert await node_rows(key_mesh) == {
        "desk/GEMINI_KEY": (FP, False, "node:desk", "desk-1", True, None),
        "desk/SPARE": (SPARE_FP, False, "node:desk", "desk-1", True, None),
    }
    listed = (await key_mesh.listed())["desk/GEMINI_KEY"]
    assert (listed.source, listed.node_id, listed.rotating) == ("node:desk", "desk-1", True)


async def test_a_key_the_node_drops_is_disabled_until_it_holds_it_again(
    key_mesh: KeyMesh,
) -> None:
    await key_mesh.heartbeat("desk-1", "desk", [("GEMINI_KEY", FP), ("SPARE", SPARE_FP)])

    await key_mesh.heartbeat("desk-1", "desk", [("GEMINI_KEY", FP)])
    spare = (await key_mesh.listed())["desk/SPARE"]
    assert (spare.enabled, spare.disabled_reason) == (False, "no longer held by node desk")
    assert (await key_mesh.listed())["desk/GEMINI_KEY"].enabled

    await key_mesh.heartbeat("desk-1", "desk", [("GEMINI_KEY", FP), ("SPARE", SPARE_FP)])
    spare = (await key_mesh.listed())["desk/SPARE"]
    assert (spare.enabled, spare.disabled_reason) == (True, "")


async def test_a_key_disabled_by_a_person_stays_disabled_when_the_node_holds_it(
    key_mesh: KeyMesh,
) -> None:
    await key_mesh.heartbeat("desk-1", "desk", [("GEMINI_KEY", FP)])
    await key_mesh.keys.SetKeyEnabled(
        keys_pb2.SetKeyEnabledRequest(
            ref=keys_pb2.KeyRef(key="desk/GEMINI_KEY"), enabled=False, reason="over budget"
        )
    )

    await key_mesh.heartbeat("desk-1", "desk", [])
    await key_mesh.heartbeat("desk-1", "desk", [("GEMINI_KEY", FP)])

    key = (await key_mesh.listed())["desk/GEMINI_KEY"]
    assert (key.enabled, key.disabled_reason) == (False, "disabled: over budget")


async def test_a_label_with_a_new_fingerprint_is_a_new_key(key_mesh: KeyMesh) -> None:
    await key_mesh.heartbeat("desk-1", "desk", [("GEMINI_KEY", FP)])
    (before,) = await key_mesh.rows("SELECT id FROM api_keys")
    await key_mesh.execute(
        "INSERT INTO api_key_models (key_id, model, cooling_until) VALUES"
        " ($1, 'gemini-2.5-flash', now() + interval '1 hour')",
        before["id"],
    )

    await key_mesh.heartbeat("desk-1", "desk", [("GEMINI_KEY", fingerprint(NEW_DESK_KEY))])

    key = (await key_mesh.listed())["desk/GEMINI_KEY"]
    assert (key.id, key.fingerprint, key.enabled) == (
        before["id"],
        fingerprint(NEW_DESK_KEY),
        True,
    )
    assert list(key.cooldowns) == []


async def test_heartbeats_write_the_keys_only_when_they_change(key_mesh: KeyMesh) -> None:
    await key_mesh.heartbeat("desk-1", "desk", [("GEMINI_KEY", FP)])
    await key_mesh.execute("DELETE FROM api_keys")

    await key_mesh.heartbeat("desk-1", "desk", [("GEMINI_KEY", FP)])
    assert await node_rows(key_mesh) == {}  # the same keys: nothing was written

    await key_mesh.heartbeat("desk-1", "desk", [("GEMINI_KEY", FP), ("SPARE", SPARE_FP)])
    assert set(await node_rows(key_mesh)) == {"desk/GEMINI_KEY", "desk/SPARE"}


async def test_a_node_back_with_a_new_agent_id_keeps_its_keys(key_mesh: KeyMesh) -> None:
    await key_mesh.heartbeat("desk-1", "desk", [("GEMINI_KEY", FP)])
    await key_mesh.heartbeat("desk-2", "desk", [("GEMINI_KEY", FP)])

    key = (await key_mesh.listed())["desk/GEMINI_KEY"]
    assert (key.node_id, key.enabled) == ("desk-2", True)


async def test_a_central_key_stays_central_and_a_shared_one_stays_with_its_first_node(
    key_mesh: KeyMesh,
) -> None:
    await key_mesh.add("central", DESK_KEY)

    await key_mesh.heartbeat("desk-1", "desk", [("GEMINI_KEY", FP), ("SPARE", SPARE_FP)])
    await key_mesh.heartbeat("attic-1", "attic", [("MINE", SPARE_FP)])

    assert await node_rows(key_mesh) == {
        "central": (FP, True, "cli", None, True, None),
        "desk/SPARE": (SPARE_FP, False, "node:desk", "desk-1", True, None),
    }


async def test_a_node_key_is_managed_here_but_labelled_and_added_by_its_node(
    key_mesh: KeyMesh,
) -> None:
    await key_mesh.heartbeat("desk-1", "desk", [("GEMINI_KEY", FP)])
    ref = keys_pb2.KeyRef(key="desk/GEMINI_KEY")

    updated = await key_mesh.keys.UpdateKey(
        keys_pb2.UpdateKeyRequest(
            ref=ref, priority=3, assigned_user="alice", rotating=False, requests_per_day=60
        )
    )
    assert (updated.priority, updated.assigned_user, updated.rotating) == (3, "alice", False)
    assert updated.limits.requests_per_day == 60
    relabel = await refused(
        key_mesh.keys.UpdateKey(keys_pb2.UpdateKeyRequest(ref=ref, label="mine"))
    )
    assert relabel.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert relabel.details() == (
        "key 'desk/GEMINI_KEY' is held by a node (node:desk): its label comes from the"
        " node's key file"
    )
    again = await refused(key_mesh.add("copy", DESK_KEY))
    assert again.code() is grpc.StatusCode.ALREADY_EXISTS
    assert again.details() == "this secret is stored already, as the key labelled 'desk/GEMINI_KEY'"
    disabled = await key_mesh.keys.SetKeyEnabled(
        keys_pb2.SetKeyEnabledRequest(ref=ref, enabled=False)
    )
    assert (disabled.enabled, disabled.disabled_reason) == (False, "disabled by request")
    removed = await key_mesh.keys.RemoveKey(keys_pb2.RemoveKeyRequest(ref=ref))
    assert removed.key.fingerprint == FP
    assert await node_rows(key_mesh) == {}


@pytest.mark.parametrize(
    ("held", "field"),
    [
        ([("K", "md5:0123456789ab")], "card.held_keys[0].fingerprint"),
        ([("K", FP), ("L", "sha256:XYZ")], "card.held_keys[1].fingerprint"),
        ([("", FP)], "card.held_keys[0].label"),
        ([("A B", FP)], "card.held_keys[0].label"),
        ([("K", FP), ("K", SPARE_FP)], "card.held_keys[1].label"),
        ([("K", FP), ("L", FP)], "card.held_keys[1].fingerprint"),
    ],
)
async def test_a_wrong_held_key_is_refused_naming_it(
    key_mesh: KeyMesh, held: list[tuple[str, str]], field: str
) -> None:
    error = await refused(key_mesh.heartbeat("desk-1", "desk", held))

    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert field_of(error) == field
    assert await node_rows(key_mesh) == {}
