"""The bash (and POSIX sh) parser: it finds every simple command in the source.

Simple commands are collected from lists, pipelines, subshells and groups, `if`/`while`/
`until`/`for`/`select`/`case` bodies, function bodies, `[[ ... ]]`, redirection targets and
the command and process substitutions the lexer hands back.
"""

from __future__ import annotations

from typing import Final

from agentmesh.node.permissions.commands import Simple, Word
from agentmesh.node.permissions.errors import ParseError, Refusal, show
from agentmesh.node.permissions.lexer import Lexer, Token
from agentmesh.node.permissions.variables import ASSIGNMENT, IDENT

_MAX_NEST: Final = 32  # syntactic nesting inside one parse
_RESERVED: Final = frozenset(
    {
        "if", "then", "elif", "else", "fi", "while", "until", "do", "done", "for", "select",
        "in", "case", "esac", "function", "{", "}", "!", "[[", "]]", "time", "coproc",
    }
)  # fmt: skip
_POSIX_RESERVED: Final = _RESERVED - {"[[", "]]", "function", "select", "coproc", "time"}
_CONDITIONAL_OPS: Final = frozenset({"&&", "||", "(", ")", "<", ">"})
_ARITH_TEST_OPS: Final = frozenset({"-eq", "-ne", "-lt", "-le", "-gt", "-ge", "-v"})
_CASE_ENDS: Final = frozenset({";;", ";&", ";;&"})
_NONE: Final[frozenset[str]] = frozenset()


