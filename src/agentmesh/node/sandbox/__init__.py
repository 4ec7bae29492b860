"""The OS sandbox every `shell` task and every Gemini CLI run starts in.

The permission checker (agentmesh.node.permissions) explains a refusal before anything
runs; the kernel is what holds the line. A sandboxed run (see `bubblewrap.py`):
- sees the host read-only, with the node's home, data directory, key and env files hidden;
  writes only its own working directory and a private /tmp;
- has its own pid, ipc and uts namespaces (no view of other processes), no capabilities,
  and runs as an unprivileged uid (nobody) when the node runs as root;
- in weak mode can execute only the allowlist's programs (Landlock's execute right, see
  `landlock_exec.py`), whatever wrapper the parser missed; in superuser mode cannot execute
  the denylist's programs by any path (they are masked, see `programs.py`);
- has the network its mode's configuration gives (`permissions.<mode>.network`).

`node.sandbox` picks one: `auto` (bubblewrap where it works, else the node refuses shell and
gemini tasks and says why), `bubblewrap` (the node does not start without it) or `none`
(explicitly unsandboxed: the card and every task's trace say so).
"""

from __future__ import annotations

from agentmesh.node.sandbox.model import Confinement, Launch, Sandbox, SandboxUnavailable
from agentmesh.node.sandbox.setup import choose_sandbox

__all__ = ["Confinement", "Launch", "Sandbox", "SandboxUnavailable", "choose_sandbox"]
