"""What `make mutate` mutates, which tests judge each module, and the equivalent mutants.

Each module's mutants run only the tests that guard it, so a module takes minutes, not the
whole suite's time per mutant. A surviving mutant is either a missing test (write it) or
equivalent: no behaviour can tell it from the original. Equivalent ones are listed here with
the reason, by operator and the source line they change, so a new survivor stands out.
Mutations inside annotations are skipped before the run: with `from __future__ import
annotations` an annotation is never evaluated (mypy, not a test, guards them).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Target:
    path: str  # the module, relative to the repository
    tests: tuple[str, ...]  # pytest arguments that select its tests
    note: str = ""
    # Seconds a test may take before pytest-timeout fails it: a mutant that hangs (a lost
    # wake-up, an endless loop) is killed by this, so it should not be much longer than the
    # slowest of the module's tests.
    test_timeout: float = 20.0
    # Its mutants signal processes: run its tests in a PID namespace of their own, where a
    # mutant that signals the wrong group (or every process it finds) reaches only the
    # tests' processes. Run as root without one, a process.py mutant once SIGTERMed every
    # process on the machine, other people's included.
    isolated: bool = False
    # Seconds of its quickest tests (as they took unmutated) a mutant runs at most; 0: all the
    # tests that ran its lines (see first.py).
    budget: float = 0.0


# The database tests run on the embedded server only: one server is enough to judge a mutant.
# (Tests without a server parameter stay.)
EMBEDDED_ONLY = ("-k", "not system")

TARGETS: dict[str, Target] = {
    "placement": Target("src/agentmesh/scheduler/placement.py", ("tests/unit/test_placement.py",)),
    "gemini_errors": Target(
        "src/agentmesh/node/executors/gemini_errors.py", ("tests/unit/test_gemini_errors.py",)
    ),
    "environment": Target("src/agentmesh/node/environment.py", ("tests/unit/test_environment.py",)),
    "auth": Target("src/agentmesh/rpc/auth.py", ("tests/unit/test_auth.py",)),
    "log_format": Target(
        "src/agentmesh/log_format.py",
        ("tests/test_log_format.py",),
        note="the log lines' scrubber: no secret reaches a log",
    ),
    "policy": Target(
        "src/agentmesh/node/permissions/policy.py",
        ("tests/unit/test_policy_edges.py", "tests/node/test_shell_permissions.py"),
    ),
    "config": Target(
        "src/agentmesh/config.py", ("tests/unit/test_config_bounds.py", "tests/test_config.py")
    ),
    "convert": Target("src/agentmesh/rpc/convert.py", ("tests/unit/test_convert.py",)),
    "trace_writer": Target(
        "src/agentmesh/scheduler/trace_writer.py", ("tests/unit/test_trace_writer.py",)
    ),
    "store": Target(
        "src/agentmesh/scheduler/store.py",
        ("tests/store", "tests/scheduler/test_store.py", *EMBEDDED_ONLY),
        note="needs PostgreSQL (the embedded server); its SQL lives in queries.py as strings,"
        " which the tool does not mutate: the store tests judge the SQL through the store",
        test_timeout=60.0,
    ),
    "process": Target(
        "src/agentmesh/node/process.py",
        (
            "tests/node/test_cancel_stubborn.py",
            "tests/node/test_node.py",
            "tests/node/test_process_groups.py",
            "tests/node/test_leftovers.py",
            "-k",
            "cancel or dropped or stubborn or output or stream or process_groups or listed",
        ),
        test_timeout=60.0,
        isolated=True,
    ),
    "forecast": Target(
        "src/agentmesh/keys/forecast.py",
        (
            "tests/unit/test_forecast.py",
            "tests/store/test_forecast.py",
            "tests/store/test_token_report.py",
            # The unit tests and the embedded server's (EMBEDDED_ONLY would drop the former).
            "-k",
            "not system",
        ),
        note="needs PostgreSQL (the embedded server); its SQL is judged through the tests",
        test_timeout=60.0,
    ),
    "reservations": Target(
        "src/agentmesh/keys/reservations.py",
        ("tests/store/test_key_reservations.py", *EMBEDDED_ONLY),
        note="needs PostgreSQL (the embedded server)",
        test_timeout=60.0,
    ),
    "broker": Target(
        "src/agentmesh/keys/broker.py",
        ("tests/store/test_key_broker.py", *EMBEDDED_ONLY),
        note="needs PostgreSQL (the embedded server)",
        test_timeout=60.0,
    ),
    "delegation": Target(
        "src/agentmesh/scheduler/delegation.py", ("tests/unit/test_delegation.py",)
    ),
    "task_credentials": Target(
        "src/agentmesh/access/task_credentials.py", ("tests/unit/test_delegation.py",)
    ),
    "access_policies": Target(
        "src/agentmesh/access/policies.py",
        (
            "tests/unit/test_delegation.py",
            # These two run on the embedded server only (their own pg_server fixture).
            "tests/scheduler/test_auth.py",
            "tests/scheduler/test_node_credentials.py",
        ),
        note="the node-credential half runs a mesh per mutant",
        test_timeout=60.0,
    ),
    "request_shape": Target(
        "src/agentmesh/rpc/request_shape.py",
        ("tests/unit/test_request_shape.py", "tests/node/test_request_shape.py"),
        test_timeout=60.0,
    ),
    "command_check": Target(
        "src/agentmesh/node/command_check.py",
        ("tests/node/test_command_check.py",),
        note="starts checker worker processes per test",
        test_timeout=60.0,
    ),
    "group_commit": Target(
        "src/agentmesh/scheduler/group_commit.py", ("tests/unit/test_group_commit.py",)
    ),
    "node_link": Target(
        "src/agentmesh/scheduler/node_link.py",
        (
            "tests/scheduler/test_node_link.py",
            "tests/scheduler/test_scheduler.py",
            "tests/scheduler/test_cancels.py",
            "tests/scheduler/test_unreachable_node.py",
            "tests/scheduler/test_recovery.py",
            *EMBEDDED_ONLY,
        ),
        note="stand-in nodes on real ports in process, and whole meshes",
        test_timeout=120.0,
    ),
    "dispatch": Target(
        "src/agentmesh/scheduler/dispatch.py",
        (
            "tests/unit/test_dispatch_rules.py",
            "tests/store/test_dispatch_rounds.py",
            "tests/store/test_round_statements.py",
            "tests/scheduler",
            "tests/keys",
            "tests/cli/test_approvals.py",
            *EMBEDDED_ONLY,
        ),
        note="slow: every mutant runs a scheduler and nodes, and every mesh test runs most of"
        " its lines; each mutant runs the quickest of them, two minutes' worth unmutated",
        test_timeout=120.0,
        budget=120.0,
    ),
    "attempts": Target(
        "src/agentmesh/scheduler/attempts.py",
        (
            "tests/scheduler",
            "tests/keys",
            "tests/cli/test_approvals.py",
            "tests/store/test_dispatch_rounds.py",
            "tests/store/test_new_placements.py",
            *EMBEDDED_ONLY,
        ),
        note="slow, as dispatch's: an attempt runs on a stand-in node or in a whole mesh; each"
        " mutant runs the quickest of its tests, two minutes' worth unmutated",
        test_timeout=120.0,
        budget=120.0,
    ),
    "leftovers": Target(
        "src/agentmesh/node/leftovers.py",
        ("tests/node/test_leftovers.py",),
        note="kills processes: its mutants run in a PID namespace of their own",
        test_timeout=60.0,
        isolated=True,
    ),
    "watch": Target(
        "src/agentmesh/scheduler/watch.py",
        ("tests/store/test_watch.py", "tests/scheduler/test_scheduler.py", *EMBEDDED_ONLY),
    ),
}

# The modules nobody else was changing when mutation testing was added; `make mutate` runs
# these unless MODULES names others.
DEFAULT = ("gemini_errors", "environment", "auth", "policy")


@dataclass(frozen=True)
class Equivalent:
    operator: str  # cosmic-ray's operator name
    line: str  # the original source line, stripped
    reason: str
    after: str = ""  # the line before it, stripped, where `line` alone is ambiguous


_MODE_IS = (
    "`mode` is a PermissionMode, so == is `is`; of its two values only 'weak' >= 'weak'"
    " holds ('superuser' < 'weak'), so >= is `is` too"
)
_KEYWORD_ONLY = "every caller passes the arguments after it by keyword: `/` or `*` alike"
_GROUP_GUARD = (
    "the number stands for a victim that is gone (_pgid), and _signal_group signals a group"
    " only while a running process it knows of is in it: whatever the number, no group is"
    " signalled for it"
)
_OWN_GROUP = (
    "it adds 0 (a gone victim, see above) and the node's own group, which no victim is in:"
    " the command runs in a session of its own, and setpgid cannot join a group of another"
    " session; _signal_group signals neither"
)
_EACH_VICTIM = (
    "every victim's own group is in `groups` and is signalled just above while the victim"
    " runs in it, so signalling each victim again reaches nothing more"
)

_STRICTER_COVER = (
    "_covers only spares a task the query for a key when a task of its round (same user,"
    " model and nodes) that needs no more found none; a stricter test (== or > for >=)"
    " spares fewer, and the query each then makes gives the same answer: no key"
)

_ZERO_CACHE = (
    "with cache_seconds 0 an entry also goes into the cache, expiring when it is made: a"
    " lookup sees it expired (now < expiry is false), so every forecast reads the database as"
    " without a cache, and the pruning removes such entries (the clock is monotonic)"
)

_SELF_PAIR = (
    "i ** 1 and i * 1 are i: each point is also paired with itself, and that pair adds no"
    " slope (its prompts differ by 0, less than SLOPE_SPREAD of them: plain-rule tokens are"
    " at least 1)"
)

_ONE_TURN = (
    "it makes the trace writer linger 0 or -1 s, which asyncio.timeout ends on the event"
    " loop's next turn: no event is held for any time, and all that could change is whether"
    " an event added within that one turn joins the batch, which the writer does not promise"
    " (order, content and sequence numbers are the same)"
)
_TWO_PARTS = (
    "a method is a full gRPC name, /package.Service/Method: split once from the right it is"
    " two parts, so [1] is [-1]"
)

_FROZEN = "nothing assigns to its fields after it is made: frozen only forbids what no code does"

_SMALL_INT = (
    "wire types (key & 7) and the field numbers it is compared with (1, 3, 13) are below 257,"
    " where CPython keeps one int object per value: `is` is =="
)
_WALK_STOPS_AT_END = (
    "a position never passes the end: a field whose value would end past it is refused, and a"
    " varint stops at it, so the walk meets the end exactly: != is <"
)
_SHIFT = (
    "a varint's shift is a multiple of 7 (63, then 70): < 65 and <= 64 stop where < 64 does;"
    " this entry also matches the other mutant of each operator on the line, which tests kill:"
    " `shift < 63` (a ten-byte varint passes) and `position <= end` (a varint cut off)"
)

_LOOK_AHEAD = (
    "list_tasks reads one row past the page to learn whether a next page exists: any limit"
    " above page_size reads the same page and the same token (the order, created_at and id,"
    " is total), only more rows; ListTasks passes a page_size of 1 to 1000 (0 becomes 50,"
    " others are refused), where 2 * page_size and page_size + 2 are both above it"
)

_READY_NOW = (
    "a queue row's available_at is only compared with now() (the window reads rows with"
    " available_at <= now(), in priority and arrival order, never by available_at; parking"
    " and unparking overwrite it): a row available a second ago is ready as one available"
    " now. This entry also matches a delay of {}, which the tests kill (the task is not"
    " ready at once)"
)

_BY_POSITION_THEN_KEYWORD = (
    "every caller (src, tests, bench) passes the arguments before the `*` by position and"
    " those after it by keyword: `/` (positional-only before, either after) or `*` alike"
)

_ONE_ROW = (
    "_insert_leaves returns one record per spec, in order: of the one here, [-1] is [0];"
    " this entry also matches [1], which fails at once (IndexError) and is killed"
)

_STALE_CLEAN_UP = (
    "a start never starts more tasks than were placed, so the only other case it lets in is"
    " all of them started, where the clean-up drops the queue rows of no task (`rest` is"
    " empty): a statement that changes nothing"
)
_STORE_BUILDS_IT = (
    "a default nobody uses: only the store builds StartedAttempt and ReadyTask, and it"
    " always passes last_seq and position (a test helper builds a StartedAttempt to lose"
    " it, which reads its task and attempt only)"
)

_ONE_OWNER = (
    "a store serves one scheduler, whose dispatcher ends every attempt under its one owner"
    " string (DispatchSettings.owner, the same object each time): a batch of ends has one"
    " owner, so `mine` is the whole batch under ==, >=, <= and `is` alike"
)

_NO_COMMON_BITS = (
    "the two flags share no bit (O_RDWR 2, O_CREAT 64; LOCK_EX 2, LOCK_NB 4): their sum and"
    " their exclusive or are their union"
)

_FIRST_EVENT = "await writer.add(payload, linger=START_LINGER_SECONDS if received == 1 else 0.0)"
_LINGER = (
    "timing only: which of an attempt's events waits a moment (20 ms) for the next to share"
    " its write changes how many statements store a trace, never what is stored or in what"
    " order; how many it takes depends as much on the machine's speed, so no test that does"
    " not measure time can tell them apart"
)
_PAUSE = (
    "timing only: the pause before the next round after a failed one (a database outage, a"
    " bug) changes how soon it runs, not what it does; 1.5 s or none (a negative sleep is"
    " none) tells only a clock"
)

EQUIVALENT: dict[str, tuple[Equivalent, ...]] = {
    "store": (
        Equivalent("core/ReplaceBinaryOperator_Add_LShift", "page_size + 1,", _LOOK_AHEAD),
        Equivalent(
            "core/ReplaceBinaryOperator_Mul_Div",
            "def __init__(self, pool: asyncpg.Pool, *, default_max_attempts: int) -> None:",
            _BY_POSITION_THEN_KEYWORD,
        ),
        Equivalent(
            "core/ReplaceBinaryOperator_Mul_Div",
            "self, conn: Connection, task_id: str, reason: str, *, propagate: bool",
            _BY_POSITION_THEN_KEYWORD,
        ),
        Equivalent(
            "core/ReplaceBinaryOperator_Mul_Div",
            'async def submit(self, spec: TaskSpec, *, replay_of: str = "") -> str:',
            _BY_POSITION_THEN_KEYWORD,
        ),
        Equivalent(
            "core/ReplaceBinaryOperator_Mul_Div",
            'async def submit_and_get(self, spec: TaskSpec, *, replay_of: str = "") -> TaskRecord:',
            _BY_POSITION_THEN_KEYWORD,
        ),
        Equivalent(
            "core/ReplaceBinaryOperator_Mul_Div",
            "async def approve(self, task_id: str, *, always: bool, prefix: str) -> str:",
            _BY_POSITION_THEN_KEYWORD,
        ),
        # list_tasks, append_many, finish_attempt, retry_attempt and _finish.
        Equivalent("core/ReplaceBinaryOperator_Mul_Div", "*,", _BY_POSITION_THEN_KEYWORD),
        Equivalent(
            "core/NumberReplacer",
            "await conn.execute(q.ENQUEUE, child_id, spec.priority, 0.0)",
            _READY_NOW.format("1.0"),
        ),
        Equivalent(
            "core/NumberReplacer",
            "await conn.execute(q.ENQUEUE, task_id, spec.priority, 0.0)",
            _READY_NOW.format("1.0"),
        ),
        Equivalent(
            "core/NumberReplacer",
            'await conn.execute(q.ENQUEUE, task_id, request["priority"], 0.0)',
            _READY_NOW.format("1.0"),
        ),
        Equivalent(
            "core/NumberReplacer",
            'await conn.execute(q.ENQUEUE, parent_id, parent["priority"], 0.0)',
            _READY_NOW.format("1.0"),
        ),
        Equivalent(
            "core/NumberReplacer",
            "backoff_seconds=0.0,",
            "release_owned hands an attempt back with a backoff of -1 s instead of 0: "
            + _READY_NOW.format("1.0"),
        ),
        Equivalent(
            "core/NumberReplacer",
            "record = (await self._insert_and_tell([spec], conn))[0]",
            _ONE_ROW,
        ),
        Equivalent(
            "core/NumberReplacer",
            "task_id = records[0].id",
            _ONE_ROW,
        ),
        Equivalent(
            "core/ReplaceComparisonOperator_NotEq_Lt",
            'if row is None or row["state"] != TaskState.WORKING.value'
            ' or row["attempt"] != attempt:',
            "no task state sorts after 'working' (submitted, input_required, completed, failed,"
            " canceled, rejected): < 'working' is != here; this entry also matches"
            " `row['attempt'] < attempt`, which the test of an earlier attempt kills",
        ),
        Equivalent(
            "core/ReplaceFalseWithTrue",
            'await self._cancel_subtree(conn, row["id"], reason, propagate=False)',
            "the subtree's top is a delegated child, whose end _finish never passes to its"
            " parent (`not ended['delegated']`), and _cancel_subtree propagates from no other"
            " node: True changes nothing",
        ),
        Equivalent(
            "core/ReplaceFalseWithTrue",
            'await conn.execute(q.ANSWER_REQUEST, request["id"], "denied", None, False)',
            "a denied question's `prefix` is read by nothing: approvals_for reads approved"
            " answers only, the pending list unanswered ones, and a denied task has ended",
        ),
        Equivalent(
            "core/ReplaceComparisonOperator_GtE_Eq",
            'if counts and owned["attempt"] >= owned["max_attempts"]:',
            "a task never runs an attempt past its max_attempts: the attempt lost at the max"
            " fails it, and what queues it again without that (an attempt given back, an"
            " approval) raises max_attempts by one; so a lost attempt's number is at most"
            " max_attempts and == is >=",
        ),
        Equivalent(
            "core/ReplaceComparisonOperator_Lt_NotEq",
            "if len(started) < len(placements):",
            _STALE_CLEAN_UP,
        ),
        Equivalent(
            "core/ReplaceComparisonOperator_Lt_LtE",
            "if len(started) < len(placements):",
            _STALE_CLEAN_UP,
        ),
        Equivalent(
            "core/ReplaceComparisonOperator_Lt_IsNot",
            "if len(started) < len(placements):",
            _STALE_CLEAN_UP,
        ),
        Equivalent("core/NumberReplacer", "last_seq: int = 0", _STORE_BUILDS_IT),
        Equivalent("core/NumberReplacer", "position: QueuePosition = (0, 0)", _STORE_BUILDS_IT),
        Equivalent(
            "core/ReplaceComparisonOperator_Eq_GtE",
            "mine = [end for end in ends if end.owner == owner]",
            _ONE_OWNER,
        ),
        Equivalent(
            "core/ReplaceComparisonOperator_Eq_LtE",
            "mine = [end for end in ends if end.owner == owner]",
            _ONE_OWNER,
        ),
        Equivalent(
            "core/ReplaceComparisonOperator_Eq_Is",
            "mine = [end for end in ends if end.owner == owner]",
            _ONE_OWNER,
        ),
        Equivalent(
            "core/ReplaceComparisonOperator_IsNot_NotEq",
            "if result.state is not TaskState.COMPLETED:",
            "a Result's state is a TaskState member (every Result is built with one, and"
            " payload_from_dict converts the stored word back), and members are singletons:"
            " != is `is not`",
        ),
        Equivalent(
            "core/ReplaceTrueWithFalse",
            "for row, approval in zip(rows, approvals, strict=True)",
            "`approvals` is built from `rows`, one for each: the two are always the same"
            " length, so strict has nothing to refuse",
        ),
        Equivalent(
            "core/ReplaceTrueWithFalse",
            "@dataclass(frozen=True)",
            "nothing assigns to a TaskRecord, ReadyTask, StartedAttempt, DelegatingParent or"
            " AttemptEnd once made (mypy refuses it), and none is hashed (dispatch keys its"
            " maps by task id, the group commit its batches by position): frozen=False is the"
            " same value",
        ),
        Equivalent(
            "core/ReplaceOrWithAnd",
            'if parent is None or TaskState(parent["state"]).terminal:',
            "no child's end meets an ended or missing parent: under the tree's lock a parent"
            " ends only once its own subtasks all completed, or after cancelling the"
            " unfinished ones in the same transaction (a failing child's siblings first, a"
            " cancel children first, without telling the parent), a delegated child's end is"
            " never passed up, and a parent's row goes only with its children (ON DELETE"
            " CASCADE); the guard never returns, so `and` (which would fail on None) is `or`",
        ),
        Equivalent(
            "core/NumberReplacer",
            "page_size + 1,",
            f"{_LOOK_AHEAD}; this entry also matches page_size + 0, which the paging test"
            " kills (no page has a next one)",
        ),
    ),
    "command_check": (
        Equivalent(
            "core/ReplaceBinaryOperator_Mul_Div",
            "self, permissions: Permissions, *, time_limit_seconds: float, workers: int = 2",
            "every caller passes permissions by position and the rest by keyword: `/` or `*` alike",
        ),
        Equivalent(
            "core/ReplaceComparisonOperator_Eq_LtE",
            'if __name__ == "__main__":',
            "imported, __name__ is agentmesh.node.command_check, which sorts after '__main__'"
            " ('a' > '_'): <= holds only when run as the worker, as == does",
        ),
        Equivalent(
            "core/ReplaceTrueWithFalse",
            "await asyncio.gather(*(worker.close() for worker in idle), return_exceptions=True)",
            "a worker's close raises nothing (it catches its own timeout, and kill suppresses"
            " ProcessLookupError), so there is no exception to return or raise",
        ),
        Equivalent(
            "core/NumberReplacer",
            "MAX_ANSWER_BYTES = 1 << 20",
            "the checker refuses a command over 16 KiB (too-long) before planning it and"
            " expands nothing, so a worker's answer is a few times that at most: a limit of"
            " 512 KiB, 1 MiB or 2 MiB passes every answer a worker can give (0 << 20 is killed)",
        ),
        Equivalent(
            "core/NumberReplacer",
            "START_TIMEOUT_SECONDS = 30.0",
            "a worker starts in well under a second; 29 or 31 s differ from 30 only on the wall"
            " clock, which the suite does not assert (the path past the limit is tested with the"
            " limit patched to 0.5 s)",
        ),
        Equivalent(
            "core/NumberReplacer",
            "await asyncio.wait_for(self._process.wait(), 2.0)",
            "a worker ends at once on EOF; a grace of 1 or 3 s instead of 2 differs only on the"
            " wall clock, which the suite does not assert (a worker that does not end is killed"
            " after it either way: tested)",
        ),
    ),
    "request_shape": (
        Equivalent(
            "core/ReplaceBinaryOperator_Add_BitOr",
            "_FIELDS_PER_TASK = len(_SPEC_FIELDS) + MAX_CAPABILITIES",
            "TaskSpec's 18 fields (0b10010) and MAX_CAPABILITIES (64) share no bit: | is +"
            " (the field budget's edge test kills it once they do)",
        ),
        Equivalent(
            "core/ReplaceBinaryOperator_Add_BitXor",
            "_FIELDS_PER_TASK = len(_SPEC_FIELDS) + MAX_CAPABILITIES",
            "TaskSpec's 18 fields (0b10010) and MAX_CAPABILITIES (64) share no bit: ^ is +"
            " (the field budget's edge test kills it once they do)",
        ),
        Equivalent(
            "core/ReplaceBinaryOperator_BitAnd_FloorDiv",
            "if not byte & 0x80:",
            "a byte is below 256, so byte // 0x80 is 1 exactly when its top bit is set",
        ),
        Equivalent(
            "core/ReplaceComparisonOperator_Eq_LtE",
            "if wire_type == _VARINT:",
            "key & 7 is never negative: <= 0 is == 0",
        ),
        Equivalent("core/ReplaceComparisonOperator_Eq_Is", "if wire_type == _VARINT:", _SMALL_INT),
        Equivalent(
            "core/ReplaceComparisonOperator_Eq_LtE",
            "value_end = position + (8 if wire_type == _FIXED64 else 4)",
            "the wire type here is 1 or 5: <= 1 is == 1",
        ),
        Equivalent(
            "core/ReplaceComparisonOperator_Eq_Is",
            "value_end = position + (8 if wire_type == _FIXED64 else 4)",
            _SMALL_INT,
        ),
        Equivalent(
            "core/ReplaceComparisonOperator_Eq_LtE",
            "elif wire_type == _LENGTH:",
            "the wire type here is not 0, 1 or 5 (taken above): <= 2 is == 2",
        ),
        Equivalent(
            "core/ReplaceComparisonOperator_Eq_Is", "elif wire_type == _LENGTH:", _SMALL_INT
        ),
        Equivalent(
            "core/ReplaceComparisonOperator_Eq_Is",
            "if number == spec_field and wire_type == _LENGTH:",
            _SMALL_INT,
        ),
        Equivalent(
            "core/ReplaceComparisonOperator_NotEq_IsNot",
            "if number != SUBTASKS or wire_type != _LENGTH:",
            _SMALL_INT,
        ),
        Equivalent(
            "core/ReplaceComparisonOperator_Lt_NotEq", "while position < end:", _WALK_STOPS_AT_END
        ),
        Equivalent(
            "core/ReplaceComparisonOperator_Lt_NotEq",
            "while position < end and shift < 64:",
            f"{_WALK_STOPS_AT_END}; the other mutant of this operator on the line (`shift !="
            " 64`) is killed by an 11-byte varint, which this entry also matches",
        ),
        Equivalent(
            "core/ReplaceComparisonOperator_Lt_LtE", "while position < end and shift < 64:", _SHIFT
        ),
        Equivalent("core/NumberReplacer", "while position < end and shift < 64:", _SHIFT),
        Equivalent(
            "core/ReplaceComparisonOperator_GtE_Eq",
            "if depth >= self.shape.max_depth:",
            "depth starts at 0 and grows by one only below max_depth, which is never negative"
            " (scheduler.max_subtask_depth is 1 to 32, a node's and DelegateTask's 0): == is >=",
        ),
        Equivalent(
            "core/ReplaceComparisonOperator_GtE_Is",
            "if depth >= self.shape.max_depth:",
            "as for ==, and max_depth is at most 32, where CPython keeps one int object per"
            " value: `is` is ==",
        ),
        Equivalent(
            "core/ReplaceTrueWithFalse",
            "@dataclass(frozen=True)",
            "nothing assigns to a SpecShape or hashes one (each is made once, at registration):"
            " frozen only forbids what no code does",
        ),
        Equivalent(
            "core/ReplaceTrueWithFalse",
            "@dataclass(frozen=True, slots=True)",
            "nothing assigns to a RefusedRequest, hashes one or reads its __dict__ (the error"
            " wrappers read `error` once): frozen and slots only forbid what no code does",
        ),
    ),
    "delegation": (
        Equivalent("core/ReplaceBinaryOperator_Mul_Div", "*,", _KEYWORD_ONLY),
        Equivalent("core/ReplaceTrueWithFalse", "@dataclass(frozen=True)", _FROZEN),
        Equivalent(
            "core/ReplaceComparisonOperator_LtE_Eq",
            "if left <= 0 or max_tokens > left:",
            "max_tokens is never negative (validated), so when left < 0 `max_tokens > left`"
            " refuses anyway: == 0 refuses exactly what <= 0 does",
        ),
    ),
    "task_credentials": (
        Equivalent("core/ReplaceTrueWithFalse", "@dataclass(frozen=True)", _FROZEN),
    ),
    "access_policies": (
        Equivalent(
            "core/ReplaceUnaryOperator_USub_UAdd", 'return method.rsplit("/", 1)[-1]', _TWO_PARTS
        ),
        Equivalent(
            "core/ReplaceUnaryOperator_Delete_USub", 'return method.rsplit("/", 1)[-1]', _TWO_PARTS
        ),
        Equivalent(
            "core/NumberReplacer",
            'return method.rsplit("/", 1)[-1]',
            "a full gRPC name has two slashes, and its last part is the same whether it is split"
            " once or twice from the right; this entry also matches the line's other numbers"
            " (split 0 times, [-0], [-2]), which the refusals' words kill",
        ),
    ),
    "placement": (
        Equivalent(
            "core/ReplaceComparisonOperator_Eq_LtE",
            "if len(reachable) == 1:",
            "reachable is never empty here (an empty one returned just above): <= 1 is == 1",
        ),
        Equivalent(
            "core/ReplaceComparisonOperator_Gt_NotEq",
            "free = [a for a in reachable if a.free > 0]",
            "`free` is max(..., 0), never negative: != 0 is > 0",
        ),
        Equivalent(
            "core/ReplaceComparisonOperator_Gt_NotEq",
            "return [a for a in found if not a.unreachable and a.free > 0]",
            "`free` is max(..., 0), never negative: != 0 is > 0",
        ),
        Equivalent(
            "core/ReplaceUnaryOperator_USub_Invert", "-a.free,", "~x is -x - 1: the same order"
        ),
        Equivalent(
            "core/ReplaceComparisonOperator_Gt_NotEq",
            "f\"{', '.join(unreachable)} {'are' if len(unreachable) > 1 else 'is'} unreachable\"",
            "the words are used only when some fitting agent is unreachable, so the count is"
            " never 0: != 1 is > 1",
        ),
        Equivalent(
            "core/NumberReplacer",
            'reason = f"the only {qualifier}fitting agent ({reachable[0].name}) is busy"',
            "reachable holds exactly one agent here: reachable[-1] is reachable[0]",
        ),
    ),
    "watch": (
        Equivalent(
            "core/ReplaceComparisonOperator_Eq_GtE",
            "if len(page) == PAGE:  # there may be more: read on while this page goes",
            "a page never holds more than PAGE rows: PAGE is the read's limit",
        ),
        Equivalent(
            "core/NumberReplacer",
            "PAGE = 500",
            "any page size gives the same events in the same order; the tests read PAGE",
        ),
        Equivalent(
            "core/NumberReplacer",
            "task_id, last, 1",
            "any positive limit tells whether an event follows `last`; 0 is not equivalent"
            " (tests kill it), and this entry matches both of the line's number mutants",
        ),
    ),
    "trace_writer": (
        Equivalent(
            "core/ReplaceComparisonOperator_GtE_Eq",
            "if len(self._pending) >= MAX_BACKLOG:",
            "events are added one at a time and adding stops at the bound, so the length"
            " meets the bound before it could pass it: == is >=",
        ),
        Equivalent(
            "core/ReplaceComparisonOperator_GtE_Is",
            "if len(self._pending) >= MAX_BACKLOG:",
            "as for ==, and CPython keeps one int object per value up to 256: `is` is ==",
        ),
        Equivalent(
            "core/ReplaceBinaryOperator_Mul_Div",
            "async def add(self, payload: Payload, *, linger: float = 0.0) -> None:",
            _KEYWORD_ONLY,
        ),
        Equivalent(
            "core/NumberReplacer",
            "self._linger = 0.0",
            "the first value is never read: the writer reads it only when woken, and the first"
            " wake-up comes from an add, which finds nothing pending and sets it, or from a"
            " close, which skips the linger",
            after="# How long the pending batch may wait for company (see `add`).",
        ),
        Equivalent(
            "core/NumberReplacer",
            "self._linger = 0.0",
            f"{_ONE_TURN}; this entry also matches 1.0 there, which the test of a quiet stream"
            " after a busy write kills",
            after="batch, self._pending = self._pending, []",
        ),
        Equivalent(
            "core/NumberReplacer",
            "async def add(self, payload: Payload, *, linger: float = 0.0) -> None:",
            f"{_ONE_TURN}; 1.0 there is killed (a quiet stream's events are written at once)",
        ),
        Equivalent(
            "core/ReplaceAndWithOr",
            "if (linger := self._linger) and not self._closing:",
            f"{_ONE_TURN}; closing, the linger ends at once anyway: close and take_rest set the"
            " flush before they wake the writer",
        ),
    ),
    "convert": (
        Equivalent(
            "core/ReplaceComparisonOperator_Is_Eq",
            "if cls is events.ApiError:",
            "a class is equal only to itself",
        ),
        Equivalent(
            "core/ReplaceComparisonOperator_Is_Eq",
            "if cls is events.Result:",
            "a class is equal only to itself",
        ),
        Equivalent(
            "core/ReplaceComparisonOperator_Eq_GtE",
            'elif field.name == "usage":',
            "no payload has a field whose name sorts after usage",
        ),
        Equivalent(
            "core/NumberReplacer",
            'values["memory_bytes"] = int(values.get("memory_bytes", 0))',
            "always_print_fields_with_no_presence=True always puts memory_bytes in the dict:"
            " the default is never used",
        ),
    ),
    "group_commit": (
        Equivalent(
            "core/ReplaceBinaryOperator_Mul_Div",
            "self, write: Callable[[Sequence[In]], Awaitable[Sequence[Out]]], *, max_batch: int"
            " = 256",
            "every caller passes max_batch by keyword",
        ),
        Equivalent(
            "core/ReplaceComparisonOperator_NotEq_IsNot",
            "if len(answers) != len(batch):",
            "lengths are small integers, which are one object each",
        ),
        Equivalent(
            "core/ReplaceTrueWithFalse",
            "for (_, future), answer in zip(batch, answers, strict=True):",
            "the lengths were checked equal just before",
        ),
    ),
    "policy": (
        Equivalent(
            "core/ReplaceComparisonOperator_Is_Eq", "if mode is PermissionMode.WEAK:", _MODE_IS
        ),
        Equivalent(
            "core/ReplaceComparisonOperator_Is_GtE", "if mode is PermissionMode.WEAK:", _MODE_IS
        ),
        Equivalent(
            "core/ReplaceComparisonOperator_Is_Eq",
            'if char == "\\n" and mode is PermissionMode.WEAK:',
            _MODE_IS,
        ),
        Equivalent(
            "core/ReplaceComparisonOperator_Is_GtE",
            'if char == "\\n" and mode is PermissionMode.WEAK:',
            _MODE_IS,
        ),
        Equivalent(
            "core/ReplaceComparisonOperator_Is_Eq", "if ctx.mode is PermissionMode.WEAK:", _MODE_IS
        ),
        Equivalent(
            "core/ReplaceComparisonOperator_Is_GtE", "if ctx.mode is PermissionMode.WEAK:", _MODE_IS
        ),
        Equivalent("core/ReplaceBinaryOperator_Mul_Div", "*,", _KEYWORD_ONLY),
        Equivalent(
            "core/ReplaceBinaryOperator_Mul_Div",
            "def _check_code(code: str, ctx: Ctx, depth: int, *, posix: bool = False) -> None:",
            _KEYWORD_ONLY,
        ),
        Equivalent(
            "core/ReplaceTrueWithFalse",
            "@dataclass(frozen=True, slots=True)",
            "slots=False only gives each plan a __dict__ (frozen=False is killed: a plan is"
            " hashable and immutable)",
        ),
        Equivalent(
            "core/ReplaceContinueWithBreak",
            "continue",
            "in weak mode a Code is always the last thing a handler yields (the one handler"
            " that yields more, for opaque wrappers, refuses in weak mode first), so break"
            " leaves the same loop that continue would",
            after="_check_weak(inner.text, ctx, call.depth + 1)",
        ),
        Equivalent(
            "core/ReplaceComparisonOperator_Eq_GtE",
            'if quote == "\'":',
            "quote is '', \"'\" or '\"', and neither '' nor '\"' sorts after \"'\": >= is ==",
        ),
        Equivalent(
            "core/ReplaceComparisonOperator_Eq_GtE",
            "if quote == '\"':",
            "quote is '', \"'\" or '\"', and the \"'\" case continued above: >= is ==",
        ),
        Equivalent(
            "core/ReplaceComparisonOperator_Eq_GtE",
            "if k == 1:  # later readings of the same text only check, never record",
            "code has at most two dialects (ANY_SHELL), so k is 0 or 1: >= 1 is == 1",
        ),
    ),
    "config": (
        Equivalent(
            "core/ReplaceBinaryOperator_Mul_Div",
            "def load_settings(environ: Mapping[str, str] | None = None, *, cwd: Path | None"
            " = None) -> Settings:",
            "every caller passes environ by position and cwd by keyword: `/` or `*` alike",
        ),
        Equivalent(
            "core/ReplaceBinaryOperator_Mul_Div",
            "def _read_config_file(path: Path, *, explicit: bool) -> FileSettings:",
            _KEYWORD_ONLY,
        ),
        Equivalent(
            "core/ReplaceBinaryOperator_Mul_Div",
            "exc: ValidationError, *, source: str, secret_keys: frozenset[str] = frozenset()",
            _KEYWORD_ONLY,
        ),
        Equivalent(
            "core/ReplaceFalseWithTrue",
            "for error in exc.errors(include_url=False):",
            "the message is built from each error's loc, type, msg and input; its url is"
            " never read",
        ),
        Equivalent(
            "core/ReplaceTrueWithFalse",
            'model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)',
            "validate_default=False: every default is valid as written (the defaults test and"
            " the example file equal them), so validating it changes nothing; it guards"
            " defaults edited later (frozen=False, the same operator on this line, is killed)",
        ),
        Equivalent(
            "core/RemoveDecorator",
            "@classmethod",
            "pydantic makes a field validator whose first parameter is `cls` a classmethod itself",
            after='@field_validator("DATABASE_URL")',
        ),
        Equivalent(
            "core/ReplaceComparisonOperator_Is_Eq",
            "return self.weak.network if mode is PermissionMode.WEAK else self.superuser.network",
            _MODE_IS,
        ),
        Equivalent(
            "core/ReplaceComparisonOperator_Is_GtE",
            "return self.weak.network if mode is PermissionMode.WEAK else self.superuser.network",
            _MODE_IS,
        ),
    ),
    "dispatch": (
        Equivalent(
            "core/ReplaceComparisonOperator_Eq_GtE",
            "self._resume = page[-1].position if len(page) == window else None",
            "a page is read with LIMIT window: it is never longer",
        ),
        Equivalent("core/NumberReplacer", "await asyncio.sleep(0.5)", _PAUSE),
        Equivalent(
            "core/NumberReplacer",
            "async def probe_unreachable(self, timeout_seconds: float = 2.0) -> None:",
            "timing only: how long a probe waits for an unreachable agent's answer; one that"
            " answers does so in milliseconds, one that does not is not marked either way",
        ),
    ),
    "attempts": (
        Equivalent(
            "core/ReplaceComparisonOperator_Is_GtE",
            "rejected = payload.state is TaskState.REJECTED",
            "a result's state is one a task ends in; of those only 'rejected' sorts at or after"
            " 'rejected' (the others that do, submitted and working, end nothing)",
        ),
        *(
            Equivalent(f"core/ReplaceComparisonOperator_Eq_{other}", _FIRST_EVENT, _LINGER)
            for other in ("NotEq", "Lt", "LtE", "Gt", "GtE", "Is", "IsNot")
        ),
        Equivalent("core/NumberReplacer", _FIRST_EVENT, _LINGER),
        Equivalent("core/NumberReplacer", "START_LINGER_SECONDS = 0.02", _LINGER),
    ),
    "log_format": (
        Equivalent(
            "core/ReplaceBinaryOperator_Mul_Div",
            "def install(level: int, *, secrets: Iterable[str | None] = ()) -> None:",
            _KEYWORD_ONLY,
        ),
    ),
    "leftovers": (
        Equivalent(
            "core/ReplaceBinaryOperator_BitOr_Add",
            "lock = os.open(making / LOCK, os.O_RDWR | os.O_CREAT, 0o600)",
            _NO_COMMON_BITS,
        ),
        Equivalent(
            "core/ReplaceBinaryOperator_BitOr_BitXor",
            "lock = os.open(making / LOCK, os.O_RDWR | os.O_CREAT, 0o600)",
            _NO_COMMON_BITS,
        ),
        Equivalent(
            "core/ReplaceBinaryOperator_BitOr_Add",
            "fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)",
            _NO_COMMON_BITS,
        ),
        Equivalent(
            "core/ReplaceBinaryOperator_BitOr_BitXor",
            "fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)",
            _NO_COMMON_BITS,
        ),
        Equivalent(
            "core/NumberReplacer",
            'fields = text[text.rindex(")") + 2 :].split()',
            "+ 1 keeps the space after the ), which split() drops; this entry also matches"
            " + 3, which every test kills (the state is lost and each field read one off)",
        ),
        Equivalent(
            "core/ReplaceTrueWithFalse",
            "@dataclass(frozen=True, slots=True)",
            "a _Process is made from /proc and only read: nothing assigns to one or its"
            " attributes, so neither frozen nor slots changes what it does",
        ),
    ),
    "process": (
        Equivalent("core/ReplaceBinaryOperator_Mul_Div", "*,", _KEYWORD_ONLY),
        Equivalent(
            "core/ReplaceTrueWithFalse",
            "@dataclass(frozen=True, slots=True)",
            "slots=False only gives each chunk a __dict__ (frozen=False is killed: a chunk"
            " cannot be changed)",
        ),
        Equivalent(
            "core/NumberReplacer",
            "groups = {group} | {_pgid(p) for p in victims} - {0, os.getpgrp()}",
            _GROUP_GUARD,
        ),
        Equivalent("core/NumberReplacer", "return 0", _GROUP_GUARD),
        Equivalent(
            "core/ReplaceBinaryOperator_Sub_BitOr",
            "groups = {group} | {_pgid(p) for p in victims} - {0, os.getpgrp()}",
            _OWN_GROUP,
        ),
        Equivalent(
            "core/ReplaceBinaryOperator_Sub_BitXor",
            "groups = {group} | {_pgid(p) for p in victims} - {0, os.getpgrp()}",
            _OWN_GROUP,
        ),
        Equivalent("core/ZeroIterationForLoop", "for victim in victims:", _EACH_VICTIM),
        Equivalent("core/ZeroIterationForLoop", "for victim in survivors:", _EACH_VICTIM),
        Equivalent(
            "core/ReplaceBinaryOperator_Sub_BitOr",
            "for fd in self._open.keys() - self._watched:",
            "a watched pipe is always an open one (_close unwatches first), so the union is the"
            " open pipes: it watches again the ones watched already, and add_reader on a"
            " watched descriptor only sets the same callback again",
        ),
        Equivalent(
            "core/ExceptionReplacer",
            "except OSError as exc:  # a broken pipe ends the stream like EOF does",
            "reading the non-blocking read end of a pipe fails only with EAGAIN (the"
            " BlockingIOError caught above) or EBADF, and a descriptor is closed only by"
            " _close, after which it is never read: no test can make the read fail otherwise",
        ),
        Equivalent(
            "core/ReplaceComparisonOperator_Is_IsNot",
            "if self._process.returncode is None:",
            "the wait for the killed leader at the end of stop: its callers wait for the exit"
            " themselves (supervise awaits group.wait() right after), and everything is"
            " SIGKILLed by then",
            after="victim.kill()  # psutil refuses to signal a pid that was reused",
        ),
        Equivalent(
            "core/AddNot",
            "if self._process.returncode is None:",
            "the wait for the killed leader at the end of stop, as above",
            after="victim.kill()  # psutil refuses to signal a pid that was reused",
        ),
        Equivalent(
            "core/ReplaceComparisonOperator_Eq_Is",
            "if pid == pgid:",
            "`is` on pids (never small cached ints) keeps the leader among the members: the"
            " group it is signalled with is its own, and _descendants drops it again",
        ),
        Equivalent(
            "core/ReplaceFalseWithTrue",
            "return False",
            "psutil's is_running answers False for a gone process and True for a zombie; it"
            " raises nothing, so this is a safety net no test can reach",
            after="except psutil.Error:",
        ),
        Equivalent(
            "core/ReplaceAndWithOr",
            "return self._leader if self._leader is not None and _is_running(self._leader)"
            " else None",
            "it hands out a leader that no longer runs only in the moment between the child"
            " watcher reaping it and the loop seeing the exit, and every use checks"
            " _is_running again (_signal_group, _group_members) or finds no children of it",
        ),
    ),
    "reservations": (
        Equivalent("core/ReplaceBinaryOperator_Mul_Div", "*,", _KEYWORD_ONLY),
        Equivalent(
            "core/ReplaceTrueWithFalse",
            "@dataclass(frozen=True)",
            "nothing hashes or changes a Candidate, a Reserved or a UserLimits once made (mypy"
            " refuses an assignment to a frozen field): frozen=False is the same value",
        ),
        Equivalent(
            "core/ReplaceComparisonOperator_Gt_NotEq",
            "budget = min((n for n in (spec.max_tokens, user.max_tokens) if n > 0), default=0)",
            "neither figure is ever negative (validation refuses a negative max_tokens, a"
            " user's is read as max(..., 0)): != 0 is > 0",
        ),
        Equivalent(
            "core/NumberReplacer",
            "max_tokens=max(int(max_tokens or 0), 0),",
            "a user's max_tokens is read only by the budget, which takes positive figures"
            " alone: a missing or negative one reads as none, whether it becomes 0 or -1",
        ),
        Equivalent(
            "core/ReplaceComparisonOperator_GtE_Eq",
            "return needs.requests >= than.requests and needs.tokens >= than.tokens",
            _STRICTER_COVER,
        ),
        Equivalent(
            "core/ReplaceComparisonOperator_GtE_Is",
            "return needs.requests >= than.requests and needs.tokens >= than.tokens",
            _STRICTER_COVER,
        ),
        Equivalent(
            "core/ReplaceComparisonOperator_GtE_Gt",
            "return needs.requests >= than.requests and needs.tokens >= than.tokens",
            _STRICTER_COVER,
        ),
    ),
    "auth": (
        Equivalent(
            "core/ReplaceTrueWithFalse",
            "@dataclass(frozen=True)",
            "nothing assigns to a Refusal (module constants and policy answers, read once):"
            " frozen only forbids what no code does",
        ),
    ),
    "environment": (
        Equivalent(
            "core/ReplaceBinaryOperator_Mul_Div",
            "home: Path, *, tmpdir: Path | None = None, source: Mapping[str, str] | None = None",
            _KEYWORD_ONLY,
        ),
    ),
    "broker": (
        Equivalent("core/ReplaceBinaryOperator_Mul_Div", "*,", _KEYWORD_ONLY),
        Equivalent(
            "core/ReplaceComparisonOperator_Eq_GtE",
            'running = row["state"] == "working" or (ended_too and row["state"] != "submitted")',
            "no task state sorts after 'working' (submitted, input_required, completed, failed,"
            " canceled, rejected): >= is ==",
        ),
        Equivalent(
            "core/ReplaceComparisonOperator_NotEq_Lt",
            'running = row["state"] == "working" or (ended_too and row["state"] != "submitted")',
            "the states it compares (all but working) other than submitted sort before it"
            " (input_required, completed, failed, canceled, rejected): < 'submitted' is != here",
        ),
    ),
    "forecast": (
        Equivalent("core/ReplaceBinaryOperator_Mul_Div", "*,", _KEYWORD_ONLY),
        Equivalent(
            "core/ReplaceBinaryOperator_Mul_Div",
            "self, *, user: str, model: str, agent_mode: str, prompt_chars: int",
            _KEYWORD_ONLY,
        ),
        Equivalent(
            "core/ReplaceBinaryOperator_Add_FloorDiv",
            "for x2, y2 in points[i + 1 :]",
            "i // 1 is i: the one pair more is each point with itself, which adds no slope (its"
            " prompts differ by 0, less than SLOPE_SPREAD of them: plain-rule tokens are at"
            " least 1)",
        ),
        Equivalent(
            "core/NumberReplacer",
            'forecast: Forecast, limit: int | None, *, user: str = "", spec_max_tokens: int = 0',
            "a limit is None or positive (the key reserver passes the least positive figure, or"
            " None), so it never equals a default of -1; this entry also matches 1, which the"
            " test of a user's limit of 1 kills",
        ),
        Equivalent(
            "core/ReplaceBinaryOperator_Add_Pow", "for x2, y2 in points[i + 1 :]", _SELF_PAIR
        ),
        Equivalent(
            "core/ReplaceBinaryOperator_Add_Mul", "for x2, y2 in points[i + 1 :]", _SELF_PAIR
        ),
        Equivalent(
            "core/ReplaceBinaryOperator_Add_BitOr",
            "for x2, y2 in points[i + 1 :]",
            "i | 1 is i + 1 for an even i and i for an odd one, where the one pair more is the"
            " point with itself, which adds no slope (its prompts differ by 0, less than"
            " SLOPE_SPREAD of them: plain-rule tokens are at least 1)",
        ),
        Equivalent(
            "core/ReplaceTrueWithFalse",
            "@dataclass(frozen=True)",
            "nothing assigns to a Forecast, a _Sample or a _History after it is made, and none"
            " is hashed (a Forecast is a dict value in the key reserver, a _History a cache"
            " value); a _Group is a dict key, so frozen=False there is killed",
        ),
        Equivalent(
            "core/NumberReplacer",
            'requests=max(1, row["actual_requests"] or 0),  # NULL: an older row',
            "`or 0` becomes `or 1` or `or -1` inside max(1, ...): a NULL still counts 1"
            " request; this entry also matches the 1 of max(1, ...), which the older rows' test"
            " kills (0: a division by zero, 2: two requests)",
        ),
        Equivalent(
            "core/ReplaceComparisonOperator_Gt_GtE",
            "if self._cache_seconds > 0:",
            _ZERO_CACHE,
        ),
        Equivalent(
            "core/ReplaceComparisonOperator_Gt_NotEq",
            "if self._cache_seconds > 0:",
            "cache_seconds is never negative (the constructor refuses it): != 0 is > 0",
        ),
        Equivalent(
            "core/NumberReplacer",
            "if self._cache_seconds > 0:",
            f"> -1 is >= 0: {_ZERO_CACHE}; this entry also matches > 1, which the test of a"
            " half-second cache kills",
        ),
        Equivalent(
            "core/NumberReplacer",
            "MAX_CACHED_GROUPS = 4096",
            "the bound is how much memory the cache may hold: one group more or less than"
            " 4096 changes no forecast, and the pruning it starts is tested with the bound"
            " patched to 6 and to 300",
        ),
    ),
    "gemini_errors": (
        Equivalent(
            "core/ReplaceComparisonOperator_Eq_LtE",
            'return value / 1000 if match[2] == "ms" else value',
            'the regex captures only "ms" or "s", and "s" <= "ms" is false as "s" == "ms" is',
        ),
        Equivalent(
            "core/ReplaceTrueWithFalse",
            "@dataclass(frozen=True)",
            "nothing hashes a GoogleError or changes one after parse_error_body made it (mypy"
            " refuses an assignment to a frozen field): frozen=False is the same error",
        ),
    ),
}
