"""Permission checks for shell commands that a node runs on behalf of an agent.

`plan_shell_command` either raises `CommandRefused` or returns a `ShellPlan` saying how to run
the command.  It never runs anything itself; the only outside lookup is `shutil.which`.  The
refusal carries the offending command text, a rule id (`RULES`) and one sentence; it never
quotes the allowlist, the denylist or anything else from the node, beyond naming the listed
program a command counts as (`find -delete` as `rm`, `telinit 0` as `poweroff`).

Weak mode (allowlist, no shell)
-------------------------------
The command line is split with `shlex` and the argv is executed *without* a shell.  Shell
syntax is refused outright rather than interpreted, so the argv always means what the same text
would mean to bash:

* Unquoted metacharacters are refused: `;` `&` `|` `<` `>` `(` `)` `$` backticks `*` `?` `[`
  `{` `}` (except the pair `{}`, which bash never expands: `find -exec ... {}`), `#`, `~`, and
  newlines anywhere (even quoted), as is a leading `VAR=value`.
* Quoted metacharacters are *data*: `echo "a; b"` and `echo 'x | y'` run `echo` with one
  argument, exactly as bash would pass it.  Inside double quotes `$` and backticks are still
  refused, because bash would expand them there; inside single quotes they are plain data.
* `argv[0]` must be on the allowlist (exact match).  A program given by path (`/bin/ls`,
  `./ls`, `/tmp/evil/ls`) is refused unless its basename is allowlisted *and* the path is
  exactly what `shutil.which` finds for that basename on this process's PATH.
* Wrappers (`env`, `sudo`, `doas`, `nohup`, `timeout`, `nice`, `ionice`, `stdbuf`, `time`,
  `command`, `builtin`, `exec`, `xargs`, `busybox`, `find -exec/-execdir/-ok/-okdir`,
  `bash -c`/`sh -c`/...) are unwrapped: the wrapped program must pass the same check,
  recursively (a `-c` string must itself be a valid weak-mode command).  Their options are read
  from tables; an unknown option, a missing program, or a program supplied at run time (`xargs`
  input, `{}` and `-I` placeholders) means the program cannot be determined: refused.
  `find -delete` is checked as `rm`, `find -fprint*`/`-fls` as `tee`.  Wrappers whose option
  syntax is not modelled (`setsid`, `strace`, `watch`, ...) are refused.
* `ip netns exec NAME CMD`, `ip vrf exec NAME CMD` and `ip -all netns exec CMD` run CMD, which
  must pass in turn; ip takes any prefix of a word (`ip netn e`, `ip v e`), so every word that
  may be `exec` starts a command.  `ip -batch FILE` is refused.
* Allowlisted programs are allowed for what they usually do, not for options that write files
  (`writes-files`: `curl -o/-O/-D/-c/--trace`, `wget` without `-O -`, `sort -o`,
  `tcpdump -w`), read local files or sockets (`local-access`: `file:` and other non-web URLs,
  curl URL patterns, `curl -d @FILE`, `-T`, `-K`, `--unix-socket`, `wget -i`) or change the
  machine (`changes-system`: `ip link set`/`ip route del`/any prefix of a changing ip command,
  `date -s`, `hostname NAME`, `sysctl -w`, `dmesg -C`).  `side_effects` holds the table;
  options it does not know are read as flags, so their arguments are still checked.
* `env` may only set locale/terminal variables (`LANG`, `LC_*`, `TZ`, `TERM`, ...).

Superuser mode (denylist, full bash)
------------------------------------
The command runs as `/bin/bash -c COMMAND`.  Before that a small bash parser finds *every*
simple command and checks its program against the denylist by basename (`/usr/bin/rm` is
`rm`), after NFKC normalisation and case folding (fullwidth `rm` and `RM` count as `rm`):
commands in pipelines, lists, subshells, groups, `if`/`while`/`until`/`for`/`select`/`case`
bodies, function bodies, command substitutions (also inside double quotes, `${...}` and
backticks, nested), process substitutions, here-strings and redirection targets.  Quote
splicing is resolved first: `r''m`, `"r"m` and `\\rm` are all `rm`.  Quoting is read as bash
reads it: `$'...'` inside `${...}` is ANSI-C quoting too, `eval --` and `time -p --` end their
options, and a backslash-newline that bash would join into another token (`$\\<newline>(`,
`$\\<newline>'`, `&\\<newline>&`, `>\\<newline>>`) is refused.

* The denylist means its programs' effect ("aliases by intent", `intent.INTENT_ALIASES`): a
  program with the effect of a denylisted one counts as it.  `unlink`, `srm` count as `rm`;
  `mkfs.*`, `mke2fs`, `mkswap`, `mkdosfs` as `mkfs`; `rename` as `mv`; `chgrp` as `chown`;
  `sfdisk`, `gdisk`... as `fdisk`/`parted`; `systemctl poweroff|halt|reboot|kexec|soft-reboot`
  (also as units, `systemctl start reboot.target`), `telinit`/`init 0|6`, `kexec` and D-Bus
  `PowerOff`/`Reboot` calls as `poweroff`/`halt`/`reboot`/`shutdown`; `fuser -k`,
  `killall5` as `kill`.  A node whose denylist leaves the original out may run the alias.

* Wrappers are unwrapped as in weak mode.  `eval`, `trap`, `bash -c`, `sh -c`, `su -c`,
  `flock -c`, ... have their code re-parsed; code for a shell other than bash is read twice,
  as bash and as POSIX sh (dash reads `&>`, `[[` and `$'...'` differently), and both readings
  must pass.  Wrappers whose option syntax is not modelled (`setsid`, `strace`, `watch`,
  `su`, `flock`, `ld.so`, ...) must pass every way they could run their arguments: the
  program at *every* position, every argument that is not a plain word re-parsed as shell
  code (`flock -c '{rm,x}'` is brace expansion), and every run of trailing arguments joined
  with spaces (`watch "'" "' ; rm x ; '" "'"` hands a shell one line); no argument may name a
  variable that changes what runs (`strace -E BASH_ENV=x`).  Programs that start an unchecked
  shell, read commands from input, set variables from files or remap what a path runs
  (`bash` without `-c`, `su` without `-c`, `chroot`, `at`, `parallel`, `envdir`, `bwrap`,
  `systemd-run`, ...) are refused.
* Redirections are allowed (`echo x > file` may write any file the node can write): the
  denylist is about programs, not files.
* Fail closed: a program name that is not a literal word (`$x`, `${x}`, `$(...)`, globs, brace
  expansion, `~`, `$'...'`) is refused, and so is what the parser does not fully understand:
  here-documents, aliases, `source`/`.`, history expansion (`set -H`), `$"..."`, arithmetic
  on variables (`$((x))`, `((...))`, `let`, `[[ x -eq y ]]`, `declare -i`), array subscripts,
  `${!x}`, `${x@P}`, `declare -n`, `hash -p`, `enable`, `coproc`, `set -k`, extglob.
* Variables that change what runs may not be set (`PATH`, `LD_*`, `BASH_ENV`, `ENV`, `PS4`,
  `BASH_FUNC_*`, `GIT_*`, `PAGER`, ...): not as `VAR=x cmd`, not through `env`/`sudo`, and not
  through `export`, `declare`, `read`, `printf -v`, `for VAR in`, `getopts` or `${VAR:=x}`.
* Options that make well-known tools run another program are refused, in both modes, also
  attached (`-xCMD`), in clusters (`-ix CMD`) and abbreviated (`--exe`): `git -c`,
  `git config` writes (a read is `git config get|list` or a `--get*`/`--list` option, not a
  `get` among the values), `git rebase -x`, `git clone -u/-c/--upload-pack`, `git grep -O`,
  `tar --to-command`/`-I`, `rsync -e`, `ssh -o/-I`, `sftp`/`scp -D`, `zip -TT[=]CMD`,
  `tcpdump -z`, `apt-get -o`, `wget -e/--use-askpass`, `xargs --process-slot-var=VAR` (as
  setting VAR), ...

The denylist is a guard rail, not a sandbox
-------------------------------------------
A full shell can always reach a program the denylist does not name.  Known limits:

* Interpreters and tools that run code from their arguments: `python3 -c`, `perl -e`,
  `awk 'BEGIN{system(...)}'`, `sed 'e ...'`, `make`, `gdb -ex`, `vim -c`, `expect`, pagers'
  shell escapes, git hooks and repository config, and the rest of GTFOBins.  The option list
  above cannot be complete; interpreters must be on the denylist to be stopped at all.
* Programs that delete or overwrite files themselves (`find -delete` is caught; `sort -o`,
  `uniq IN OUT`, `tar -x`, `rsync --delete`, `git clean`, a compiler's `-o` are not), and any
  file written by a redirection.
* Code on disk or elsewhere: a script written by a redirection and made executable, a copy of
  a denied program under another name, a `Makefile`, a virtualenv `bin/`, remote commands
  (`ssh host rm ...`, `docker exec`); anything whose text the parser never sees.
* Values that bash evaluates as code at run time and that these checks cannot see: variables
  inherited from the node's environment (`BASH_ENV`, exported functions), array subscripts
  smuggled in data (`[ "$a" "$b" ]` where `a=-v`), zsh-only syntax in `zsh -c`, and wrapper
  programs that are not listed here.
* `sh -c` code that only bash understands (`<(...)`, `<<<`) is refused, because `sh` may be
  dash; use `bash -c`.
* Weak mode trusts the allowlist: an allowlisted program that executes its arguments as code
  (an interpreter, `make`, `git` with repository hooks) defeats it, and `PATH` is resolved by
  whoever executes the argv.

Rule ids: `empty`, `too-long`, `too-complex` (nesting or work limits), `unparseable`,
`shell-syntax` (weak mode), `not-in-allowlist`, `path-program`, `denylisted`,
`dynamic-command` (the program is only known at run time or cannot be determined),
`env-assignment`, `exec-option`, `unsupported` (a construct these checks refuse to reason
about), and in weak mode `writes-files`, `local-access` and `changes-system` (an allowlisted
program's option that writes files, reads local files or sockets, or changes the machine).
A program with a denylisted program's effect is refused as `denylisted`.

Layout: `policy` runs the checks, `lexer` and `parser` read bash, `wrappers` unwraps programs
that run programs (reading their options with `options`), `shell_builtins` guards builtins
that set variables or shell options, `variables` says which variables may be set,
`exec_options` knows tools' options that run programs, `intent` the programs that count as a
denylisted one, `side_effects` the weak-mode options that write or reach further, `commands`
holds the shapes that pass between them and `errors` the refusals.

These checks are the first line, which explains a refusal before anything starts; the OS
sandbox every task runs in is what holds the line when a command gets past them.
"""

from agentmesh.config import PermissionMode
from agentmesh.node.permissions.errors import RULES, CommandRefused
from agentmesh.node.permissions.policy import MAX_COMMAND_LENGTH, ShellPlan, plan_shell_command

__all__ = [
    "MAX_COMMAND_LENGTH",
    "RULES",
    "CommandRefused",
    "PermissionMode",
    "ShellPlan",
    "plan_shell_command",
]
