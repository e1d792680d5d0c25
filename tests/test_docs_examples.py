"""The commands and Python examples of README.md and docs/*.md work as written.

Commands. Every ``restorekit …`` command is taken from the docs: each line of a fenced block
(```` ``` ````, any language but ``python``/``toml``/``json``/``nginx``) that runs ``restorekit``,
and each inline code span (`` `…` ``, which may wrap over lines within a paragraph) whose text
starts with ``restorekit`` (after ``VAR=value`` assignments, ``.venv/bin/`` or ``nice -n N``), with
``python -m restorekit`` or with ``torchrun … -m restorekit``. In a fenced block, an indented line
after a command continues it (the synopsis in README.md's *Commands*), as does a line ending in
``\\``; ``&&``, ``;`` and ``" | "`` separate commands (after a ``restorekit`` command,
``| plugin check NAME`` is an alternative subcommand), and ``#`` starts a comment. Prose that
names a subcommand and its options without the program (`` `compare --seeds` ``, `` `weights pull
lpips-alex` ``: a span whose first word is a top-level command and whose second is an option or
one of its subcommands) is checked too ("short forms"). Each command is walked down the click tree
that ``restorekit.cli.build_cli()`` builds (core and installed plugins):

- every subcommand named must exist; ``a|b|c`` in a subcommand's place names alternatives, each
  checked with the options that follow; a short form that gives a group's option
  (`` `train --set` ``) must give one that every subcommand of the group has;
- every ``-x``/``--name`` (``--name=value`` too) must be an option of the command it follows (or
  ``--help``/``-h``); an option that takes a value consumes the next word (a short form may end
  with an option and no value);
- a value of a ``click.Choice`` option must be one of its choices (``a|b``: each);
- no more positional words than the command has argument slots;
- names given as values must be registered here (``NAMED_VALUES``): methods (``METHOD@LABEL``
  variants too), metrics, face detectors, generators, realism feature spaces, plugins and weights
  (also a ``--weights`` value that is a bare name, not a file); ``--spec``/``--degradation``
  values must parse; ``--opt KEY=VALUE`` (``METHOD.KEY=VALUE`` for compare, serve and plugin
  check; ``--compare-opt`` of ``bench method``) must name an option of that method's (or
  generator's) options model;
- ``weights pull``/``import`` of weights with no published sha256 must pass ``--trust`` (without
  it the command is refused on a fresh machine).

Tolerated, as placeholders, not checked: a word in capitals (``METHOD``, ``DIR``, ``NAME|PATH``,
``cuda:N``'s ``N`` part), ``<dir>``-style words, one-letter lists (``--metrics a,b``), ``...`` and
``…`` (skipped: "more of the same" or "the rest of the command"), and the ``[`` ``]`` of an
optional part. A command whose subcommand is itself a placeholder (``restorekit COMMAND --help``)
is checked up to there. The example plugins docs/plugins.md builds (``EXAMPLE_NAMES``: ``sharpen``,
``nearest``, ``tiny``…) are not installed here, so their names pass and their options are not
looked up. Inline code that quotes a message restorekit prints (``QUOTED_MESSAGES``) is not a
command: it is checked against the constant it quotes instead.

Python. Every ```` ```python ```` block compiles; README.md's (restore a 16-px face with the shipped
psp_sr) also runs, in a temporary folder holding the ``face_16px.png`` it opens. The snippets of
docs/plugins.md are run as plugin modules by ``tests/test_plugin_kit.py``, and the dotted
``restorekit…`` names in inline code must resolve (``test_dotted_names_in_docs_resolve``).
Options named alone in prose (`` `--max-shrink` ``) must be some command's, and every ``--opt
KEY=`` key a field of some method's or generator's options (``test_options_named_in_prose_exist``).

``test_checker_catches_what_the_docs_could_get_wrong`` shows that each rule fails on a planted
mistake.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import pytest

from restorekit.cli import build_cli

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
NOT_SHELL = {"python", "toml", "json", "nginx"}
WRAPPERS = {"nice", "time", "timeout", "env"}


@dataclass(frozen=True)
class DocCommand:
    file: str
    line: int
    text: str  # the command as written, from `restorekit` on
    short: bool = False  # a subcommand and options named in prose (`compare --seeds`)

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.text}"


def _blocks(text: str):
    """``(kind, language, first_line_number, lines)`` for fenced blocks and prose in between."""
    lines = text.split("\n")
    i, start, prose = 0, 1, []
    while i < len(lines):
        m = re.match(r"^\s*```(\w*)", lines[i])
        if m:
            if prose:
                yield "prose", "", start, prose
            lang, body, j = m.group(1), [], i + 1
            while j < len(lines) and not re.match(r"^\s*```\s*$", lines[j]):
                body.append(lines[j])
                j += 1
            yield "fence", lang, i + 2, body
            i, start, prose = j + 1, j + 2, []
            continue
        prose.append(lines[i])
        i += 1
    if prose:
        yield "prose", "", start, prose


def _restorekit_args(words: list[str]) -> list[str] | None:
    """The words after the ``restorekit`` program in one shell command, or None if it runs another."""
    i = 0
    while i < len(words) and re.match(r"^[A-Z_][A-Z0-9_]*=", words[i]):
        i += 1  # VAR=value
    if i < len(words) and words[i] in WRAPPERS:
        i += 1
        while i < len(words) and (words[i].startswith("-") or words[i].isdigit()):
            i += 1
    if i < len(words) and re.fullmatch(r"(\S*/)?restorekit", words[i]):
        return words[i + 1:]
    if i < len(words) and words[i] == "torchrun":
        for k in range(i + 1, len(words) - 1):
            if words[k] == "-m" and words[k + 1] == "restorekit":
                return words[k + 2:]
    if i < len(words) and re.fullmatch(r"(\S*/)?python[\d.]*", words[i]) and words[i + 1:i + 3] == ["-m", "restorekit"]:
        return words[i + 3:]
    return None


def _split_shell(line: str) -> list[list[str]]:
    """Shell words of each command on a line (``&&``, ``;``, `` | `` separate; ``#`` comments)."""
    lex = shlex.shlex(line, posix=True, punctuation_chars=False)
    lex.whitespace_split = True
    lex.commenters = "#"
    try:
        words = list(lex)
    except ValueError:  # an unbalanced quote: take it word by word
        words = line.split("#")[0].split()
    out, cur = [], []
    for w in words:
        if w in ("&&", ";", "|", "||"):
            out.append(cur)
            cur = []
        elif w.endswith(";") and len(w) > 1:
            cur.append(w[:-1])
            out.append(cur)
            cur = []
        else:
            cur.append(w)
    out.append(cur)
    return [c for c in out if c]


def _short_form(words: list[str], root: click.Group) -> bool:
    """``compare --seeds``, ``weights pull lpips-alex``: a top-level command, then an option or one
    of its subcommands."""
    ctx = click.Context(root, info_name="restorekit")
    if len(words) < 2 or words[0] not in root.list_commands(ctx):
        return False
    cmd = root.get_command(ctx, words[0])
    if words[1].startswith("-"):
        return True
    return isinstance(cmd, click.Group) and words[1].split("|")[0] in cmd.list_commands(ctx)


def doc_commands() -> list[tuple[DocCommand, list[str]]]:
    """Every ``restorekit …`` command of the docs, with its argument words."""
    found: list[tuple[DocCommand, list[str]]] = []
    root = build_cli()
    top_level = set(root.list_commands(click.Context(root, info_name="restorekit")))
    for path in DOCS:
        rel = path.relative_to(ROOT).as_posix()
        for kind, lang, first, lines in _blocks(path.read_text(encoding="utf-8")):
            if kind == "fence":
                if lang in NOT_SHELL:
                    continue
                logical: list[tuple[int, str]] = []
                for n, raw in enumerate(lines, first):
                    cont = logical and (logical[-1][1].endswith("\\") or (
                        raw[:1].isspace() and raw.strip() and "restorekit" in logical[-1][1]))
                    if cont:
                        ln, prev = logical[-1]
                        logical[-1] = (ln, prev.rstrip("\\").rstrip() + " " + raw.strip())
                    else:
                        logical.append((n, raw.strip()))
                for n, text in logical:
                    previous = None
                    for words in _split_shell(text):
                        args = _restorekit_args(words)
                        if args is None and previous is not None and words[0] in top_level:
                            args = words  # `restorekit plugin new NAME | plugin check NAME`
                        if args is not None:
                            found.append((DocCommand(rel, n, " ".join(["restorekit", *args])), args))
                        previous = args
            else:
                # paragraphs (inline code may wrap over lines, never over a blank line)
                para: list[tuple[int, str]] = []
                for n, raw in [*enumerate(lines, first), (0, "")]:
                    if raw.strip():
                        para.append((n, raw))
                        continue
                    if para:
                        joined = "\n".join(t for _, t in para)
                        for m in re.finditer(r"(?<!`)`([^`]+)`(?!`)", joined):
                            code = m.group(1).replace("\n", " ").strip()
                            ln = para[0][0] + joined.count("\n", 0, m.start())
                            segments = _split_shell(code)
                            if segments and _restorekit_args(segments[0]):
                                for words in segments:
                                    args = _restorekit_args(words)
                                    if args:
                                        found.append((DocCommand(rel, ln, " ".join(["restorekit", *args])), args))
                            elif segments and _short_form(segments[0], root):
                                found.append((DocCommand(rel, ln, " ".join(segments[0]), short=True),
                                              segments[0]))
                    para = []
    return found


def _placeholder(word: str) -> bool:
    """``METHOD``, ``NAME|PATH``, ``cuda:N``, ``<dir>``, ``a,b``, ``...``: stands for a value."""
    w = word.strip("[]")
    if not w or _ellipsis(w) or re.fullmatch(r"<[^>]*>", w):
        return True
    if re.fullmatch(r"[a-z](,[a-z])*", w):  # `--metrics a,b`
        return True
    return bool(re.fullmatch(r"[A-Z][A-Z0-9_]*", w.split("=")[0].split(":")[-1].split(".")[0]))


def _ellipsis(word: str) -> bool:
    w = word.strip("[]")
    return w in ("...", "…") or w.endswith("…") or w.endswith("...")


@dataclass
class Parsed:
    """One leaf command of a doc line: its path, options (name, value) in order and positionals."""
    path: tuple[str, ...]
    cmd: click.Command
    options: list[tuple[str, str | None]]
    positionals: list[str]


def _option_map(cmd: click.Command) -> dict[str, click.Parameter]:
    out: dict[str, click.Parameter] = {}
    for p in cmd.params:
        if isinstance(p, click.Option):
            for o in [*p.opts, *p.secondary_opts]:
                out[o] = p
    return out


def parse_command(args: list[str], root: click.Group, *, short: bool = False
                  ) -> tuple[list[Parsed], list[str]]:
    """Walk one command's words down the click tree: ``(leaf commands, problems)``."""
    words = [w.strip("[]") for w in args]
    words = [w for w in words if w]
    problems: list[str] = []
    leaves: list[Parsed] = []
    if short:  # prose names the subcommand without the program
        _walk(root, words, ("restorekit",), problems, leaves, short=True, top=False)
    else:
        _walk(root, words, ("restorekit",), problems, leaves, short=False, top=True)
    return leaves, problems


def _walk(cmd: click.Command, words: list[str], path: tuple[str, ...], problems: list[str],
          leaves: list[Parsed], *, short: bool, top: bool) -> None:
    ctx = click.Context(cmd, info_name=path[-1])
    opts = _option_map(cmd)
    where = " ".join(path)
    i = 0
    if isinstance(cmd, click.Group):
        if top:
            while i < len(words) and words[i].startswith("-"):
                name = words[i].split("=", 1)[0]
                if name not in opts and name not in ("--help", "-h"):
                    problems.append(f"{where}: no option {name}")
                i += 1
        if i >= len(words) or _placeholder(words[i]):
            return
        if words[i].startswith("-"):  # prose: `train --set` names an option of every trainer
            for n in cmd.list_commands(ctx):
                _walk(cmd.get_command(ctx, n), words[i:], (*path, n), problems, leaves,
                      short=short, top=False)
            return
        for alt in words[i].split("|"):
            if _placeholder(alt):
                continue
            try:
                sub = cmd.get_command(ctx, alt)
            except click.UsageError:  # restorekit's group says "did you mean"
                sub = None
            if sub is None:
                problems.append(f"{where}: no subcommand {alt!r}")
                continue
            _walk(sub, words[i + 1:], (*path, alt), problems, leaves, short=short, top=False)
        return
    leaf = Parsed(path, cmd, [], [])
    leaves.append(leaf)
    slots = [p for p in cmd.params if isinstance(p, click.Argument)]
    unlimited = any(p.nargs == -1 for p in slots)
    max_pos = sum(max(p.nargs, 0) for p in slots)
    while i < len(words):
        w = words[i]
        if _ellipsis(w):  # `[--opt key=value ...]`: more of the same; `…`: the rest of the command
            i += 1
            continue
        if w.startswith("-") and len(w) > 1 and not re.fullmatch(r"-\d.*", w):
            name, eq, value = w.partition("=")
            p = opts.get(name)
            if p is None:
                if name not in ("--help", "-h"):
                    problems.append(f"{where}: no option {name}")
                i += 1
                continue
            if p.is_flag or p.count:
                leaf.options.append((name, None))
                i += 1
                continue
            if not eq:
                if i + 1 >= len(words):
                    if not short:  # prose may name an option without its value
                        problems.append(f"{where}: {name} needs a value")
                    return
                value = words[i + 1]
                i += 1
            leaf.options.append((name, value))
            if isinstance(p.type, click.Choice) and not _ellipsis(value):
                for alt in value.split("|"):
                    if not _placeholder(alt) and alt not in p.type.choices:
                        problems.append(f"{where}: {name} {alt!r} is not one of {list(p.type.choices)}")
        else:
            leaf.positionals.append(w)
            if not unlimited and len(leaf.positionals) > max_pos and not _placeholder(w):
                problems.append(f"{where}: unexpected extra argument {w!r}")
        i += 1


# --- names the values stand for --------------------------------------------------------------

def known_names() -> dict[str, Any]:
    """What names a doc's values may give, as registered here (and the weight specs by name)."""
    from restorekit.harness.realism.spaces import SPACE_ALIASES, SPACE_SUMMARIES
    from restorekit.plugins import registry
    from restorekit.weights.catalogue import all_specs

    reg = registry()
    specs = all_specs()
    return {
        "specs": specs,
        "method": set(reg.names("methods")),
        "metric": set(reg.names("metrics")),
        "detector": set(reg.names("face_detectors")),
        "generator": set(reg.names("generators")),
        "weights": set(specs),
        "space": {*SPACE_SUMMARIES, *SPACE_ALIASES},
        "plugin": set(reg.plugins),
    }


# (command, option or "#N" for the N-th positional) -> the kind of name its value is.
NAMED_VALUES: dict[tuple[str, str], str] = {
    ("run", "#0"): "method", ("export", "#0"): "method", ("bench method", "#0"): "method",
    ("methods show", "#0"): "method", ("run", "--background"): "method",
    ("compare", "--methods"): "method", ("demo", "--methods"): "method",
    ("serve", "--methods"): "method", ("compare", "--baseline"): "method",
    ("bench method", "--compare-to"): "method", ("bench harness", "--method"): "method",
    ("compare", "--metrics"): "metric", ("serve", "--metrics"): "metric",
    ("bench harness", "--metrics"): "metric", ("bench scaleout", "--metrics"): "metric",
    ("run", "--detector"): "detector", ("compare", "--detector"): "detector",
    ("demo", "--detector"): "detector", ("serve", "--detector"): "detector",
    ("realism", "--detector"): "detector", ("bench faces", "--detector"): "detector",
    ("generate", "--generator"): "generator", ("realism", "--generator"): "generator",
    ("realism", "--spaces"): "space", ("plugin check", "#0"): "plugin",
    **{(f"weights {c}", "#0"): "weights" for c in ("pull", "show", "rm", "verify", "forget", "path", "import")},
}
NONE_OK = {("realism", "--detector")}  # `--detector none`
# Names of the example plugins docs/plugins.md writes (not installed here).
EXAMPLE_NAMES = {"sharpen", "nearest", "tiny", "tiny-stylegan-ffhq64", "my_retina", "my_arcface", "tiny_stylegan"}


def _names(value: str) -> list[str]:
    """``psp_sr,psp_sr@cs3`` -> ``["psp_sr", "psp_sr"]``; alternatives ``a|b`` each."""
    out = []
    for part in re.split(r"[,|]", value):
        part = part.split("@", 1)[0]
        if part and not _placeholder(part):
            out.append(part)
    return out


def _option_fields(kind: str, name: str) -> set[str] | None:
    from restorekit.methods import method_class
    from restorekit.plugins import registry

    if kind == "method":
        return set(method_class(name).Options.model_fields)
    if kind == "generator":
        return set(registry().get("generators", name).options_model().model_fields)
    return None


def check_names(leaf: Parsed, known: dict[str, Any]) -> list[str]:
    """Method, metric, detector, generator, weights and option names a command's values give."""
    from restorekit.degradations import parse_spec

    where = " ".join(leaf.path[1:])
    problems: list[str] = []
    values: list[tuple[str, str]] = [(n, v) for n, v in leaf.options if v is not None]
    values += [(f"#{k}", v) for k, v in enumerate(leaf.positionals)]

    def canonical(opt: str) -> str:
        p = _option_map(leaf.cmd).get(opt)
        return max(p.opts, key=len) if p is not None and opt.startswith("--") else opt

    for opt, value in values:
        kind = NAMED_VALUES.get((where, canonical(opt)))
        if kind is None or _ellipsis(value):
            continue
        for name in _names(value):
            if (where, canonical(opt)) in NONE_OK and name == "none":
                continue
            if name not in known[kind] and name not in EXAMPLE_NAMES:
                problems.append(f"{where} {opt}: no {kind} named {name!r}")
    for opt, value in values:
        if canonical(opt) in ("--spec", "--degradation") and not _placeholder(value):
            try:
                parse_spec(value)
            except Exception as exc:  # noqa: BLE001 - any refusal is the doc's problem
                problems.append(f"{where} {opt} {value}: {exc}")
        if canonical(opt) == "--weights" and re.fullmatch(r"[a-z0-9][a-z0-9-]*", value):
            if value not in known["weights"] and value not in EXAMPLE_NAMES:
                problems.append(f"{where} --weights: no weights named {value!r}")
    # weights without a published sha256 (trust on first use) are pulled or imported with --trust
    if where in ("weights pull", "weights import") and "--trust" not in dict(leaf.options):
        names = leaf.positionals if where == "weights pull" else leaf.positionals[:1]
        for name in names:
            spec = known["specs"].get(name)
            if spec is not None and any(f.sha256 is None and f.package_source is None for f in spec.files):
                problems.append(f"{where} {name}: no sha256 is published for it, so it needs --trust")
    # --opt keys: the option models of the methods / generator the command names
    opt_of = dict(leaf.options)
    method = leaf.positionals[0] if leaf.positionals and where in ("run", "export", "bench method") else None
    targets: list[tuple[str, str, str]] = []  # (option, kind, name)
    for opt, value in leaf.options:
        if value is None or "=" not in value or _ellipsis(value):
            continue
        key = value.split("=", 1)[0]
        if opt == "--opt" and where in ("run", "export", "bench method") and method:
            targets.append((key, "method", method))
        elif opt == "--compare-opt" and opt_of.get("--compare-to"):
            targets.append((key, "method", opt_of["--compare-to"]))
        elif opt == "--opt" and where in ("compare", "serve", "plugin check") and "." in key:
            comp, key = key.split(".", 1)
            comp = comp.split("@", 1)[0]
            if comp in known["method"] or where != "plugin check":
                targets.append((key, "method", comp))
        elif opt == "--opt" and where == "generate":
            targets.append((key, "generator", opt_of.get("--generator", "stylegan2")))
    for key, kind, name in targets:
        if _placeholder(key) or _placeholder(name) or name in EXAMPLE_NAMES or name not in known[kind]:
            continue
        fields = _option_fields(kind, name)
        if fields is not None and key not in fields:
            problems.append(f"{where}: {name} has no option {key!r}")
    return problems


def command_problems(args: list[str], *, short: bool = False, known: dict[str, Any] | None = None) -> list[str]:
    """Every problem of one doc command (its words after ``restorekit``); empty: it works."""
    root = build_cli()
    leaves, problems = parse_command(args, root, short=short)
    known = known if known is not None else known_names()
    for leaf in leaves:
        problems += check_names(leaf, known)
    return problems


# --- the tests ---------------------------------------------------------------------------------

# Inline code that starts like a command but quotes what restorekit prints: (doc, text) -> the
# constant it must equal, so the quote stays true.
QUOTED_MESSAGES = {
    ("docs/serve.md", "restorekit serve needs the web extra: pip install 'restorekit[web]'"):
        "restorekit.web:INSTALL_HINT",
}


def _is_quote(dc: DocCommand) -> bool:
    return any(dc.file == f and dc.text.split()[:3] == shlex.split(t)[:3] for f, t in QUOTED_MESSAGES)


def test_quoted_messages_are_what_restorekit_prints():
    import importlib

    for (doc, text), target in QUOTED_MESSAGES.items():
        assert text in (ROOT / doc).read_text(encoding="utf-8").replace("\n", " "), (doc, text)
        module, attr = target.split(":")
        assert getattr(importlib.import_module(module), attr) == text


def test_doc_commands_match_the_cli():
    found = doc_commands()
    full = [dc for dc, _ in found if not dc.short]
    # the extraction itself: fenced, continued, chained, inline and wrapped commands are all seen
    texts = {dc.text for dc in full}
    assert "restorekit degrade --spec blur:1.5+bicubic:4+jpeg:60 --input hr/ --output lr/" in texts
    assert "restorekit demo --output demo/" in texts  # after `&&` in the install line
    assert any(t.startswith("restorekit bench method psp_sr --resolution 1024") and t.endswith(
        "--backend torch,onnxruntime") for t in texts)  # `\` continuation
    assert any(t.startswith("restorekit run METHOD") and "--json" in t for t in texts)  # indented
    assert any(t.startswith("restorekit compare --methods psp_sr,psp_sr@cs3,bicubic") and "--baseline" in t
               for t in texts)  # inline code wrapped over two lines
    assert any(dc.short and dc.text == "compare --seeds" for dc, _ in found)
    assert len(full) > 100 and len(found) - len(full) > 50
    known = known_names()
    problems = [f"{dc}: {p}" for dc, args in found if not _is_quote(dc)
                for p in command_problems(args, short=dc.short, known=known)]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("words, short, expect", [
    ("run psp_sr --scale 4 --input a --output b --colour-macth", False, "no option --colour-macth"),
    ("compare --methods psp_sr,bicubik --scale 8 --data d", False, "no method named 'bicubik'"),
    ("run psp_sr --faces detected", False, "'detected' is not one of"),
    ("weights lst", False, "no subcommand 'lst'"),
    ("train psp_sr|stylegan3 --data d", False, "no subcommand 'stylegan3'"),
    ("degrade --spec blur:1+jpg:60", False, "unknown step 'jpg'"),
    ("run psp_sr --opt consistency_step=3", False, "psp_sr has no option 'consistency_step'"),
    ("compare --methods psp_sr@cs3 --opt psp_sr@cs3.consistency_step=3", False, "no option 'consistency_step'"),
    ("bench method psp_sr --compare-to psp_sr --compare-opt optimise=false", False, "no option 'optimise'"),
    ("weights pull lpips-alx", False, "no weights named 'lpips-alx'"),
    ("weights pull psp-celebs-super-resolution", False, "needs --trust"),
    ("weights pull --trust psp-celebs-super-resolution lpips-alex", False, None),
    ("methods show psp_sr extra", False, "unexpected extra argument 'extra'"),
    ("train --sett", True, "no option --sett"),
    ("realism --images", True, None),  # prose names an option without its value
    ("run METHOD --scale K [--device auto|cpu|cuda|cuda:N] [--opt key=value ...]", False, None),
    ("run METHOD [--opt key=value ...] [--paste-mask square|oval]", False, "'oval' is not one of"),
])
def test_checker_catches_what_the_docs_could_get_wrong(words, short, expect):
    problems = command_problems(shlex.split(words), short=short)
    if expect is None:
        assert problems == []
    else:
        assert any(expect in p for p in problems), problems


def python_blocks() -> list[tuple[str, int, str]]:
    out = []
    for path in DOCS:
        for kind, lang, first, lines in _blocks(path.read_text(encoding="utf-8")):
            if kind == "fence" and lang == "python":
                out.append((path.relative_to(ROOT).as_posix(), first, "\n".join(lines)))
    return out


def test_python_blocks_compile():
    blocks = python_blocks()
    assert len(blocks) >= 12
    for doc, line, src in blocks:
        compile(src, f"{doc}:{line}", "exec")


def _block(doc: str, first_line: str) -> str:
    """The python block of ``doc`` whose first line starts with ``first_line``."""
    found = [src for d, _, src in python_blocks() if d == doc and src.lstrip().startswith(first_line)]
    assert len(found) == 1, (doc, first_line, len(found))
    return found[0]


def test_readme_python_example_runs(tmp_path, monkeypatch):
    from PIL import Image

    from restorekit.testing.data import smooth_image

    monkeypatch.chdir(tmp_path)
    Image.fromarray(smooth_image(16, 16, 0)).save("face_16px.png")
    src = next(s for d, _, s in python_blocks() if d == "README.md")
    ns: dict = {}
    exec(compile(src, "README.md", "exec"), ns)
    assert tuple(ns["lr"].shape) == (1, 3, 16, 16)
    assert Image.open("face_x8.png").size == (128, 128)


def _resolves(dotted: str) -> bool:
    import importlib

    parts = dotted.split(".")
    for k in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:k]))
        except ImportError:
            continue
        for attr in parts[k:]:
            if not hasattr(obj, attr):
                return False
            obj = getattr(obj, attr)
        return True
    return False


