"""The KeyPool admin RPCs against a real scheduler and database: keys are added, listed,
changed, disabled and removed; a wrong request names its field and changes nothing; a
secret is stored sealed and never answered, nor repeated in an error."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from agentmesh.keys.pool import fingerprint
from agentmesh.keys.vault import Vault
from agentmesh.v1 import keys_pb2
from tests.keys.conftest import KeyMesh

SECRET = "AIzaSy-admin-rpc-secret-0b7e51d2"
OTHER_SECRET = "AIzaSy-admin-rpc-other-93aa10c4"
GEMINI_SHAPED = "AIza" + "Sy" + "x" * 33  # the shape of a real key: refused as a label


def field_of(error: grpc.aio.AioRpcError) -> str:
    """The field the google.rpc.BadRequest of an INVALID_ARGUMENT names."""
    for key, value in error.trailing_metadata() or ():
        if key == "grpc-status-details-bin" and isinstance(value, bytes):
            for detail in status_pb2.Status.FromString(value).details:
                bad_request = error_details_pb2.BadRequest()
                if detail.Unpack(bad_request):
                    return bad_request.field_violations[0].field
    raise AssertionError(f"no BadRequest in {error}")


async def refused(call: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


async def test_a_key_is_added_listed_changed_disabled_enabled_and_removed(
    key_mesh: KeyMesh,
) -> None:
    added = await key_mesh.add(
        "primary",
        SECRET,
        priority=5,
        assigned_user="alice",
        rotating=False,
        requests_per_minute=2,
    )
    await key_mesh.add("spare", OTHER_SECRET)

    assert (added.label, added.fingerprint, added.priority) == ("primary", fingerprint(SECRET), 5)
    assert (added.assigned_user, added.rotating, added.source) == ("alice", False, "cli")
    assert (added.enabled, added.disabled_reason, added.node_id) == (True, "", "")
    assert added.requests_per_minute == 2
    assert (added.requests_per_day, added.tokens_per_day) == (0, 0)  # api_policy's
    policy = key_mesh.mesh.settings.api_policy
    assert added.limits == keys_pb2.KeyLimits(
        requests_per_minute=2,
        requests_per_day=policy.max_requests_per_day,
        tokens_per_day=policy.max_tokens_per_key,
    )
    assert added.HasField("created_at")
    assert not added.HasField("last_used")
    listed = await key_mesh.keys.ListKeys(keys_pb2.ListKeysRequest())
    assert [key.label for key in listed.keys] == ["primary", "spare"]  # priority first
    spare = listed.keys[1]
    assert (spare.priority, spare.rotating, spare.assigned_user) == (0, True, "")
    assert spare.limits.requests_per_minute == policy.rpm_soft_limit

    # By fingerprint without its prefix; "" clears the user, 0 hands a limit back.
    updated = await key_mesh.keys.UpdateKey(
        keys_pb2.UpdateKeyRequest(
            ref=keys_pb2.KeyRef(key=added.fingerprint.removeprefix("sha256:")),
            label="main",
            priority=1,
            assigned_user="",
            requests_per_minute=0,
            tokens_per_day=5000,
        )
    )
    assert (updated.label, updated.priority, updated.assigned_user) == ("main", 1, "")
    assert updated.rotating is False  # not in the request: unchanged
    assert (updated.requests_per_minute, updated.tokens_per_day) == (0, 5000)
    assert updated.limits.requests_per_minute == policy.rpm_soft_limit
    assert updated.limits.tokens_per_day == 5000

    disabled = await key_mesh.keys.SetKeyEnabled(
        keys_pb2.SetKeyEnabledRequest(
            ref=keys_pb2.KeyRef(key="main"), enabled=False, reason="testing quotas"
        )
    )
    assert (disabled.enabled, disabled.disabled_reason) == (False, "disabled: testing quotas")
    assert (await key_mesh.listed())["main"].disabled_reason == "disabled: testing quotas"
    enabled = await key_mesh.keys.SetKeyEnabled(
        keys_pb2.SetKeyEnabledRequest(ref=keys_pb2.KeyRef(key=added.fingerprint), enabled=True)
    )
    assert (enabled.enabled, enabled.disabled_reason) == (True, "")

    removed = await key_mesh.keys.RemoveKey(
        keys_pb2.RemoveKeyRequest(ref=keys_pb2.KeyRef(key=added.fingerprint))
    )
    assert (removed.key.label, removed.key.fingerprint) == ("main", fingerprint(SECRET))
    assert list(await key_mesh.listed()) == ["spare"]


async def test_the_secret_is_stored_sealed_and_never_answered(key_mesh: KeyMesh) -> None:
    added = await key_mesh.add("sealed", SECRET)

    (row,) = await key_mesh.rows("SELECT key_value, fingerprint FROM api_keys")
    assert row["key_value"].startswith("fernet:")
    assert SECRET not in row["key_value"]
    data_dir = key_mesh.mesh.settings.env.AGENTMESH_DATA_DIR
    assert data_dir is not None
    assert Vault.open(None, data_dir).open_secret(row["key_value"]) == SECRET
    listed = await key_mesh.keys.ListKeys(keys_pb2.ListKeysRequest())
    for message in (added, listed):
        assert SECRET.encode() not in message.SerializeToString()


async def test_a_cooldown_and_todays_usage_are_listed_per_model(key_mesh: KeyMesh) -> None:
    key = await key_mesh.add("busy", SECRET, requests_per_day=60)
    await key_mesh.execute(
        "INSERT INTO api_key_models (key_id, model, cooling_until, cooling_reason) VALUES"
        " ($1, 'gemini-2.5-pro', now() + interval '40 seconds', 'per-minute quota'),"
        " ($1, 'gemini-2.5-flash', now() - interval '1 second', 'over')",
        key.id,
    )
    today = "(now() AT TIME ZONE 'America/Los_Angeles')::date"
    await key_mesh.execute(
        "INSERT INTO api_key_usage (key_id, model, day, requests, tokens, reserved_requests,"
        " reserved_tokens) VALUES"
        f" ($1, 'gemini-2.5-flash', {today}, 7, 12000, 2, 3000),"
        f" ($1, 'gemini-2.5-pro', {today} - 1, 50, 90000, 0, 0)",
        key.id,
    )

    listed = (await key_mesh.listed())["busy"]

    (cooldown,) = listed.cooldowns  # the one over already is not listed
    assert (cooldown.model, cooldown.reason) == ("gemini-2.5-pro", "per-minute quota")
    (usage,) = listed.usage_today  # yesterday's is not today's
    assert usage == keys_pb2.KeyUsage(
        model="gemini-2.5-flash", requests=7, tokens=12000, reserved_requests=2,
        reserved_tokens=3000,
    )  # fmt: skip
    assert listed.limits.requests_per_day == 60


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"label": "", "secret": SECRET}, "label"),
        ({"label": "two words", "secret": SECRET}, "label"),
        ({"label": "x" * 65, "secret": SECRET}, "label"),
        ({"label": "sha256:0123456789ab", "secret": SECRET}, "label"),
        ({"label": "0123456789ab", "secret": SECRET}, "label"),
        ({"label": GEMINI_SHAPED, "secret": SECRET}, "label"),
        ({"label": "AIzaSy-its-own-key", "secret": "AIzaSy-its-own-key"}, "label"),
        ({"label": "ok", "secret": ""}, "secret"),
        ({"label": "ok", "secret": "AIzaSy two words"}, "secret"),
        ({"label": "ok", "secret": "AIzaSy-tab\tafter"}, "secret"),
        ({"label": "ok", "secret": SECRET, "requests_per_minute": -1}, "requests_per_minute"),
        ({"label": "ok", "secret": SECRET, "requests_per_day": -5}, "requests_per_day"),
        ({"label": "ok", "secret": SECRET, "tokens_per_day": -1}, "tokens_per_day"),
        ({"label": "ok", "secret": SECRET, "assigned_user": " alice"}, "assigned_user"),
    ],
)
async def test_a_wrong_key_names_its_field_and_stores_nothing(
    key_mesh: KeyMesh, fields: dict[str, Any], field: str
) -> None:
    error = await refused(key_mesh.keys.AddKey(keys_pb2.AddKeyRequest(**fields)))

    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert field_of(error) == field
    assert (error.details() or "").startswith(f"{field}: ")
    for secret in (SECRET, GEMINI_SHAPED, "AIzaSy two words", "AIzaSy-its-own-key"):
        assert secret not in (error.details() or "")
    assert await key_mesh.rows("SELECT * FROM api_keys") == []


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"label": "bad label"}, "label"),
        ({"label": SECRET}, "label"),  # a stored secret, given where a label belongs
        ({"tokens_per_day": -1}, "tokens_per_day"),
        ({"assigned_user": "bob\n"}, "assigned_user"),
        ({"ref": None, "label": "fine"}, "ref.key"),
        ({"ref": ""}, "ref.key"),
    ],
)
async def test_a_wrong_update_names_its_field_and_changes_nothing(
    key_mesh: KeyMesh, fields: dict[str, Any], field: str
) -> None:
    await key_mesh.add("steady", SECRET, priority=4)
    before = await key_mesh.rows("SELECT * FROM api_keys")
    changes = dict(fields)  # the parameters are shared by both servers' runs
    ref = changes.pop("ref", "steady")
    request = keys_pb2.UpdateKeyRequest(
        ref=keys_pb2.KeyRef(key=ref) if ref is not None else None, priority=9, **changes
    )

    error = await refused(key_mesh.keys.UpdateKey(request))

    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert field_of(error) == field
    assert SECRET not in (error.details() or "")
    assert await key_mesh.rows("SELECT * FROM api_keys") == before


async def test_an_unknown_key_is_not_found_by_name(key_mesh: KeyMesh) -> None:
    await key_mesh.add("known", SECRET)
    ref = keys_pb2.KeyRef(key="unknown-key")
    calls = [
        key_mesh.keys.UpdateKey(keys_pb2.UpdateKeyRequest(ref=ref, priority=1)),
        key_mesh.keys.SetKeyEnabled(keys_pb2.SetKeyEnabledRequest(ref=ref, enabled=False)),
        key_mesh.keys.RemoveKey(keys_pb2.RemoveKeyRequest(ref=ref)),
    ]
    for call in calls:
        error = await refused(call)
        assert error.code() is grpc.StatusCode.NOT_FOUND
        assert error.details() == "no API key has the label or fingerprint 'unknown-key'"


async def test_a_secret_given_as_a_reference_is_refused_without_repeating_it(
    key_mesh: KeyMesh,
) -> None:
    await key_mesh.add("known", SECRET)
    for secret in (SECRET, GEMINI_SHAPED):
        request = keys_pb2.RemoveKeyRequest(ref=keys_pb2.KeyRef(key=secret))
        error = await refused(key_mesh.keys.RemoveKey(request))
        assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert field_of(error) == "ref.key"
        assert secret not in (error.details() or "")
    assert list(await key_mesh.listed()) == ["known"]


async def test_a_label_or_secret_is_stored_once(key_mesh: KeyMesh) -> None:
    await key_mesh.add("first", SECRET)
    await key_mesh.add("second", OTHER_SECRET)

    same_label = await refused(key_mesh.add("first", "AIzaSy-a-third-secret-1234"))
    assert same_label.code() is grpc.StatusCode.ALREADY_EXISTS
    assert same_label.details() == "an API key labelled 'first' exists already"
    same_secret = await refused(key_mesh.add("third", SECRET))
    assert same_secret.code() is grpc.StatusCode.ALREADY_EXISTS
    assert same_secret.details() == ("this secret is stored already, as the key labelled 'first'")
    renamed = await refused(
        key_mesh.keys.UpdateKey(
            keys_pb2.UpdateKeyRequest(ref=keys_pb2.KeyRef(key="second"), label="first")
        )
    )
    assert renamed.code() is grpc.StatusCode.ALREADY_EXISTS
    assert "'first'" in (renamed.details() or "")
    rows = await key_mesh.rows("SELECT name, fingerprint FROM api_keys ORDER BY name")
    assert [tuple(row) for row in rows] == [
        ("first", fingerprint(SECRET)),
        ("second", fingerprint(OTHER_SECRET)),
    ]


async def test_a_disable_reason_is_one_printable_line(key_mesh: KeyMesh) -> None:
    await key_mesh.add("k", SECRET)
    for reason, problem in (("x" * 501, "longer than 500"), ("two\nlines", "one line")):
        request = keys_pb2.SetKeyEnabledRequest(
            ref=keys_pb2.KeyRef(key="k"), enabled=False, reason=reason
        )
        error = await refused(key_mesh.keys.SetKeyEnabled(request))
        assert field_of(error) == "reason"
        assert problem in (error.details() or "")
    assert (await key_mesh.listed())["k"].enabled


async def test_a_lease_for_a_task_that_does_not_run_there_and_a_bad_report_are_refused(
    key_mesh: KeyMesh,
) -> None:
    lease = await refused(
        key_mesh.keys.LeaseKey(
            keys_pb2.LeaseKeyRequest(task_id="t-1", attempt=1, agent_id="a-1", model="m")
        )
    )
    assert lease.code() is grpc.StatusCode.NOT_FOUND
    assert lease.details() == "no task t-1"
    report = await refused(key_mesh.keys.TokenReport(keys_pb2.TokenReportRequest(days=-1)))
    assert report.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert field_of(report) == "days"
