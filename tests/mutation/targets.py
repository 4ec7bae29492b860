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


# The database tests run on the embedded server only: one server is enough to judge a mutant.
EMBEDDED_ONLY = ("-k", "embedded")

TARGETS: dict[str, Target] = {
    "placement": Target("src/agentmesh/scheduler/placement.py", ("tests/unit/test_placement.py",)),
    "gemini_errors": Target(
        "src/agentmesh/node/executors/gemini_errors.py", ("tests/unit/test_gemini_errors.py",)
    ),
    "environment": Target("src/agentmesh/node/environment.py", ("tests/unit/test_environment.py",)),
    "auth": Target("src/agentmesh/rpc/auth.py", ("tests/unit/test_auth.py",)),
    "policy": Target(
        "src/agentmesh/node/permissions/policy.py", ("tests/node/test_shell_permissions.py",)
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
        ("tests/store", *EMBEDDED_ONLY),
        note="needs PostgreSQL (the embedded server); its SQL lives in queries.py as strings,"
        " which the tool does not mutate: the store tests judge the SQL through the store",
    ),
    "process": Target(
        "src/agentmesh/node/process.py",
        (
            "tests/node/test_cancel_stubborn.py",
            "tests/node/test_node.py",
            "-k",
            "cancel or dropped or stubborn or output or stream",
        ),
    ),
    "dispatch": Target(
        "src/agentmesh/scheduler/dispatch.py",
        (
            "tests/scheduler/test_scheduler.py",
            "tests/scheduler/test_gemini_dispatch.py",
            *EMBEDDED_ONLY,
        ),
        note="slow: every mutant runs a scheduler and nodes",
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


EQUIVALENT: dict[str, tuple[Equivalent, ...]] = {
    "auth": (
        Equivalent(
            "core/AddNot",
            "if handler.response_streaming:",
            "either refusal handler aborts with UNAUTHENTICATED before it answers anything, so"
            " the caller of a streaming or a unary RPC sees the same refusal",
        ),
    ),
    "gemini_errors": (
        Equivalent(
            "core/ReplaceComparisonOperator_Eq_LtE",
            'return value / 1000 if match[2] == "ms" else value',
            'the regex captures only "ms" or "s", and "s" <= "ms" is false as "s" == "ms" is',
        ),
    ),
}