class Parser(Lexer):
    """Recursive-descent parser for the bash subset these checks understand.

    The result is the flat list of every simple command in the source, nested ones included.
    Anything outside the subset raises `ParseError` (unparseable) or `Refusal` (unsupported).
    With `posix=True` it reads the source the way dash and other POSIX shells do, where several
    bash constructs mean something else (`&>` is `&` then `>`; `[[` is an ordinary command).
    """

    def __init__(self, src: str, nest: int = 0, *, posix: bool = False) -> None:
        super().__init__(src, posix=posix)
        self.nest = nest
        self._reserved = _POSIX_RESERVED if posix else _RESERVED
        self._sink: list[Simple] = []

    def parse_program(self) -> list[Simple]:
        self._parse_list(_NONE, _NONE)
        tok = self._peek()
        if tok.kind != "eof":
            raise ParseError(f"unexpected `{show(tok.text, 20)}`")
        return self._sink

    def _enter(self) -> None:
        self.nest += 1
        if self.nest > _MAX_NEST:
            raise Refusal(show(self.src.strip()), "too-complex", "the command nests too deeply")

    # -- substitutions, called back by the lexer

    def _parse_backtick(self, body: str) -> list[Simple]:
        inner = Parser(body, self.nest + 1, posix=self.posix)
        inner._enter()
        return inner.parse_program()

    def _parse_nested(self, pos: int) -> tuple[list[Simple], int]:
        saved_pos, saved_sink = self.pos, self._sink
        self.pos, self._sink = pos, []
        self._enter()
        self._parse_list(_NONE, frozenset({")"}))
        self._expect_op(")")
        self.nest -= 1
        cmds, end = self._sink, self.pos
        self.pos, self._sink = saved_pos, saved_sink
        return cmds, end

    # -- grammar

    def _is_reserved(self, tok: Token, *names: str) -> bool:
        if tok.kind != "word" or tok.word is None or tok.word.raw not in self._reserved:
            return False
        return not names or tok.word.raw in names

    def _skip_newlines(self) -> None:
        while self._peek().kind == "nl":
            self._next()

    def _expect_op(self, op: str) -> None:
        tok = self._next()
        if tok.kind != "op" or tok.text != op:
            raise ParseError(f"expected `{op}`")

    def _expect_word(self, word: str) -> None:
        if not self._is_reserved(self._next(), word):
            raise ParseError(f"expected `{word}`")

    def _collect(self, word: Word) -> None:
        self._sink.extend(word.subcommands)

    def _parse_list(self, end_words: frozenset[str], end_ops: frozenset[str]) -> None:
        while True:
            self._skip_newlines()
            tok = self._peek()
            if (
                tok.kind == "eof"
                or (tok.kind == "op" and tok.text in end_ops)
                or (self._is_reserved(tok) and tok.text in end_words)
            ):
                return
            self._parse_and_or()
            tok = self._peek()
            if tok.kind == "nl" or (tok.kind == "op" and tok.text in (";", "&")):
                self._next()
                continue
            return

    def _parse_and_or(self) -> None:
        self._parse_pipeline()
        while (tok := self._peek()).kind == "op" and tok.text in ("&&", "||"):
            self._next()
            self._skip_newlines()
            self._parse_pipeline()

    def _parse_pipeline(self) -> None:
        # bash's grammar: any mix of `!` and `time`, each `time` optionally followed by `-p`
        # and then `--` (`time -p -- cmd`), before the pipeline itself
        while self._is_reserved(tok := self._peek(), "time", "!"):
            self._next()
            if tok.text == "time":
                for option in ("-p", "--"):
                    if (nxt := self._peek()).kind == "word" and nxt.text == option:
                        self._next()
        self._parse_command()
        while (tok := self._peek()).kind == "op" and tok.text in ("|", "|&"):
            self._next()
            self._skip_newlines()
            self._parse_command()

    def _parse_command(self) -> None:
        self._enter()
        tok = self._peek()
        if tok.kind == "op" and tok.text == "(":
            if self.src.startswith("((", tok.start):
                raise self._unsupported("the arithmetic command `((...))`")
            self._next()
            self._parse_list(_NONE, frozenset({")"}))
            self._expect_op(")")
            self._parse_redirections()
        elif self._is_reserved(tok):
            self._parse_compound(tok.text)
            self._parse_redirections()
        else:
            self._parse_simple()
        self.nest -= 1

    def _parse_compound(self, keyword: str) -> None:
        if keyword == "{":
            self._next()
            self._parse_list(frozenset({"}"}), _NONE)
            self._expect_word("}")
        elif keyword == "if":
            self._parse_if()
        elif keyword in ("while", "until"):
            self._next()
            self._parse_list(frozenset({"do"}), _NONE)
            self._parse_do_done()
        elif keyword in ("for", "select"):
            self._parse_for()
        elif keyword == "case":
            self._parse_case()
        elif keyword == "function":
            self._next()
            name = self._next()
            if name.kind != "word" or name.word is None or not name.word.static:
                raise ParseError("bad function name")
            if (tok := self._peek()).kind == "op" and tok.text == "(":
                self._next()
                self._expect_op(")")
            self._parse_function_body()
        elif keyword == "[[":
            self._parse_conditional()
        elif keyword == "coproc":
            raise self._unsupported("`coproc`")
        else:
            raise ParseError(f"unexpected `{keyword}`")

    def _parse_if(self) -> None:
        self._next()
        self._parse_list(frozenset({"then"}), _NONE)
        self._expect_word("then")
        self._parse_list(frozenset({"elif", "else", "fi"}), _NONE)
        while True:
            tok = self._next()
            if self._is_reserved(tok, "elif"):
                self._parse_list(frozenset({"then"}), _NONE)
                self._expect_word("then")
                self._parse_list(frozenset({"elif", "else", "fi"}), _NONE)
            elif self._is_reserved(tok, "else"):
                self._parse_list(frozenset({"fi"}), _NONE)
                self._expect_word("fi")
                return
            elif self._is_reserved(tok, "fi"):
                return
            else:
                raise ParseError("expected `fi`")

    def _parse_do_done(self) -> None:
        self._expect_word("do")
        self._parse_list(frozenset({"done"}), _NONE)
        self._expect_word("done")

    def _parse_for(self) -> None:
        self._next()
        tok = self._next()
        if tok.kind == "op" and tok.text == "(":
            raise self._unsupported("the arithmetic `for ((...))` loop")
        if tok.kind != "word" or not IDENT.fullmatch(tok.text):
            raise ParseError("bad `for` variable")
        variable = Word(raw=tok.text + "=", value=tok.text + "=", static=True)
        self._sink.append(Simple(text=f"for {tok.text}", assignments=[variable], words=[]))
        self._skip_newlines()
        if self._is_reserved(self._peek(), "in"):
            self._next()
            while (tok := self._peek()).kind == "word" and tok.word is not None:
                self._next()
                self._collect(tok.word)
            tok = self._next()
            if not (tok.kind == "nl" or (tok.kind == "op" and tok.text == ";")):
                raise ParseError("expected `;` or a newline after the `for` words")
        elif (tok := self._peek()).kind == "op" and tok.text == ";":
            self._next()
        self._skip_newlines()
        self._parse_do_done()

    def _parse_case(self) -> None:
        self._next()
        subject = self._next()
        if subject.word is None:
            raise ParseError("bad `case` word")
        self._collect(subject.word)
        self._skip_newlines()
        self._expect_word("in")
        while True:
            self._skip_newlines()
            tok = self._peek()
            if self._is_reserved(tok, "esac"):
                self._next()
                return
            if tok.kind == "op" and tok.text == "(":
                self._next()
            while True:
                pattern = self._next()
                if pattern.word is None:
                    raise ParseError("bad `case` pattern")
                self._collect(pattern.word)
                tok = self._next()
                if tok.kind == "op" and tok.text == ")":
                    break
                if not (tok.kind == "op" and tok.text == "|"):
                    raise ParseError("expected `)` after a `case` pattern")
            self._parse_list(frozenset({"esac"}), _CASE_ENDS)
            tok = self._peek()
            if tok.kind == "op" and tok.text in _CASE_ENDS:
                self._next()
            elif not self._is_reserved(tok, "esac"):
                raise ParseError("expected `;;` or `esac`")

    def _parse_conditional(self) -> None:
        self._next()
        while True:
            tok = self._next()
            if tok.kind == "eof":
                raise ParseError("unterminated `[[`")
            if tok.kind in ("op", "redir") and tok.text not in _CONDITIONAL_OPS:
                raise ParseError(f"unexpected `{tok.text}` inside `[[`")
            if tok.word is None:
                continue
            if tok.word.raw == "]]":
                return
            if tok.word.raw in _ARITH_TEST_OPS:
                raise self._unsupported(f"`[[ ... {tok.word.raw} ... ]]` (arithmetic evaluation)")
            self._collect(tok.word)

    def _parse_function_body(self) -> None:
        self._skip_newlines()
        tok = self._peek()
        compound = self._is_reserved(
            tok, "{", "if", "while", "until", "for", "select", "case", "[["
        )
        if not (compound or (tok.kind, tok.text) == ("op", "(")):
            raise ParseError("a function body must be a compound command")
        self._parse_command()

    def _parse_redirections(self) -> None:
        while self._peek().kind == "redir":
            self._parse_redirection()

    def _parse_redirection(self) -> None:
        self._next()
        target = self._next()
        if target.word is None:
            raise ParseError("a redirection needs a target")
        self._collect(target.word)

    def _parse_simple(self) -> None:
        first = self._peek()
        assignments: list[Word] = []
        words: list[Word] = []
        end = first.start
        while True:
            tok = self._peek()
            if tok.kind == "redir":
                self._parse_redirection()
                end = self.pos
                continue
            if tok.kind != "word" or tok.word is None:
                break
            word = tok.word
            if not words and not assignments:
                after = self._token_at(tok.end)
                if after.kind == "op" and after.text == "(":
                    self._parse_function_definition(tok)
                    return
            self._next()
            self._collect(word)
            if not words and ASSIGNMENT.match(word.raw):
                assignments.append(word)
            else:
                words.append(word)
            end = self.pos
        if end == first.start:
            raise ParseError(f"unexpected `{show(first.text, 20) or 'end of input'}`")
        text = self.src[first.start : end].strip()
        self._sink.append(Simple(text=text, assignments=assignments, words=words))

    def _parse_function_definition(self, name: Token) -> None:
        if name.word is None or not name.word.static or name.word.raw in self._reserved:
            raise ParseError("bad function name")
        self._next()
        self._expect_op("(")
        self._expect_op(")")
        self._parse_function_body()
