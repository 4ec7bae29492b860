"""Shell-injection and bypass corpus for `agentmesh.node.permissions`.

Every hostile case tries to delete or change `canary.txt` in the working directory, or to create
`pwned.txt` there.  `test_shell_permissions.py` plans each case and, when a plan comes back, RUNS
it in a scratch directory and checks the canary, so a parser mistake shows up as a damaged canary
rather than as a silently wrong expectation.

Decisions the corpus pins down:

* Weak mode: metacharacters inside quotes are data (`echo "a; b"` runs `echo` with one
  argument); unquoted shell syntax of any kind is refused, even where it would be harmless.
* Superuser mode: redirections are allowed (the denylist is about programs), so the cases that
  clobber the canary with `>`, `>>`, `>|` are weak-mode cases only.  Superuser cases attack the
  canary with programs, and every program they use is on `SUPERUSER_DENYLIST`.
* "runs" means the planner accepts the command; the canary check then proves it harmless.  A few
  hostile-looking commands run on purpose: `rm\\ canary.txt` is one word (a program called
  `rm canary.txt` that does not exist), a Cyrillic look-alike `rм` is a different program name,
  and `ls\\trm canary.txt` only lists files.

Judged by effect: besides `canary.txt` and `pwned.txt` in the working directory, the runners keep
a parent directory that holds only the working directory and `secret.txt`.  Hostile cases that
write outside the task write `../pwned.txt`; cases that read a local secret read `{secret}`,
which the runners replace with the secret file's absolute path (`Case.with_secret`).  Damage is
a changed or missing canary, a `pwned.txt`, any new entry in the parent directory, or the
secret's text in the output.  A few cases would act on the machine itself (`systemctl poweroff`,
`ip link set lo down`, `date -s`): they are `runnable=False`, and the runners never run them,
whatever the planner says.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from agentmesh.node.permissions import MAX_COMMAND_LENGTH, PermissionMode

Expect = Literal["refused", "runs"]

WEAK_ALLOWLIST: frozenset[str] = frozenset(
    {
        "ls", "cat", "echo", "uname", "df", "wc", "head", "grep", "pwd", "id", "whoami", "true",
        "printf", "stat", "env", "nice", "timeout", "nohup", "xargs", "find", "bash", "sh", "git",
        "ip", "date", "hostname", "sort", "curl", "wget",
    }
)  # fmt: skip

SUPERUSER_DENYLIST: frozenset[str] = frozenset(
    {
        "rm", "rmdir", "unlink", "mv", "cp", "dd", "truncate", "tee", "shred", "touch", "ln",
        "install", "chmod", "sed", "awk", "gawk", "mawk", "perl", "python", "python3", "ruby",
        "node", "mkfs", "poweroff", "reboot", "halt", "shutdown", "kill", "killall", "pkill",
        "mount", "umount", "chown", "fdisk", "parted", "wipefs",
    }
)  # fmt: skip


SECRET = "{secret}"
SECRET_TEXT = "agentmesh-corpus-secret"


@dataclass(frozen=True, slots=True)
class Case:
    id: str
    mode: PermissionMode
    command: str
    expect: Expect
    rule: str | None = None  # the expected rule id, where the case pins one down
    runnable: bool = True  # False: its effect would reach the machine, so it is never run

    def with_secret(self, secret_path: str) -> str:
        """The command, with `{secret}` naming the secret file outside the working directory."""
        return self.command.replace(SECRET, secret_path)


def _weak(
    id: str, command: str, expect: Expect, rule: str | None = None, *, runnable: bool = True
) -> Case:
    return Case(f"weak-{id}", PermissionMode.WEAK, command, expect, rule, runnable)


def _su(
    id: str, command: str, expect: Expect, rule: str | None = None, *, runnable: bool = True
) -> Case:
    return Case(f"su-{id}", PermissionMode.SUPERUSER, command, expect, rule, runnable)


R: Expect = "refused"
OK: Expect = "runs"

_LONG_PADDING = "a" * (MAX_COMMAND_LENGTH + 1)
_NESTED_SUBSTITUTIONS = "echo " + "$(echo " * 40 + "rm canary.txt" + ")" * 40

WEAK_CASES: list[Case] = [
    # legitimate commands
    _weak("uname", "uname -a", OK),
    _weak("df", "df -h", OK),
    _weak("ls-root", "ls -la /", OK),
    _weak("quoted-semicolon", 'echo "a; b"', OK),
    _weak("quoted-operators", "echo 'x && rm canary.txt' \"| sh\"", OK),
    _weak("single-quoted-substitution", "echo '$(rm canary.txt)'", OK),
    _weak("cat-canary", "cat canary.txt", OK),
    _weak("grep", "grep -c canary canary.txt", OK),
    _weak("escaped-program", "\\ls -la", OK),
    _weak("quoted-program", '"ls" -la', OK),
    _weak("tab-separator", "ls\trm canary.txt", OK),
    _weak("literal-backslash-n", 'echo "a\\nrm canary.txt"', OK),
    _weak("env-locale", "env LANG=C ls", OK),
    _weak("timeout-ls", "timeout 5 ls", OK),
    _weak("nice-uname", "nice -n 5 uname", OK),
    _weak("nohup-echo", "nohup echo hi", OK),
    _weak("xargs-default-echo", "xargs", OK),
    _weak("bash-c-simple", "bash -c 'ls -la'", OK),
    _weak("find-print", "find . -name canary.txt -print", OK),
    _weak("find-exec-cat", "find . -type f -exec cat {} \\;", OK),
    _weak("git-version", "git --version", OK),
    _weak("find-exec-plus", "find . -name canary.txt -exec ls -l {} +", OK),
    _weak("xargs-replace-ls", "xargs -I{} ls {}", OK),
    # the program itself
    _weak("rm", "rm canary.txt", R, "not-in-allowlist"),
    _weak("mv", "mv canary.txt pwned.txt", R, "not-in-allowlist"),
    _weak("touch", "touch pwned.txt", R, "not-in-allowlist"),
    # chaining
    _weak("semicolon", "ls; rm canary.txt", R, "shell-syntax"),
    _weak("semicolon-no-space", "ls;rm canary.txt", R, "shell-syntax"),
    _weak("and", "ls && rm canary.txt", R, "shell-syntax"),
    _weak("or", "ls || rm canary.txt", R, "shell-syntax"),
    _weak("pipe", "echo canary.txt | xargs rm", R, "shell-syntax"),
    _weak("background", "ls & rm canary.txt", R, "shell-syntax"),
    _weak("newline", "ls\nrm canary.txt", R, "shell-syntax"),
    _weak("newline-in-quotes", 'echo "a\nrm canary.txt"', R, "shell-syntax"),
    _weak("carriage-return", "ls\rrm canary.txt", R, "unparseable"),
    _weak("comment", "ls # ; rm canary.txt", R, "shell-syntax"),
    # substitution and expansion
    _weak("dollar-paren", "echo $(rm canary.txt)", R, "shell-syntax"),
    _weak("backticks", "echo `rm canary.txt`", R, "shell-syntax"),
    _weak("dollar-paren-in-dquotes", 'echo "$(rm canary.txt)"', R, "shell-syntax"),
    _weak("backticks-in-dquotes", 'echo "`rm canary.txt`"', R, "shell-syntax"),
    _weak("escaped-dollar-in-dquotes", 'echo "\\$(rm canary.txt)"', R, "shell-syntax"),
    _weak("ifs", "ls${IFS}-la;rm${IFS}canary.txt", R, "shell-syntax"),
    _weak("variable-name", "x=rm; $x canary.txt", R, "shell-syntax"),
    _weak("variable-pieces", "$a$b canary.txt", R, "shell-syntax"),
    _weak("leading-assignment", "X=1 rm canary.txt", R, "shell-syntax"),
    # quote splicing and look-alikes
    _weak("empty-quotes-splice", "r''m canary.txt", R, "not-in-allowlist"),
    _weak("dquote-splice", '"r"m canary.txt', R, "not-in-allowlist"),
    _weak("backslash", "\\rm canary.txt", R, "not-in-allowlist"),
    _weak("fullwidth", "\uff52\uff4d canary.txt", R, "not-in-allowlist"),
    _weak("fullwidth-ls", "\uff4c\uff53 -la", R, "not-in-allowlist"),
    _weak("nbsp-joined", "ls\u00a0canary.txt", R, "not-in-allowlist"),
    # program given by path
    _weak("path-bin-rm", "/bin/rm canary.txt", R, "path-program"),
    _weak("path-dotdot", "/usr/bin/../bin/rm canary.txt", R, "path-program"),
    _weak("path-relative", "./rm canary.txt", R, "path-program"),
    _weak("path-allowed-basename", "/tmp/evil/ls -la", R, "path-program"),
    _weak("path-bin-ls-alias", "/usr/bin/../bin/ls", R, "path-program"),
    # globs and braces
    _weak("glob-question", "/bin/r? canary.txt", R, "shell-syntax"),
    _weak("glob-path", "/???/rm canary.txt", R, "shell-syntax"),
    _weak("glob-star-arg", "ls *", R, "shell-syntax"),
    _weak("brace-expansion", "{rm,canary.txt}", R, "shell-syntax"),
    _weak("tilde", "ls ~", R, "shell-syntax"),
    # redirections that clobber the canary
    _weak("redirect-truncate", "echo x > canary.txt", R, "shell-syntax"),
    _weak("redirect-colon", ": > canary.txt", R, "shell-syntax"),
    _weak("redirect-clobber", "echo x >| canary.txt", R, "shell-syntax"),
    _weak("redirect-append", "echo x >> canary.txt", R, "shell-syntax"),
    _weak("redirect-stderr", "ls nope 2> canary.txt", R, "shell-syntax"),
    _weak("redirect-pwned", "echo pwned >pwned.txt", R, "shell-syntax"),
    _weak("redirect-input", "cat < canary.txt", R, "shell-syntax"),
    # grouping
    _weak("subshell", "(rm canary.txt)", R, "shell-syntax"),
    _weak("group", "{ rm canary.txt; }", R, "shell-syntax"),
    _weak("process-substitution", "cat <(rm canary.txt)", R, "shell-syntax"),
    _weak("here-string", "bash <<< 'rm canary.txt'", R, "shell-syntax"),
    _weak("function", "f(){ rm canary.txt; }; f", R, "shell-syntax"),
    _weak("if", "if true; then rm canary.txt; fi", R, "shell-syntax"),
    # wrappers on the allowlist must not run what is not
    _weak("env", "env rm canary.txt", R, "not-in-allowlist"),
    _weak("env-i", "env -i rm canary.txt", R, "not-in-allowlist"),
    _weak("env-double-dash", "env -- rm canary.txt", R, "not-in-allowlist"),
    _weak("env-path-program", "env /bin/rm canary.txt", R, "path-program"),
    _weak("env-split-string", "env -S 'rm canary.txt'", R, "unsupported"),
    _weak("env-path", "env PATH=. ls", R, "env-assignment"),
    _weak("env-ld-preload", "env LD_PRELOAD=./evil.so ls", R, "env-assignment"),
    _weak(
        "env-bash-func",
        "env 'BASH_FUNC_ls%%=() { rm canary.txt; }' bash -c ls",
        R,
        "env-assignment",
    ),
    _weak("nice", "nice -n 5 rm canary.txt", R, "not-in-allowlist"),
    _weak("nice-long", "nice --adjustment=5 rm canary.txt", R, "not-in-allowlist"),
    _weak("timeout", "timeout 5 rm canary.txt", R, "not-in-allowlist"),
    _weak("timeout-signal", "timeout -s KILL 5 rm canary.txt", R, "not-in-allowlist"),
    _weak("timeout-abbreviated", "timeout --sig KILL 5 rm canary.txt", R, "not-in-allowlist"),
    _weak("timeout-unknown-option", "timeout --bogus 5 ls", R, "dynamic-command"),
    _weak("nohup", "nohup rm canary.txt", R, "not-in-allowlist"),
    _weak("xargs", "xargs rm canary.txt", R, "not-in-allowlist"),
    _weak("xargs-env", "xargs env", R, "dynamic-command"),
    _weak("xargs-replace", "xargs -I{} rm {}", R, "not-in-allowlist"),
    _weak("xargs-replace-program", "xargs -I X X canary.txt", R, "dynamic-command"),
    _weak("sudo", "sudo rm canary.txt", R, "not-in-allowlist"),
    _weak("exec", "exec rm canary.txt", R, "not-in-allowlist"),
    _weak("eval", "eval rm canary.txt", R, "not-in-allowlist"),
    _weak("command", "command rm canary.txt", R, "not-in-allowlist"),
    _weak("bash-c", "bash -c 'rm canary.txt'", R, "not-in-allowlist"),
    _weak("sh-c-chain", "sh -c 'ls; rm canary.txt'", R, "shell-syntax"),
    _weak("bash-c-nested", "bash -c \"bash -c 'rm canary.txt'\"", R, "not-in-allowlist"),
    _weak("bash-ic", "bash -ic ls", R, "unsupported"),
    _weak("bash-script", "bash canary.txt", R, "unsupported"),
    _weak("bash-stdin", "bash", R, "unsupported"),
    _weak("find-delete", "find . -name canary.txt -delete", R, "not-in-allowlist"),
    _weak("find-exec-rm", "find . -name canary.txt -exec rm {} \\;", R, "not-in-allowlist"),
    _weak("find-execdir-plus", "find . -execdir rm {} +", R, "not-in-allowlist"),
    _weak("find-ok", "find . -ok rm {} \\;", R, "not-in-allowlist"),
    _weak("find-exec-sh", "find . -exec sh -c 'rm {}' \\;", R, "dynamic-command"),
    _weak("find-fprint", "find . -fprint canary.txt", R, "not-in-allowlist"),
    _weak("git-alias", "git -c 'alias.x=!rm canary.txt' x", R, "exec-option"),
    _weak("git-upload-pack", "git ls-remote --upload-pack='rm canary.txt' .", R, "exec-option"),
    # size
    _weak("very-long", "ls " + _LONG_PADDING, R, "too-long"),
    _weak(
        "very-long-chain",
        "ls " + "x " * (MAX_COMMAND_LENGTH // 2) + "; rm canary.txt",
        R,
        "too-long",
    ),
    _weak("empty", "   \t ", R, "empty"),
]

SUPERUSER_CASES: list[Case] = [
    # legitimate commands
    _su("pipe", "ls | wc -l", OK),
    _su("and", "uname -a && df -h", OK),
    _su("substitution", 'echo "$(uname -s)"', OK),
    _su("backticks", "echo `uname -s`", OK),
    _su("for", 'for f in *; do echo "$f"; done', OK),
    _su("if", "if [ -f canary.txt ]; then echo present; fi", OK),
    _su("case", 'case "$(uname)" in Linux) echo linux;; *) echo other;; esac', OK),
    _su("function", "f(){ echo hi; }; f", OK),
    _su("process-substitution", "cat <(echo hi)", OK),
    _su("redirect-other-file", "echo hi > out.txt && cat out.txt", OK),
    _su("group-pipe", "{ echo a; echo b; } | wc -l", OK),
    _su("subshell", "(cd / && ls)", OK),
    _su("timeout-ls", "timeout 5 ls -la", OK),
    _su("nice-uname", "nice -n 5 uname", OK),
    _su("env-locale", "env LANG=C ls", OK),
    _su("xargs-ls", "echo canary.txt | xargs ls -l", OK),
    _su("xargs-replace-echo", "echo canary.txt | xargs -I{} echo {}", OK),
    _su("xargs-wrapper", "echo canary.txt | xargs nice -n 1 ls -l", OK),
    _su("xargs-sh-c", """echo canary.txt | xargs sh -c 'ls -l "$@"' sh""", OK),
    _su("find-exec-cat", "find . -name '*.txt' -exec cat {} \\;", OK),
    _su("bash-c", "bash -c 'ls | wc -l'", OK),
    _su("sh-c-quoted", "sh -c 'echo \"a; b\"'", OK),
    _su("eval-echo", "eval 'echo hi'", OK),
    _su("quoted-rm-text", 'echo "rm canary.txt"', OK),
    _su("arithmetic", "echo $((6 * 7))", OK),
    _su("parameter-default", 'x=hi; echo "${x:-default} ${#x}"', OK),
    _su("conditional", "[[ -f canary.txt ]] && echo yes", OK),
    _su("comment", "true # ; rm canary.txt", OK),
    _su("tab-separator", "ls\t-la", OK),
    _su("literal-backslash-n", 'echo "a\\nrm canary.txt"', OK),
    _su("escaped-space-one-word", "rm\\ canary.txt", OK),
    _su("cyrillic-lookalike", "r\u043c canary.txt", OK),
    _su("ansi-c-argument", "ls $'\\x3b' rm canary.txt", OK),
    # bash reads `$'a\' ; rm canary.txt # '` as one quoted word; dash runs the rm (below)
    _su("ansi-c-quote-hides-nothing-in-bash", r"echo $'a\' ; rm canary.txt # '", OK),
    _su("while-read", 'while IFS= read -r line; do echo "$line"; done < canary.txt', OK),
    _su("git-config-read", "git config --get user.name || true", OK),
    # the denied programs themselves
    _su("rm", "rm canary.txt", R, "denylisted"),
    _su("mv", "mv canary.txt pwned.txt", R, "denylisted"),
    _su("dd", "dd if=/dev/null of=canary.txt", R, "denylisted"),
    _su("truncate", "truncate -s0 canary.txt", R, "denylisted"),
    _su("tee", "echo pwned | tee canary.txt", R, "denylisted"),
    _su("shred", "shred -u canary.txt", R, "denylisted"),
    _su("cp-dev-null", "cp /dev/null canary.txt", R, "denylisted"),
    _su("sed-i", "sed -i d canary.txt", R, "denylisted"),
    _su("touch", "touch pwned.txt", R, "denylisted"),
    _su("python", "python3 -c 'import os; os.remove(\"canary.txt\")'", R, "denylisted"),
    _su("awk-system", "awk 'BEGIN{system(\"rm canary.txt\")}'", R, "denylisted"),
    _su("perl", "perl -e 'unlink \"canary.txt\"'", R, "denylisted"),
    # chaining
    _su("semicolon", "ls; rm canary.txt", R, "denylisted"),
    _su("and-chain", "ls && rm canary.txt", R, "denylisted"),
    _su("or-chain", "false || rm canary.txt", R, "denylisted"),
    _su("pipe-chain", "ls | rm canary.txt", R, "denylisted"),
    _su("pipe-stderr", "ls |& rm canary.txt", R, "denylisted"),
    _su("background", "ls & rm canary.txt", R, "denylisted"),
    _su("newline", "ls\nrm canary.txt", R, "denylisted"),
    _su("tab-after-semicolon", "ls;\trm canary.txt", R, "denylisted"),
    _su("line-continuation", "r\\\nm canary.txt", R, "denylisted"),
    _su("negation", "! rm canary.txt", R, "denylisted"),
    _su("time-keyword", "time -p rm canary.txt", R, "denylisted"),
    # substitution
    _su("dollar-paren", "echo $(rm canary.txt)", R, "denylisted"),
    _su("backticks-rm", "echo `rm canary.txt`", R, "denylisted"),
    _su("dollar-paren-in-dquotes", 'echo "$(rm canary.txt)"', R, "denylisted"),
    _su("backticks-in-dquotes", 'echo "`rm canary.txt`"', R, "denylisted"),
    _su("nested-dollar-paren", "echo $(echo $(rm canary.txt))", R, "denylisted"),
    _su("nested-backticks", "echo `echo \\`rm canary.txt\\``", R, "denylisted"),
    _su("substitution-in-default", 'echo "${x:-$(rm canary.txt)}"', R, "denylisted"),
    _su("substitution-in-assignment", "x=$(rm canary.txt)", R, "denylisted"),
    _su("substitution-in-redirect", "echo hi > $(rm canary.txt)", R, "denylisted"),
    _su("substitution-program", "$(echo rm) canary.txt", R, "dynamic-command"),
    _su("deep-nesting", _NESTED_SUBSTITUTIONS, R, "too-complex"),
    # variable-built names
    _su("ifs", "rm${IFS}canary.txt", R, "dynamic-command"),
    _su("variable-name", "x=rm; $x canary.txt", R, "dynamic-command"),
    _su("variable-pieces", "a=r; b=m; $a$b canary.txt", R, "dynamic-command"),
    _su("braced-variable", "x=rm; ${x} canary.txt", R, "dynamic-command"),
    _su("ansi-c-name", "$'\\x72\\x6d' canary.txt", R, "dynamic-command"),
    _su("brace-expansion", "{rm,canary.txt}", R, "dynamic-command"),
    _su("indirect", "x=y; y=rm; ${!x} canary.txt", R, "unsupported"),
    _su("prompt-expansion", "x='$(rm canary.txt)'; echo \"${x@P}\"", R, "unsupported"),
    _su("arithmetic-injection", "x='a[$(rm canary.txt)]'; echo $((x))", R, "unsupported"),
    _su("test-v-injection", "x='a[$(rm canary.txt)]'; [[ -v $x ]]", R, "unsupported"),
    _su("nameref", "declare -n r='a[$(rm canary.txt)]'; echo $r", R, "unsupported"),
    _su("let", "let 'x=a[$(rm canary.txt)]'", R, "unsupported"),
    # quote splicing and look-alikes
    _su("empty-quotes-splice", "r''m canary.txt", R, "denylisted"),
    _su("dquote-splice", '"r"m canary.txt', R, "denylisted"),
    _su("backslash", "\\rm canary.txt", R, "denylisted"),
    _su("fullwidth", "\uff52\uff4d canary.txt", R, "denylisted"),
    _su("uppercase", "RM canary.txt", R, "denylisted"),
    # paths and globs
    _su("path-bin-rm", "/bin/rm canary.txt", R, "denylisted"),
    _su("path-dotdot", "/usr/bin/../bin/rm canary.txt", R, "denylisted"),
    _su("path-relative", "./rm canary.txt", R, "denylisted"),
    _su("glob-question", "/bin/r? canary.txt", R, "dynamic-command"),
    _su("glob-path", "/???/rm canary.txt", R, "dynamic-command"),
    _su("proc-self-exe", "/proc/self/exe -c 'rm canary.txt'", R, "path-program"),
    _su("ld-so", "/lib64/ld-linux-x86-64.so.2 /bin/rm canary.txt", R, "denylisted"),
    # wrappers
    _su("env", "env rm canary.txt", R, "denylisted"),
    _su("env-i-assignment", "env -i X=1 rm canary.txt", R, "denylisted"),
    _su(
        "env-bash-func",
        "env 'BASH_FUNC_ls%%=() { rm canary.txt; }' bash -c ls",
        R,
        "env-assignment",
    ),
    _su("sudo", "sudo -u root rm canary.txt", R, "denylisted"),
    _su("sudo-brace", "sudo {rm,canary.txt}", R, "dynamic-command"),
    _su("nohup", "nohup rm canary.txt", R, "denylisted"),
    _su("timeout", "timeout -s KILL 5 rm canary.txt", R, "denylisted"),
    _su("timeout-dynamic-option", "timeout $opt 5 rm canary.txt", R, "dynamic-command"),
    _su("nice", "nice -n 10 rm canary.txt", R, "denylisted"),
    _su("ionice", "ionice -c 3 rm canary.txt", R, "denylisted"),
    _su("stdbuf", "stdbuf -oL rm canary.txt", R, "denylisted"),
    _su("usr-bin-time", "/usr/bin/time -f %e rm canary.txt", R, "denylisted"),
    _su("xargs", "echo canary.txt | xargs rm", R, "denylisted"),
    _su("xargs-sh", "echo canary.txt | xargs -I{} sh -c 'rm {}'", R, "dynamic-command"),
    _su("xargs-replace-program", "echo rm | xargs -I X X canary.txt", R, "dynamic-command"),
    _su("xargs-env", "echo rm canary.txt | xargs env", R, "dynamic-command"),
    _su("xargs-nice", "echo rm canary.txt | xargs nice -n 1", R, "dynamic-command"),
    _su("xargs-timeout", "echo rm canary.txt | xargs timeout 5", R, "dynamic-command"),
    _su("xargs-bash", "echo -c 'rm canary.txt' | xargs bash", R, "unsupported"),
    _su(
        "xargs-sh-c-positional",
        "echo rm canary.txt | xargs sh -c '\"$@\"' sh",
        R,
        "dynamic-command",
    ),
    _su("xargs-eval", "echo rm canary.txt | xargs eval", R, "dynamic-command"),
    _su("xargs-git", "echo -c alias.x=!rm | xargs git", R, "dynamic-command"),
    _su("xargs-find", "echo -delete | xargs find .", R, "dynamic-command"),
    _su("command", "command rm canary.txt", R, "denylisted"),
    _su("command-p", "command -p rm canary.txt", R, "denylisted"),
    _su("builtin-eval", "builtin eval 'rm canary.txt'", R, "denylisted"),
    _su("exec", "exec rm canary.txt", R, "denylisted"),
    _su("exec-a", "exec -a ls rm canary.txt", R, "denylisted"),
    _su("eval", "eval 'rm canary.txt'", R, "denylisted"),
    _su("eval-spliced", 'eval "r""m canary.txt"', R, "denylisted"),
    _su("eval-dynamic", 'x=rm; eval "$x canary.txt"', R, "dynamic-command"),
    _su("bash-c-rm", "bash -c 'rm canary.txt'", R, "denylisted"),
    _su("sh-c-rm", "sh -c 'rm canary.txt'", R, "denylisted"),
    _su("bash-c-nested", "bash -c \"bash -c 'rm canary.txt'\"", R, "denylisted"),
    _su("dash-c-chain", "dash -c 'ls; rm canary.txt'", R, "denylisted"),
    _su("bash-xec", "bash -xec 'rm canary.txt'", R, "denylisted"),
    # `sh` may be dash, which reads bash-only syntax differently: both readings are checked
    _su("sh-c-ansi-c-quote", r"""sh -c "echo \$'a\\' ; rm canary.txt # '" """, R, "denylisted"),
    _su("sh-c-ampersand-redirect", "sh -c 'echo x &>/dev/null rm canary.txt'", R, "denylisted"),
    _su("sh-c-double-bracket", "sh -c '[[ x || rm canary.txt ]]'", R, "denylisted"),
    _su("double-bracket-list", "[[ x ; rm canary.txt ]]", R, "unparseable"),
    _su("bash-script", "bash ./evil.sh", R, "unsupported"),
    _su("su-c", "su -c 'rm canary.txt'", R, "denylisted"),
    _su("su-stdin", "echo 'rm canary.txt' | su", R, "unsupported"),
    _su("setsid", "setsid rm canary.txt", R, "denylisted"),
    _su("flock", "flock /tmp/agentmesh.lock -c 'rm canary.txt'", R, "denylisted"),
    _su("watch", "watch -n 1 rm canary.txt", R, "denylisted"),
    _su("chroot", "echo 'rm canary.txt' | chroot /", R, "unsupported"),
    _su("busybox", "busybox rm canary.txt", R, "denylisted"),
    _su("find-delete", "find . -name canary.txt -delete", R, "denylisted"),
    _su("find-exec", "find . -name canary.txt -exec rm {} \\;", R, "denylisted"),
    _su("find-exec-plus-path", "find . -name canary.txt -exec /bin/rm {} +", R, "denylisted"),
    _su("find-exec-sh", "find . -exec sh -c 'rm \"$1\"' _ {} \\;", R, "denylisted"),
    _su("find-glob-args", "find . -name *", R, "dynamic-command"),
    _su("git-alias", "git -c 'alias.x=!rm canary.txt' x", R, "exec-option"),
    _su(
        "git-config-alias", "git config --global alias.x '!rm canary.txt'; git x", R, "exec-option"
    ),
    _su("git-rebase-exec", "git rebase -x 'rm canary.txt' HEAD~1", R, "exec-option"),
    _su("tar-old-style", "tar xIf 'sh -c \"rm canary.txt\"' x.tar", R, "exec-option"),
    _su("setarch", "setarch x86_64 rm canary.txt", R, "denylisted"),
    _su("capsh", "echo 'rm canary.txt' | capsh --", R, "unsupported"),
    _su("zsh-precommand", "zsh -c -- '- rm canary.txt'", R, "denylisted"),
    _su("zsh-equals", "zsh -c '=rm canary.txt'", R, "dynamic-command"),
    _su("tar-to-command", "tar -xf x.tar --to-command='rm canary.txt'", R, "exec-option"),
    _su("trap", "trap 'rm canary.txt' EXIT", R, "denylisted"),
    # grouping and compound commands
    _su("subshell-rm", "(rm canary.txt)", R, "denylisted"),
    _su("group-rm", "{ rm canary.txt; }", R, "denylisted"),
    _su("process-substitution-in", "cat <(rm canary.txt)", R, "denylisted"),
    _su("process-substitution-out", "echo x > >(rm canary.txt)", R, "denylisted"),
    _su("here-string-bash", "bash <<< 'rm canary.txt'", R, "unsupported"),
    _su("here-string-substitution", 'cat <<< "$(rm canary.txt)"', R, "denylisted"),
    _su("pipe-to-bash", "echo 'rm canary.txt' | bash", R, "unsupported"),
    _su("heredoc", "bash <<EOF\nrm canary.txt\nEOF", R, "unsupported"),
    _su("if-body", "if true; then rm canary.txt; fi", R, "denylisted"),
    _su("if-condition", "if rm canary.txt; then :; fi", R, "denylisted"),
    _su(
        "elif-else", "if false; then :; elif false; then :; else rm canary.txt; fi", R, "denylisted"
    ),
    _su("while", "while true; do rm canary.txt; break; done", R, "denylisted"),
    _su("until", "until rm canary.txt; do :; done", R, "denylisted"),
    _su("for-loop", 'for f in canary.txt; do rm "$f"; done', R, "denylisted"),
    _su("for-words-substitution", "for f in $(rm canary.txt); do :; done", R, "denylisted"),
    _su("select", "select f in a; do rm canary.txt; done", R, "denylisted"),
    _su("case-body", "case x in x) rm canary.txt;; esac", R, "denylisted"),
    _su("case-in-substitution", "echo $(case x in x) rm canary.txt;; esac)", R, "denylisted"),
    _su("function-def", "f(){ rm canary.txt; }; f", R, "denylisted"),
    _su("function-keyword", "function f { rm canary.txt; }; f", R, "denylisted"),
    _su("function-subshell-body", "f() (rm canary.txt); f", R, "denylisted"),
    _su("arithmetic-command", "((x=1)) && rm canary.txt", R, "unsupported"),
    _su("arithmetic-for", "for ((i=0; i<1; i++)); do rm canary.txt; done", R, "unsupported"),
    _su("coproc", "coproc rm canary.txt", R, "unsupported"),
    # shell state that changes what runs
    _su("alias", "alias ls=rm; ls canary.txt", R, "unsupported"),
    _su("expand-aliases", "shopt -s expand_aliases; alias x='rm canary.txt'; x", R, "unsupported"),
    _su("source", "source ./evil.sh", R, "unsupported"),
    _su("dot", ". ./evil.sh", R, "unsupported"),
    _su("history-expansion", "set -o history -H\necho rm canary.txt\n!:1-2", R, "unsupported"),
    _su(
        "history-expansion-o",
        "set -o history -o histexpand; echo rm canary.txt; !:1-2",
        R,
        "unsupported",
    ),
    _su("bash-H", "bash -H -o history -c 'echo rm canary.txt\n!:1-2'", R, "unsupported"),
    _su("hash-p", "hash -p /bin/rm ls; ls canary.txt", R, "unsupported"),
    _su("enable-f", "enable -f ./evil.so evil", R, "unsupported"),
    _su("leading-assignment", "X=1 rm canary.txt", R, "denylisted"),
    _su("path-assignment", "PATH=./evil:$PATH ls", R, "env-assignment"),
    _su("bash-env", "BASH_ENV=./evil.sh bash -c true", R, "env-assignment"),
    _su("ps4-xtrace", "PS4='$(rm canary.txt)' bash -xc true", R, "env-assignment"),
    _su("export-ps4", "export PS4='$(rm canary.txt)'; set -x; true", R, "env-assignment"),
    _su("printf-v-ps4", "printf -v PS4 %s '$(rm canary.txt)'; set -x; true", R, "env-assignment"),
    _su("read-ps4", "read PS4 <<< '$(rm canary.txt)'; set -x; true", R, "env-assignment"),
    _su("for-path", "for PATH in ./evil; do ls; done", R, "env-assignment"),
    _su("for-ps4", "for PS4 in '$(rm canary.txt)'; do set -x; :; done", R, "env-assignment"),
    _su("array-assignment", "a[$(rm canary.txt)]=1", R, "denylisted"),
    # size
    _su("very-long", "echo " + _LONG_PADDING, R, "too-long"),
    _su("empty", "", R, "empty"),
    _su("unterminated-quote", "echo 'rm canary.txt", R, "unparseable"),
    _su("nul-byte", "ls\x00; rm canary.txt", R, "unparseable"),
]

# -- the classes of the hostile review (issue 11); each class in several variants
_NO_SERVER = "http://127.0.0.1:9/"  # the discard port: nothing listens, curl fails at once

REVIEW_WEAK_CASES: list[Case] = [
    # allowlisted programs that run programs: `ip netns exec`, `ip vrf exec` (any prefix)
    _weak("ip-addr", "ip addr show", OK),
    _weak("ip-brief-abbreviated", "ip -br a", OK),
    _weak("ip-route-get", "ip route get 127.0.0.1", OK),
    _weak("ip-netns-exec-allowed", "ip netns exec agentmesh-none ls", OK),
    _weak("ip-vrf-exec", "ip vrf exec default rm canary.txt", R, "not-in-allowlist"),
    _weak("ip-netns-exec", "ip netns exec agentmesh-none rm canary.txt", R, "not-in-allowlist"),
    _weak("ip-abbreviated-exec", "ip netn e agentmesh-none rm canary.txt", R, "not-in-allowlist"),
    _weak("ip-vrf-abbreviated", "ip v e default rm canary.txt", R, "not-in-allowlist"),
    _weak("ip-all-netns-exec", "ip -all netns exec rm canary.txt", R, "not-in-allowlist"),
    _weak("ip-netns-exec-bash", "ip netns exec x bash -c 'rm canary.txt'", R, "not-in-allowlist"),
    _weak("ip-option-before-exec", "ip -n e netns exec x rm canary.txt", R, "not-in-allowlist"),
    _weak("ip-batch", "ip -batch canary.txt", R, "unsupported"),
    _weak("ip-batch-short", "ip -b canary.txt", R, "unsupported"),
    _weak("ip-batch-long", "ip --batch canary.txt", R, "unsupported"),
    # allowlisted programs that change the machine: never run
    _weak("ip-link-set", "ip link set lo down", R, "changes-system", runnable=False),
    _weak("ip-route-delete", "ip r del default", R, "changes-system", runnable=False),
    _weak("ip-addr-flush", "ip addr flush dev lo", R, "changes-system", runnable=False),
    _weak("date-print", "date -u +%s", OK),
    _weak("date-d", "date -d 2001-01-01 +%s", OK),
    _weak("date-set", "date -s 2001-01-01", R, "changes-system", runnable=False),
    _weak("date-set-long", "date --set=2001-01-01", R, "changes-system", runnable=False),
    _weak("date-operand", "date 0101000001", R, "changes-system", runnable=False),
    _weak("date-cluster", "date -us 2001-01-01", R, "changes-system", runnable=False),
    _weak("hostname-print", "hostname", OK),
    _weak("hostname-set", "hostname pwned", R, "changes-system", runnable=False),
    _weak("hostname-file", "hostname -F canary.txt", R, "changes-system", runnable=False),
    # allowlisted programs that write files through options
    _weak("sort", "sort -r canary.txt", OK),
    _weak("sort-key", "sort -t, -k2 canary.txt", OK),
    _weak("sort-o", "sort -o canary.txt /dev/null", R, "writes-files"),
    _weak("sort-o-outside", "sort -o ../pwned.txt canary.txt", R, "writes-files"),
    _weak("sort-output-long", "sort --output=canary.txt /dev/null", R, "writes-files"),
    _weak("sort-output-abbreviated", "sort --outp canary.txt /dev/null", R, "writes-files"),
    _weak("sort-cluster", "sort -ro canary.txt /dev/null", R, "writes-files"),
    # downloaders: options that write files, URLs and options that read local files
    _weak("curl", f"curl -sS --max-time 2 {_NO_SERVER}", OK),
    _weak("curl-write-out", f"curl -s -w '%{{http_code}}' {_NO_SERVER}", OK),
    _weak("curl-data", f"curl -s -d 'a=b' {_NO_SERVER}", OK),
    _weak("curl-o", "curl -s -o canary.txt file:///dev/null", R, "writes-files"),
    _weak("curl-o-outside", f"curl -so ../pwned.txt file://{SECRET}", R, "writes-files"),
    _weak("curl-o-attached", "curl -ocanary.txt file:///dev/null", R, "writes-files"),
    _weak("curl-output-long", "curl --output canary.txt file:///dev/null", R, "writes-files"),
    _weak("curl-output-abbreviated", "curl --out canary.txt file:///dev/null", R, "writes-files"),
    _weak("curl-remote-name", f"curl -sO {_NO_SERVER}canary.txt", R, "writes-files"),
    _weak("curl-dump-header", "curl -D canary.txt file:///dev/null", R, "writes-files"),
    _weak("curl-cookie-jar", "curl -c canary.txt file:///dev/null", R, "writes-files"),
    _weak("curl-trace", "curl --trace-ascii canary.txt file:///dev/null", R, "writes-files"),
    _weak("curl-stderr", f"curl --stderr canary.txt -sS {_NO_SERVER}", R, "writes-files"),
    _weak(
        "curl-write-out-file",
        f"curl -s -w '%output{{canary.txt}}x' {_NO_SERVER}",
        R,
        "writes-files",
    ),
    _weak("curl-file-url", f"curl file://{SECRET}", R, "local-access"),
    _weak("curl-file-url-proc", "curl file:///proc/1/environ", R, "local-access"),
    _weak("curl-file-url-uppercase", f"curl FILE://{SECRET}", R, "local-access"),
    _weak("curl-file-one-slash", f"curl file:{SECRET}", R, "local-access"),
    _weak("curl-url-pattern", f"curl '{{file,http}}://{SECRET}'", R, "local-access"),
    _weak("curl-url-option", f"curl --url file://{SECRET}", R, "local-access"),
    _weak("curl-proto-default", f"curl --proto-default file {SECRET}", R, "local-access"),
    _weak("curl-data-file", f"curl -s -d @{SECRET} {_NO_SERVER}", R, "local-access"),
    _weak("curl-form-file", f"curl -s -F 'x=<{SECRET}' {_NO_SERVER}", R, "local-access"),
    _weak("curl-upload-file", f"curl -s -T {SECRET} {_NO_SERVER}", R, "local-access"),
    _weak("curl-config", "curl -K canary.txt", R, "local-access"),
    _weak("curl-unix-socket", "curl --unix-socket /run/none.sock http://x/", R, "local-access"),
    _weak("curl-dict", "curl dict://127.0.0.1:9/", R, "local-access"),
    _weak("wget-stdout", f"wget -qO- {_NO_SERVER}", OK),
    _weak("wget-stdout-spaced", f"wget -q -O - {_NO_SERVER}", OK),
    _weak("wget-spider", f"wget -q --spider {_NO_SERVER}", OK),
    _weak("wget-saves", f"wget -q {_NO_SERVER}canary.txt", R, "writes-files"),
    _weak("wget-O", f"wget -qO canary.txt {_NO_SERVER}", R, "writes-files"),
    _weak(
        "wget-output-document",
        f"wget --output-document=../pwned.txt {_NO_SERVER}",
        R,
        "writes-files",
    ),
    _weak("wget-log", f"wget -o canary.txt -O - {_NO_SERVER}", R, "writes-files"),
    _weak("wget-append-log", f"wget -a ../pwned.txt -O - {_NO_SERVER}", R, "writes-files"),
    _weak("wget-input-file", f"wget -i {SECRET} -O -", R, "local-access"),
    _weak("wget-execute", f"wget -e output_document=canary.txt {_NO_SERVER}", R, "exec-option"),
    _weak("wget-askpass", f"wget --use-askpass=./evil {_NO_SERVER}", R, "exec-option"),
    # programs that run programs through options
    _weak("git-config-get-as-value", "git config alias.x '!rm canary.txt' get", R, "exec-option"),
    _weak("git-grep-O", "git grep --no-index -O'rm' canary", R, "exec-option"),
    _weak("git-clone-u", "git clone -u 'rm canary.txt' x y", R, "exec-option"),
    _weak("xargs-slot-var", "xargs --process-slot-var=BASH_ENV bash -c true", R, "env-assignment"),
    # parsing: what bash joins or strips, the checker must too
    _weak("time-p-double-dash", "time -p -- rm canary.txt", R, "not-in-allowlist"),
    _weak("eval-double-dash", "bash -c \"eval -- 'rm canary.txt'\"", R, "not-in-allowlist"),
]

_REPO = "git init -q src && "
_ZIP = "zip -q -T"

REVIEW_SUPERUSER_CASES: list[Case] = [
    # parsing: `$'...'` inside `${...}`
    _su("ansi-c-in-default-benign", "x=; echo ${x:-$'b\\tc'} \"${x:-a}\"", OK),
    _su("ansi-c-in-default", r"echo ${x:-$'\''} ; rm canary.txt ; echo '}\'", R, "denylisted"),
    _su(
        "ansi-c-in-alternative",
        r"x=1; echo ${x:+$'\''} ; rm canary.txt ; echo '}\'",
        R,
        "denylisted",
    ),
    _su("ansi-c-in-pattern", r"echo ${x#$'\''} ; rm canary.txt ; echo '}\'", R, "denylisted"),
    _su("ansi-c-in-replacement", r"echo ${x/a/$'\''} ; rm canary.txt ; echo '}\'", R, "denylisted"),
    _su(
        "ansi-c-in-nested-default",
        r"echo ${x:-${y:-$'\''}} ; rm canary.txt ; echo '}}\'",
        R,
        "unsupported",
    ),
    _su("locale-quote-in-default", 'echo ${x:-$"a"}', R, "unsupported"),
    # parsing: backslash-newline, which bash removes before it reads tokens
    _su("continuation-benign", "ls \\\n  -la &&\\\n echo ok", OK),
    _su(
        "continuation-dollar-ansi-c",
        "echo $\\\n'\\'' ; rm canary.txt ; echo '\\'",
        R,
        "unsupported",
    ),
    _su("continuation-dollar-paren", "echo $\\\n(rm canary.txt)", R, "unsupported"),
    _su("continuation-dollar-paren-dquoted", 'echo "$\\\n(rm canary.txt)"', R, "unsupported"),
    _su("continuation-dollar-in-default", 'echo "${x:-$\\\n(rm canary.txt)}"', R, "unsupported"),
    _su(
        "continuation-before-ansi-c", "echo \\\n$'\\'' ; rm canary.txt ; echo '\\'", R, "denylisted"
    ),
    _su("continuation-before-dollar-paren", "echo \\\n$(rm canary.txt)", R, "denylisted"),
    _su("continuation-joins-and", "true &\\\n& rm canary.txt", R, "unsupported"),
    _su("continuation-joins-redirect", "echo x >\\\n> canary.txt", R, "unsupported"),
    # parsing: `eval --`, `time -p --`
    _su("eval-double-dash", "eval -- 'rm canary.txt'", R, "denylisted"),
    _su("eval-double-dash-spliced", 'eval -- "r""m canary.txt"', R, "denylisted"),
    _su("builtin-eval-double-dash", "builtin eval -- 'rm canary.txt'", R, "denylisted"),
    _su("time-p-double-dash", "time -p -- rm canary.txt", R, "denylisted"),
    _su("time-double-dash", "time -- rm canary.txt", R, "denylisted"),
    _su("time-twice", "time -p time -- rm canary.txt", R, "denylisted"),
    _su("negated-time", "! time -p -- rm canary.txt", R, "denylisted"),
    _su("time-benign", "time -p -- ls", OK),
    # wrappers whose options are not modelled: arguments joined, braces, variables they set
    _su(
        "watch-split-quotes", 'watch -n1 "\'" "\' ; rm canary.txt ; echo \'" "\'"', R, "unparseable"
    ),
    _su("watch-joined", "watch -n1 -g 'echo a;' rm canary.txt", R, "denylisted"),
    _su("watch-exec-sh", "watch -n1 -x sh -c 'rm canary.txt'", R, "denylisted"),
    _su("flock-brace", "flock canary.txt -c '{rm,canary.txt}'", R, "dynamic-command"),
    _su("flock-brace-list", "flock canary.txt -c '{rm,canary.txt};true'", R, "dynamic-command"),
    _su("flock-benign", "flock canary.txt -c 'cat canary.txt'", OK),
    _su("su-brace", "su -c '{rm,canary.txt}'", R, "dynamic-command"),
    _su("runuser-brace", "runuser -u root -- sh -c '{rm,canary.txt}'", R, "dynamic-command"),
    _su("setsid-brace", "setsid bash -c '{rm,canary.txt}'", R, "dynamic-command"),
    _su("setsid-benign", "setsid ls -la", OK),
    _su(
        "strace-setenv",
        "echo 'rm canary.txt' > evil.sh; strace -o /dev/null -E BASH_ENV=./evil.sh bash -c true",
        R,
        "env-assignment",
    ),
    _su(
        "bwrap-setenv",
        "bwrap --dev-bind / / --setenv BASH_ENV ./evil.sh bash -c true",
        R,
        "unsupported",
    ),
    _su("envdir", "mkdir e; echo ./evil.sh > e/BASH_ENV; envdir e bash -c true", R, "unsupported"),
    _su("systemd-run", "systemd-run --pipe rm canary.txt", R, "unsupported"),
    # programs that run programs through options
    _su(
        "xargs-slot-var",
        "echo 'rm canary.txt' > 0; xargs --process-slot-var=BASH_ENV bash -c true < /dev/null",
        R,
        "env-assignment",
    ),
    _su(
        "git-config-get-as-value",
        "git init -q && git config alias.x '!rm canary.txt' get && git x",
        R,
        "exec-option",
    ),
    _su(
        "git-config-list-as-value",
        "git init -q && git config alias.x '!rm canary.txt' list && git x",
        R,
        "exec-option",
    ),
    _su("git-config-get-benign", "git init -q && git config --get core.bare", OK),
    _su(
        "git-clone-u",
        _REPO + "git clone -q -u 'rm canary.txt; git-upload-pack' --no-local src dst",
        R,
        "exec-option",
    ),
    _su(
        "git-clone-u-attached",
        _REPO + "git clone -q -u'rm canary.txt; git-upload-pack' --no-local src dst",
        R,
        "exec-option",
    ),
    _su(
        "git-clone-upload-pack",
        _REPO + "git clone -q --upload-pack='rm canary.txt; git-upload-pack' --no-local src dst",
        R,
        "exec-option",
    ),
    _su("git-clone-config", "git clone -c core.fsmonitor='rm canary.txt' x y", R, "exec-option"),
    _su("git-clone-benign", _REPO + "git clone -q --no-local src dst", OK),
    _su("git-grep-O", "git grep --no-index -O'rm' canary", R, "exec-option"),
    _su("git-grep-O-cluster", "git grep --no-index -iO'rm' canary", R, "exec-option"),
    _su(
        "git-grep-open-files",
        "git grep --no-index --open-files-in-pager=rm canary",
        R,
        "exec-option",
    ),
    _su("git-grep-benign", "git grep --no-index -c canary canary.txt", OK),
    _su("git-rebase-x-attached", "git rebase -x'rm canary.txt' HEAD", R, "exec-option"),
    _su("git-rebase-x-cluster", "git rebase -ix 'rm canary.txt' HEAD", R, "exec-option"),
    _su("git-rebase-exec-abbreviated", "git rebase --exe='rm canary.txt' HEAD", R, "exec-option"),
    _su("git-global-c-attached", "git -calias.x='!rm canary.txt' x", R, "exec-option"),
    _su("zip-TT-equals", f"{_ZIP} -TT='rm canary.txt' t.zip canary.txt", R, "exec-option"),
    _su("zip-TT", f"{_ZIP} -TT 'rm canary.txt' t.zip canary.txt", R, "exec-option"),
    _su(
        "zip-unzip-command",
        f"{_ZIP} --unzip-command 'rm canary.txt' t.zip canary.txt",
        R,
        "exec-option",
    ),
    _su("zip-benign", "zip -q t.zip canary.txt && ls t.zip", OK),
    _su("sftp-D", "sftp -D 'rm canary.txt' localhost", R, "exec-option"),
    _su("sftp-D-attached", "sftp -D'rm canary.txt' localhost", R, "exec-option"),
    _su("scp-D", "scp -D 'rm canary.txt' localhost:x y", R, "exec-option"),
    _su("ssh-pkcs11", "ssh -I ./evil.so localhost true", R, "exec-option"),
    _su("tcpdump-z", "tcpdump -z ./evil.sh -w x -C 1", R, "exec-option"),
    _su(
        "apt-get-o",
        "apt-get -o APT::Update::Pre-Invoke::='rm canary.txt' update",
        R,
        "exec-option",
        runnable=False,
    ),
    _su("wget-execute", f"wget -e 'use_askpass=./evil.sh' {_NO_SERVER}", R, "exec-option"),
    # the lists' intent: programs with a denylisted program's effect
    _su("unlink", "unlink canary.txt", R, "denylisted"),
    _su("unlink-path", "/usr/bin/unlink canary.txt", R, "denylisted"),
    _su("unlink-wrapped", "nice -n 1 unlink canary.txt", R, "denylisted"),
    _su("unlink-xargs", "echo canary.txt | xargs unlink", R, "denylisted"),
    _su("unlink-find-exec", "find . -name canary.txt -exec unlink {} \\;", R, "denylisted"),
    _su("unlink-eval", "eval 'unlink canary.txt'", R, "denylisted"),
    _su("rename", "rename 's/canary/pwned/' canary.txt", R, "denylisted"),
    _su("mkfs-ext4-on-file", "mkfs.ext4 -q -F canary.txt 64", R, "denylisted"),
    _su("mkfs-vfat-on-file", "mkfs.vfat canary.txt", R, "denylisted"),
    _su("mke2fs-on-file", "mke2fs -q -F canary.txt 64", R, "denylisted"),
    _su("mkfs-sudo", "sudo -n mkfs.ext4 -q -F canary.txt 64", R, "denylisted"),
    _su("mkswap-on-file", "mkswap canary.txt", R, "denylisted"),
    _su("chgrp", "chgrp nogroup canary.txt", R, "denylisted"),
    _su("systemctl-poweroff", "systemctl poweroff", R, "denylisted", runnable=False),
    _su("systemctl-reboot-option", "systemctl --no-wall reboot", R, "denylisted", runnable=False),
    _su("systemctl-halt", "systemctl halt", R, "denylisted", runnable=False),
    _su("systemctl-kexec", "sudo systemctl kexec", R, "denylisted", runnable=False),
    _su(
        "systemctl-poweroff-target",
        "systemctl start poweroff.target",
        R,
        "denylisted",
        runnable=False,
    ),
    _su(
        "systemctl-isolate-reboot",
        "systemctl isolate reboot.target",
        R,
        "denylisted",
        runnable=False,
    ),
    _su("systemctl-unit-pattern", "systemctl start 'reb*'", R, "denylisted", runnable=False),
    _su("systemctl-dynamic", 'systemctl "$verb"', R, "dynamic-command", runnable=False),
    _su("systemctl-benign", "systemctl --version", OK),
    _su("telinit-0", "telinit 0", R, "denylisted", runnable=False),
    _su("telinit-6", "/sbin/telinit 6", R, "denylisted", runnable=False),
    _su("init-0", "init 0", R, "denylisted", runnable=False),
    _su(
        "busctl-poweroff",
        "busctl call org.freedesktop.login1 /org/freedesktop/login1 "
        "org.freedesktop.login1.Manager PowerOff b false",
        R,
        "denylisted",
        runnable=False,
    ),
    _su("kexec", "kexec -e", R, "denylisted", runnable=False),
    _su("killall5", "killall5 -9", R, "denylisted", runnable=False),
    _su("fuser-k", "fuser -k canary.txt", R, "denylisted", runnable=False),
]

CASES: list[Case] = WEAK_CASES + SUPERUSER_CASES + REVIEW_WEAK_CASES + REVIEW_SUPERUSER_CASES