def test_dotted_names_in_docs_resolve():
    """`restorekit.consistency.back_project`, `restorekit.harness.metrics.PsnrYCrop()(…)`: each
    module, class and function inline code names exists (``restorekit.onnx/1`` is a format)."""
    missing, seen = [], 0
    for path in DOCS:
        for m in re.finditer(r"`([^`\n]+)`", path.read_text(encoding="utf-8")):
            for dotted in re.findall(r"\b(restorekit(?:_psp_sr|_baselines)?(?:\.[A-Za-z_]\w*)+)(?![\w/])", m.group(1)):
                seen += 1
                if not _resolves(dotted):
                    missing.append(f"{path.name}: {dotted}")
    assert seen > 40
    assert not missing, missing
    assert not _resolves("restorekit.consistency.back_projekt")


# Options of other programs that docs name in inline code: option -> the file that must define it.
OTHER_PROGRAMS_OPTIONS = {
    "--no-deps": None,  # pip's
    "--detectors": "scripts/detector_table.py",
    "--option": "scripts/detector_table.py",
}
EXAMPLE_OPTION_KEYS = {"amount", "gain", "key"}  # docs/plugins.md's example methods'; `key=value`


def test_options_named_in_prose_exist():
    """`--max-shrink`, `--opt consistency_steps=3`, `--opt psp_sr.weights=…`: an inline option is one
    some command has, and an `--opt`/`--compare-opt` key is a field of some method's or generator's
    options (a key of the doc's example methods aside)."""
    from restorekit.methods import method_class
    from restorekit.plugins import registry

    root = build_cli()
    options: set[str] = set()

    def walk(cmd: click.Command) -> None:
        options.update(o for p in cmd.params if isinstance(p, click.Option) for o in [*p.opts, *p.secondary_opts])
        if isinstance(cmd, click.Group):
            for sub in cmd.commands.values():
                walk(sub)

    walk(root)
    reg = registry()
    fields = {f for m in reg.names("methods") for f in method_class(m).Options.model_fields}
    fields |= {f for g in reg.names("generators") for f in reg.get("generators", g).options_model().model_fields}
    problems, n_options, n_keys = [], 0, 0
    for path in DOCS:
        text = path.read_text(encoding="utf-8")
        for m in re.finditer(r"`(--[a-z][\w-]*)", text):
            n_options += 1
            opt = m.group(1)
            if opt in options or opt == "--help":
                continue
            if opt in OTHER_PROGRAMS_OPTIONS:
                owner = OTHER_PROGRAMS_OPTIONS[opt]
                assert owner is None or opt in (ROOT / owner).read_text(encoding="utf-8"), (opt, owner)
                continue
            problems.append(f"{path.name}: no command has {opt}")
        for m in re.finditer(r"--(?:opt|compare-opt) ([\w@.]+)=", text):
            n_keys += 1
            key = m.group(1).split(".")[-1]
            if not (key in fields or key in EXAMPLE_OPTION_KEYS or _placeholder(key)):
                problems.append(f"{path.name}: no method or generator has an option {key!r} ({m.group(0)})")
    assert n_options > 100 and n_keys > 20
    assert not problems, problems
