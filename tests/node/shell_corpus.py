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
    }
)  # fmt: skip

SUPERUSER_DENYLIST: frozenset[str] = frozenset(
    {
        "rm", "rmdir", "unlink", "mv", "cp", "dd", "truncate", "tee", "shred", "touch", "ln",
        "install", "chmod", "sed", "awk", "gawk", "mawk", "perl", "python", "python3", "ruby",
        "node",
    }
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Case:
    id: str
    mode: PermissionMode
    command: str
    expect: Expect
    rule: str | None = None  # the expected rule id, where the case pins one down


def _weak(id: str, command: str, expect: Expect, rule: str | None = None) -> Case:
    return Case(f"weak-{id}", PermissionMode.WEAK, command, expect, rule)


def _su(id: str, command: str, expect: Expect, rule: str | None = None) -> Case:
    return Case(f"su-{id}", PermissionMode.SUPERUSER, command, expect, rule)


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

CASES: list[Case] = WEAK_CASES + SUPERUSER_CASES
