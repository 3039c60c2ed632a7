"""The manual pages document every command, argument, option, setting and exit code, and nothing that is gone.

The checks read the CLI's own definition (the click tree behind the typer app, the daemon's argparse parser,
the settings the config loader accepts) and compare it with the roff source of man/msearchctl.1 and
man/msearchd.8. Each check returns a list of problems, one sentence each, so that a failure names what is
missing; the tests at the end change a copy of the CLI or of a page and make sure the checks notice.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import io
import os
import re
import shlex
import shutil
import subprocess
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import click
import pytest
import typer

import msearchctl.app
from msearchd import __version__, config, daemon

ROOT = Path(__file__).resolve().parent.parent
MAN = ROOT / "man"
CTL_PAGE = MAN / "msearchctl.1"
DAEMON_PAGE = MAN / "msearchd.8"

CTL_SECTIONS = (
    "NAME",
    "SYNOPSIS",
    "DESCRIPTION",
    "OPTIONS",
    "COMMANDS",
    "EXIT STATUS",
    "ENVIRONMENT",
    "FILES",
    "EXAMPLES",
    "SEE ALSO",
)
DAEMON_SECTIONS = (
    "NAME",
    "SYNOPSIS",
    "DESCRIPTION",
    "OPTIONS",
    "TASKS",
    "SIGNALS",
    "DURABILITY",
    "CONFIGURATION FILE",
    "SECURITY",
    "EXIT STATUS",
    "ENVIRONMENT",
    "FILES",
    "EXAMPLES",
    "SEE ALSO",
)
COMPLETION_SHELLS = ("bash", "zsh", "fish")

# --- reading roff -----------------------------------------------------------------------------------

_ESCAPE = re.compile(r"\\(\(..|\[[^]]*\]|f(?:\(..|\[[^]]*\]|.)|.)")
_SPECIAL = {"(aq": "'", "(dq": '"', "(em": "\u2014", "(en": "\u2013", "(lq": '"', "(rq": '"', "(bu": "*"}
_CONCAT_MACROS = {"BR", "RB", "IR", "RI", "BI", "IB"}
_TEXT_MACROS = {"B", "I", "SM", "SB", "SH", "SS"}
# Requests that end the list item being read.
_ITEM_ENDS = {"PP", "LP", "P", "IP", "SH", "SS"}
_LONG_OPTION = re.compile(r"(?<![\w-])(--[A-Za-z0-9][\w-]*)")
_ANY_OPTION = re.compile(r"(?<![\w-])(--?[A-Za-z0-9][\w-]*)")
# Options of other programs that the pages show in examples (systemctl, journalctl).
OTHER_PROGRAMS_OPTIONS = {"--user", "--now", "--user-unit"}
_SHELL_BREAKS = {"|", "||", "&&", "&", ";", ";;", ">", ">>", "2>", "<"}


def unescape(text: str) -> str:
    """Roff text as it reads: font changes dropped, special characters and escaped dashes resolved."""

    def one(m: re.Match[str]) -> str:
        seq = m.group(1)
        if seq.startswith("f"):
            return ""
        if seq in _SPECIAL:
            return _SPECIAL[seq]
        if seq.startswith(("(", "[")):
            return ""
        return {"-": "-", "e": "\\", " ": " ", "~": " "}.get(seq, "" if seq in "&%|^c" else seq)

    return _ESCAPE.sub(one, text)


def macro_args(rest: str) -> list[str]:
    """Split a macro line's arguments the way roff does: by spaces, with double-quoted arguments."""
    args: list[str] = []
    i = 0
    while i < len(rest):
        if rest[i] == " ":
            i += 1
            continue
        if rest[i] == '"':
            i += 1
            arg = []
            while i < len(rest):
                if rest[i] == '"':
                    if rest[i + 1 : i + 2] == '"':
                        arg.append('"')
                        i += 2
                        continue
                    i += 1
                    break
                arg.append(rest[i])
                i += 1
            args.append("".join(arg))
        else:
            j = rest.find(" ", i)
            j = len(rest) if j < 0 else j
            args.append(rest[i:j])
            i = j
    return args


@dataclass
class Item:
    """A `.TP` entry: its tag line(s) and the text under it, both as plain text."""

    tag: str
    body: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        return " ".join([self.tag, *self.body])


@dataclass
class Block:
    """A `.SH` or `.SS` heading and what follows up to the next heading."""

    level: str
    heading: str
    section: str
    lines: list[str] = field(default_factory=list)
    items: list[Item] = field(default_factory=list)

    @property
    def text(self) -> str:
        return " ".join(self.lines)

    @property
    def tags(self) -> list[str]:
        return [item.tag for item in self.items]


@dataclass
class Page:
    name: str
    th: list[str]
    blocks: list[Block]
    examples: list[tuple[str, list[str]]]

    def sections(self) -> list[str]:
        return [b.heading for b in self.blocks if b.level == "SH"]

    def section(self, title: str) -> Block | None:
        return next((b for b in self.blocks if b.level == "SH" and b.heading == title), None)

    def in_section(self, title: str) -> list[Block]:
        """The `.SH` block of that title and the `.SS` blocks under it."""
        return [b for b in self.blocks if b.section == title]

    def items(self, title: str) -> list[Item]:
        return [item for block in self.in_section(title) for item in block.items]

    @property
    def text(self) -> str:
        return " ".join(" ".join([b.heading, *b.lines]) for b in self.blocks)


def parse_page(source: str, name: str) -> Page:
    th: list[str] = []
    blocks: list[Block] = []
    examples: list[tuple[str, list[str]]] = []
    block: Block | None = None
    item: Item | None = None
    expect_tag: str | None = None  # "TP": the next line tags a new item; "TQ": one more tag of this one
    in_example = False
    for raw in source.splitlines():
        if raw.startswith(('.\\"', "'\\\"")) or raw == ".":
            continue
        if raw.startswith("."):
            request, _, rest = raw[1:].partition(" ")
            args = macro_args(rest)
            if request == "TH":
                th = args
                continue
            if request in ("SH", "SS"):
                heading = re.sub(r"\s+", " ", unescape(" ".join(args))).strip()
                section = heading if request == "SH" else (blocks[-1].section if blocks else "")
                block = Block(request, heading, section)
                blocks.append(block)
                item = None
                continue
            if request in ("EX", "nf"):
                in_example = True
                examples.append((block.section if block else "", []))
                continue
            if request in ("EE", "fi"):
                in_example = False
                continue
            if request in ("TP", "TQ"):
                expect_tag = request if item is not None else "TP"
                continue
            if request in _ITEM_ENDS:
                item = None
            if request in _CONCAT_MACROS:
                line = unescape("".join(args))
            elif request in _TEXT_MACROS:
                line = unescape(" ".join(args))
            else:
                continue
        else:
            line = unescape(raw)
        if block is None:
            continue
        if in_example:
            examples[-1][1].append(line)
        block.lines.append(line)
        if expect_tag == "TQ" and item is not None:
            item.tag += ", " + line
        elif expect_tag:
            item = Item(line)
            block.items.append(item)
        elif item is not None:
            item.body.append(line)
        expect_tag = None
    return Page(name, th, blocks, examples)


def load_page(path: Path) -> Page:
    return parse_page(path.read_text(encoding="utf-8"), path.name)


def options_in(text: str) -> set[str]:
    return set(_ANY_OPTION.findall(text))


# --- what the code defines --------------------------------------------------------------------------


def ctl_root() -> click.Group:
    root = typer.main.get_command(msearchctl.app.app)
    assert isinstance(root, click.Group)
    return root


def command_tree(root: click.Command) -> dict[tuple[str, ...], click.Command]:
    """Every command path of the CLI, the root as ()."""
    tree: dict[tuple[str, ...], click.Command] = {}

    def walk(cmd: click.Command, path: tuple[str, ...]) -> None:
        tree[path] = cmd
        if isinstance(cmd, click.Group):
            for name, sub in cmd.commands.items():
                if not sub.hidden:
                    walk(sub, (*path, name))

    walk(root, ())
    return tree


def context(cmd: click.Command, path: tuple[str, ...]) -> click.Context:
    return click.Context(cmd, info_name=" ".join(["msearchctl", *path]))


def option_names(param: click.Parameter) -> list[str]:
    return [*param.opts, *param.secondary_opts] if isinstance(param, click.Option) else []


def all_ctl_options(root: click.Command) -> set[str]:
    return {
        name
        for path, cmd in command_tree(root).items()
        for param in cmd.get_params(context(cmd, path))
        for name in option_names(param)
    }


def parser_options(parser: argparse.ArgumentParser) -> set[str]:
    return {s for action in parser._actions for s in action.option_strings}


def exit_codes_of_ctl() -> set[int]:
    """0, every EXIT_* constant of msearchctl.app, and every literal code it exits with."""
    source = Path(msearchctl.app.__file__).read_text()
    codes = {0}
    codes |= {v for k, v in vars(msearchctl.app).items() if k.startswith("EXIT_") and isinstance(v, int)}
    codes |= {int(n) for n in re.findall(r"\bExit\((\d+)\)", source)}
    return codes


def exit_codes_of_daemon() -> set[int]:
    source = Path(daemon.__file__).read_text()
    return {0} | {int(n) for n in re.findall(r"\bsys\.exit\((\d+)\)", source)}


def environment_read_by_daemon() -> set[str]:
    """The variables the daemon's start-up reads: literal names and module constants."""
    names: set[str] = set()
    for module in (config, daemon):
        source = Path(module.__file__ or "").read_text()
        names |= set(re.findall(r"os\.environ(?:\.get)?[\(\[]\s*\"([A-Z][A-Z0-9_]*)\"", source))
        names |= set(re.findall(r"\"([A-Z][A-Z0-9_]*)\"\s+(?:not\s+)?in\s+os\.environ", source))
        for constant in re.findall(r"os\.environ(?:\.get)?[\(\[]\s*([A-Z][A-Z0-9_]*)\s*[\),\]]", source):
            names.add(str(getattr(module, constant)))
    return names


def package_sources() -> str:
    return "\n".join(p.read_text() for pkg in ("msearchd", "msearchctl") for p in (ROOT / pkg).rglob("*.py"))


def config_keys(tmp_path: Path) -> set[str]:
    """The top-level keys the config loader accepts, found by asking it about each settings field."""

    def unknown(key: str) -> bool:
        path = tmp_path / "probe.toml"
        path.write_text(f'{key} = "x"\n')
        try:
            config.load(path, {})
        except Exception as exc:
            return "unknown" in str(exc) and key in str(exc)
        return False

    assert unknown("zz_not_a_setting"), "the config loader no longer reports unknown settings by name"
    candidates = {f.name for f in dataclasses.fields(config.Settings)} | {"socket"}
    return {key for key in candidates if not unknown(key)}


def state_file_names(tmp_path: Path) -> set[str]:
    """The names in the state folder and beside the socket, as the code makes them."""
    settings = config.Settings(socket_path=tmp_path / config.SOCKET_NAME, state_dir=tmp_path / "state")
    settings.state_dir.mkdir()
    lock = daemon.lock_state_dir(settings.state_dir)
    lock.close()
    lock_names = {p.name for p in settings.state_dir.iterdir()}
    socket_lock = config.socket_lock_path(settings.socket_path).name
    return {config.SOCKET_NAME, socket_lock, settings.db_path.name, settings.log_dir.name, *lock_names}


# --- the checks -------------------------------------------------------------------------------------


def common_problems(page: Page, title: str, section: str, sections: tuple[str, ...]) -> list[str]:
    problems = []
    have = page.sections()
    problems += [f"{page.name}: no section {s}" for s in sections if s not in have]
    if page.th[:2] != [title, section]:
        problems.append(f"{page.name}: .TH says {page.th[:2]}, expected {[title, section]}")
    if f"msearchd {__version__}" not in page.th:
        problems.append(f"{page.name}: .TH does not name the version, msearchd {__version__}")
    name = page.section("NAME")
    if name is None or not name.text.startswith(f"{title.lower()} - "):
        problems.append(f"{page.name}: NAME must start with '{title.lower()} - '")
    return problems


def heading_path(heading: str) -> tuple[str, ...]:
    words = heading.split()[1:]
    path: list[str] = []
    for word in words:
        if not re.fullmatch(r"[a-z][a-z0-9-]*", word):
            break
        path.append(word)
    return tuple(path)


def argument_word(metavar: str) -> str:
    return re.sub(r"[\[\].]|--", "", metavar).strip()


def ctl_problems(page: Page, root: click.Group, daemon_parser: argparse.ArgumentParser) -> list[str]:
    """msearchctl.1 against the click tree: commands, arguments, options, defaults, exit codes."""
    problems: list[str] = []
    tree = command_tree(root)
    documented: dict[tuple[str, ...], Block] = {}
    for block in page.blocks:
        if block.level != "SS" or not block.heading.startswith("msearchctl "):
            continue
        path = heading_path(block.heading)
        shown = " ".join(["msearchctl", *path])
        if path not in tree:
            problems.append(f"{page.name} documents `{shown}`, which is not a command")
        elif path in documented:
            problems.append(f"{page.name} documents `{shown}` twice")
        else:
            documented[path] = block

    options_block = page.section("OPTIONS")
    exit_codes = exit_codes_of_ctl()
    for path, cmd in tree.items():
        shown = " ".join(["msearchctl", *path])
        block = options_block if not path else documented.get(path)
        if block is None:
            where = "section OPTIONS" if not path else f'a section .SS "{shown} ..."'
            problems.append(f"{page.name}: `{shown}` is not documented: no {where}")
            continue
        ctx = context(cmd, path)
        if path:
            usage = " ".join([shown, *cmd.collect_usage_pieces(ctx)])
            if block.heading != usage:
                problems.append(f"{page.name}: the heading '{block.heading}' is not the usage '{usage}'")
        help_names = set(cmd.get_help_option_names(ctx))
        tag_options = set().union(*(options_in(tag) for tag in block.tags))
        known: set[str] = set()
        for param in cmd.get_params(ctx):
            names = option_names(param)
            known.update(names)
            if isinstance(param, click.Argument):
                metavar = param.make_metavar(ctx)
                word = argument_word(metavar)
                if not any(re.search(rf"(?<![\w-]){re.escape(word)}(?![\w-])", tag) for tag in block.tags):
                    problems.append(f"{page.name}: `{shown}`: argument {metavar} is not documented (.TP)")
                continue
            if not isinstance(param, click.Option) or param.hidden:
                continue
            if path and help_names & set(names):
                continue  # --help is documented once, under OPTIONS
            missing = [n for n in names if n not in tag_options]
            if missing:
                problems.append(f"{page.name}: `{shown}`: option {', '.join(missing)} is not documented")
                continue
            item = next(i for i in block.items if set(names) & options_in(i.tag))
            problems += option_detail_problems(page, shown, param, item)
        for name in sorted(tag_options - known):
            problems.append(f"{page.name}: `{shown}`: the page documents {name}, which it does not have")
        if path and not isinstance(cmd, click.Group):
            problems += exit_paragraph_problems(page, shown, block, exit_codes)

    problems += exit_status_problems(page, exit_codes)
    env = environment_read_by_daemon()
    env |= {str(p.envvar) for c in tree.values() for p in c.params if isinstance(p.envvar, str)}
    problems += environment_problems(page, env)
    known_options = all_ctl_options(root) | parser_options(daemon_parser)
    problems += prose_option_problems(page, known_options | OTHER_PROGRAMS_OPTIONS)
    problems += example_problems(page, root, daemon_parser)
    see_also = page.section("SEE ALSO")
    if see_also is None or "msearchd(8)" not in see_also.text:
        problems.append(f"{page.name}: SEE ALSO does not name msearchd(8)")
    return problems


def option_detail_problems(page: Page, shown: str, param: click.Option, item: Item) -> list[str]:
    """The default, the range and the environment variable of an option are in its entry."""
    problems = []
    text = item.text
    default = param.default
    if (
        not param.is_flag
        and not param.multiple
        and default is not None
        and isinstance(default, int | float | str)
        and f"Default: {default}" not in text
    ):
        problems.append(
            f"{page.name}: `{shown}` {param.opts[0]}: the entry does not say 'Default: {default}'"
        )
    if isinstance(param.type, click.IntRange | click.FloatRange):
        for bound in (param.type.min, param.type.max):
            if bound is not None and not re.search(rf"(?<![\d.]){bound}(?![\d])", text):
                problems.append(
                    f"{page.name}: `{shown}` {param.opts[0]}: the entry does not give the bound {bound}"
                )
    if isinstance(param.type, click.Choice):
        for choice in param.type.choices:
            if str(choice) not in text:
                problems.append(f"{page.name}: `{shown}` {param.opts[0]}: choice {choice} is not documented")
    if isinstance(param.envvar, str) and param.envvar not in text:
        problems.append(f"{page.name}: `{shown}` {param.opts[0]}: the entry does not name {param.envvar}")
    if param.name in ("install_completion", "show_completion"):
        for shell in COMPLETION_SHELLS:
            if shell not in text:
                problems.append(f"{page.name}: {param.opts[0]} does not say how it works for {shell}")
    return problems


def exit_paragraph_problems(page: Page, shown: str, block: Block, known: set[int]) -> list[str]:
    match = re.search(r"Exit status: (.*?)\.(?: [A-Z]|$)", block.text)
    if match is None:
        return [f"{page.name}: `{shown}` has no 'Exit status:' paragraph"]
    codes = {int(n) for n in re.findall(r"(?:^|; )(\d+) ", match.group(1))}
    problems = [f"{page.name}: `{shown}`: exit status {c} is not one msearchctl uses" for c in codes - known]
    if 2 not in codes:
        problems.append(f"{page.name}: `{shown}`: the exit statuses do not include 2 (usage error)")
    return problems


def exit_status_problems(page: Page, codes: set[int]) -> list[str]:
    tags = [item.tag.strip() for item in page.items("EXIT STATUS")]
    documented = {int(t) for t in tags if t.isdigit()}
    problems = [f"{page.name}: EXIT STATUS does not document {c}" for c in sorted(codes - documented)]
    problems += [f"{page.name}: EXIT STATUS documents {c}, which is never used" for c in documented - codes]
    problems += [f"{page.name}: EXIT STATUS entry {t!r} is not a number" for t in tags if not t.isdigit()]
    return problems


def environment_problems(page: Page, required: set[str]) -> list[str]:
    tags = [item.tag for item in page.items("ENVIRONMENT")]
    documented = {n for tag in tags for n in re.findall(r"[A-Z][A-Z0-9_]+", tag)}
    problems = [f"{page.name}: ENVIRONMENT does not document {n}" for n in sorted(required - documented)]
    sources = package_sources()
    problems += [
        f"{page.name}: ENVIRONMENT documents {n}, which no code reads"
        for n in sorted(documented)
        if n not in sources
    ]
    return problems


def files_problems(page: Page, names: set[str]) -> list[str]:
    listed = " ".join(item.tag for item in page.items("FILES"))
    return [f"{page.name}: FILES does not list {n}" for n in sorted(names) if n not in listed]


def prose_option_problems(page: Page, known: set[str]) -> list[str]:
    """Any long option named anywhere on the page still exists in msearchctl or msearchd."""
    return [
        f"{page.name} mentions {name}, which neither msearchctl nor msearchd has"
        for name in sorted(set(_LONG_OPTION.findall(page.text)) - known)
    ]


def example_lines(page: Page) -> Iterator[str]:
    for _, lines in page.examples:
        joined = ""
        for line in lines:
            if line.endswith("\\"):
                joined += line[:-1] + " "
                continue
            yield joined + line
            joined = ""
        if joined:
            yield joined


def invocations(line: str) -> Iterator[tuple[str, list[str]]]:
    """Each `msearchctl ...` or `msearchd ...` in a shell line, with its arguments."""
    try:
        words = shlex.split(line, comments=True)
    except ValueError:
        return
    for i, word in enumerate(words):
        substituted = "$(" in word
        program = word.rsplit("$(", 1)[-1].rsplit("/", 1)[-1]
        if program not in ("msearchctl", "msearchd"):
            continue
        args: list[str] = []
        for arg in words[i + 1 :]:
            if arg in _SHELL_BREAKS:
                break
            if substituted and arg.endswith(")"):
                args.append(arg[:-1])
                break
            args.append(arg)
        yield program, args


def ctl_invocation_problem(root: click.Group, args: list[str]) -> str | None:
    """Parse an msearchctl command line as click would; None if it is valid."""
    cmd: click.Command = root
    path: list[str] = []
    i = 0
    while isinstance(cmd, click.Group):
        ctx = context(cmd, tuple(path))
        params = {n: p for p in cmd.get_params(ctx) for n in option_names(p)}
        while i < len(args) and args[i].startswith("-"):
            name, eq, _ = args[i].partition("=")
            param = params.get(name)
            if not isinstance(param, click.Option):
                return f"{name} is not an option of {' '.join(['msearchctl', *path])}"
            i += 1
            if not (param.is_flag or param.count or eq):
                i += param.nargs
        if i >= len(args):
            return None
        sub = cmd.commands.get(args[i])
        if sub is None:
            return f"{' '.join(['msearchctl', *path])} has no command {args[i]}"
        path.append(args[i])
        cmd = sub
        i += 1
    try:
        cmd.make_context(" ".join(["msearchctl", *path]), list(args[i:]))
    except click.ClickException as exc:
        return f"{' '.join(['msearchctl', *path])}: {exc.format_message()}"
    return None


def daemon_invocation_problem(parser: argparse.ArgumentParser, args: list[str]) -> str | None:
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            parser.parse_args(args)
    except SystemExit as exc:
        if exc.code:
            return err.getvalue().strip().splitlines()[-1]
    return None


def example_problems(page: Page, root: click.Group, parser: argparse.ArgumentParser) -> list[str]:
    problems = []
    for line in example_lines(page):
        for program, args in invocations(line):
            if program == "msearchctl":
                problem = ctl_invocation_problem(root, args)
            else:
                problem = daemon_invocation_problem(parser, args)
            if problem:
                problems.append(f"{page.name}: the example `{line.strip()}` is wrong: {problem}")
    return problems


def daemon_problems(
    page: Page, parser: argparse.ArgumentParser, root: click.Group, accepted_keys: set[str]
) -> list[str]:
    """msearchd.8 against the parser, the config loader and the exit codes."""
    problems: list[str] = []
    items = page.items("OPTIONS")
    documented = set().union(*(options_in(item.tag) for item in items))
    known = parser_options(parser)
    for action in parser._actions:
        if action.help == argparse.SUPPRESS:
            continue
        missing = [s for s in action.option_strings if s not in documented]
        if missing:
            problems.append(f"{page.name}: option {', '.join(missing)} is not documented in OPTIONS")
            continue
        item = next(i for i in items if set(action.option_strings) & options_in(i.tag))
        if action.choices:
            problems += [
                f"{page.name}: {action.option_strings[0]}: choice {c} is not documented"
                for c in action.choices
                if str(c) not in item.text
            ]
        elif action.nargs != 0:
            metavar = action.metavar or action.dest.upper()
            if str(metavar) not in item.tag:
                problems.append(f"{page.name}: {action.option_strings[0]}: the entry does not show {metavar}")
    problems += [
        f"{page.name}: OPTIONS documents {o}, which msearchd does not have" for o in documented - known
    ]

    config_items = page.items("CONFIGURATION FILE")
    keys = {item.tag.split()[0].strip("[]") for item in config_items if item.tag.split()}
    problems += [f"{page.name}: setting {k} is not documented" for k in sorted(accepted_keys - keys)]
    problems += [f"{page.name}: documents setting {k}, which msearchd refuses" for k in keys - accepted_keys]

    problems += exit_status_problems(page, exit_codes_of_daemon())
    problems += environment_problems(page, environment_read_by_daemon())
    problems += prose_option_problems(page, known | all_ctl_options(root) | OTHER_PROGRAMS_OPTIONS)
    problems += example_problems(page, root, parser)
    see_also = page.section("SEE ALSO")
    if see_also is None or "msearchctl(1)" not in see_also.text:
        problems.append(f"{page.name}: SEE ALSO does not name msearchctl(1)")
    return problems


def config_example_problems(page: Page, tmp_path: Path) -> list[str]:
    """Every TOML example of CONFIGURATION FILE loads."""
    problems = []
    for section, lines in page.examples:
        if section != "CONFIGURATION FILE":
            continue
        path = tmp_path / "example.toml"
        path.write_text("\n".join(lines) + "\n")
        try:
            tomllib.loads(path.read_text())
            config.load(path, {})
        except Exception as exc:
            problems.append(f"{page.name}: the configuration example does not load: {exc}")
    return problems


def render_problems(path: Path) -> list[str]:
    """What groff (or man) warns about when it formats the page; needs one of them installed."""
    if shutil.which("groff"):
        argv = ["groff", "-man", "-Tutf8", "-ww", "-z", str(path)]
    elif shutil.which("man"):
        argv = ["man", "--warnings=w", "-l", str(path)]
    else:
        pytest.skip("neither groff nor man is installed")
    done = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, "MANPAGER": "cat"})
    problems = [f"{path.name}: {line}" for line in done.stderr.splitlines() if line.strip()]
    if done.returncode:
        problems.append(f"{path.name}: {argv[0]} exited with {done.returncode}")
    return problems


# --- the tests --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ctl_page() -> Page:
    return load_page(CTL_PAGE)


@pytest.fixture(scope="module")
def daemon_page() -> Page:
    return load_page(DAEMON_PAGE)


@pytest.fixture
def accepted_keys(tmp_path: Path) -> set[str]:
    return config_keys(tmp_path)


def report(problems: list[str]) -> str:
    return "the manual pages are out of date:\n  " + "\n  ".join(problems)


def test_msearchctl_page_documents_the_cli(ctl_page: Page, tmp_path: Path) -> None:
    problems = common_problems(ctl_page, "MSEARCHCTL", "1", CTL_SECTIONS)
    problems += ctl_problems(ctl_page, ctl_root(), daemon.build_parser())
    problems += files_problems(ctl_page, state_file_names(tmp_path))
    assert not problems, report(problems)


def test_msearchd_page_documents_the_daemon(
    daemon_page: Page, tmp_path: Path, accepted_keys: set[str]
) -> None:
    problems = common_problems(daemon_page, "MSEARCHD", "8", DAEMON_SECTIONS)
    problems += daemon_problems(daemon_page, daemon.build_parser(), ctl_root(), accepted_keys)
    problems += files_problems(daemon_page, state_file_names(tmp_path))
    problems += config_example_problems(daemon_page, tmp_path)
    assert not problems, report(problems)


@pytest.mark.parametrize("path", [CTL_PAGE, DAEMON_PAGE], ids=lambda p: p.name)
def test_pages_render_without_warnings(path: Path) -> None:
    problems = render_problems(path)
    assert not problems, report(problems)


def test_pages_are_installed_with_the_package() -> None:
    data_files = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["data-files"]
    installed = {
        Path(f).name: Path(dest).name
        for dest, files in data_files.items()
        if dest.startswith("share/man/")
        for f in files
    }
    pages = {p.name: f"man{p.suffix[1:]}" for p in MAN.iterdir() if re.fullmatch(r"\.\d", p.suffix)}
    assert installed == pages


# --- the checks can fail ----------------------------------------------------------------------------


def cancel_command(root: click.Group) -> click.Command:
    tasks = root.commands["tasks"]
    assert isinstance(tasks, click.Group)
    return tasks.commands["cancel"]


def test_an_undocumented_command_option_or_argument_is_reported(ctl_page: Page) -> None:
    root = copy.deepcopy(ctl_root())
    tasks = root.commands["tasks"]
    assert isinstance(tasks, click.Group)
    cancel_command(root).params.append(click.Option(["--dummy-flag"], is_flag=True))
    tasks.commands["stats"].params.append(click.Argument(["dummy_arg"], metavar="DUMMY"))
    tasks.add_command(click.Command("frobnicate", callback=lambda: None), "frobnicate")
    root.params.append(click.Option(["--dummy-global"], is_flag=True))
    problems = "\n".join(ctl_problems(ctl_page, root, daemon.build_parser()))
    assert "`msearchctl tasks cancel`: option --dummy-flag is not documented" in problems
    assert "`msearchctl tasks stats`: argument DUMMY is not documented" in problems
    assert (
        "'msearchctl tasks stats [OPTIONS]' is not the usage 'msearchctl tasks stats [OPTIONS] DUMMY'"
        in problems
    )
    assert "`msearchctl tasks frobnicate` is not documented" in problems
    assert "`msearchctl`: option --dummy-global is not documented" in problems
    assert ctl_problems(ctl_page, ctl_root(), daemon.build_parser()) == []


def test_a_removed_command_or_option_is_reported(ctl_page: Page) -> None:
    root = copy.deepcopy(ctl_root())
    cancel = cancel_command(root)
    cancel.params = [p for p in cancel.params if p.name != "running"]
    tasks = root.commands["tasks"]
    assert isinstance(tasks, click.Group)
    del tasks.commands["history"]
    problems = "\n".join(ctl_problems(ctl_page, root, daemon.build_parser()))
    assert "`msearchctl tasks cancel`: the page documents --running, which it does not have" in problems
    assert "documents `msearchctl tasks history`, which is not a command" in problems
    # The tour runs `tasks cancel task_1 --running`: the example is caught too.
    assert "the example `msearchctl tasks cancel task_1 --running" in problems


def test_a_changed_default_or_range_is_reported(ctl_page: Page) -> None:
    root = copy.deepcopy(ctl_root())
    tasks = root.commands["tasks"]
    assert isinstance(tasks, click.Group)
    limit = next(p for p in tasks.commands["list"].params if p.name == "limit")
    limit.default = 50
    limit.type = click.IntRange(1, 500)
    problems = "\n".join(ctl_problems(ctl_page, root, daemon.build_parser()))
    assert "--limit: the entry does not say 'Default: 50'" in problems
    assert "--limit: the entry does not give the bound 500" in problems


def test_a_new_or_removed_daemon_option_is_reported(daemon_page: Page, accepted_keys: set[str]) -> None:
    parser = daemon.build_parser()
    parser.add_argument("--dummy-opt", metavar="N")
    parser.add_argument("--dummy-mode", choices=["fast", "slow"])
    problems = "\n".join(daemon_problems(daemon_page, parser, ctl_root(), accepted_keys))
    assert "option --dummy-opt is not documented in OPTIONS" in problems
    assert "option --dummy-mode is not documented in OPTIONS" in problems

    parser = daemon.build_parser()
    parser._actions = [a for a in parser._actions if "--grace" not in a.option_strings]
    problems = "\n".join(daemon_problems(daemon_page, parser, ctl_root(), accepted_keys))
    assert "OPTIONS documents --grace, which msearchd does not have" in problems
    assert daemon_problems(daemon_page, daemon.build_parser(), ctl_root(), accepted_keys) == []


def test_a_new_or_removed_setting_is_reported(daemon_page: Page, accepted_keys: set[str]) -> None:
    parser = daemon.build_parser()
    problems = "\n".join(daemon_problems(daemon_page, parser, ctl_root(), accepted_keys | {"dummy_key"}))
    assert "setting dummy_key is not documented" in problems
    problems = "\n".join(daemon_problems(daemon_page, parser, ctl_root(), accepted_keys - {"grace"}))
    assert "documents setting grace, which msearchd refuses" in problems


def edited(path: Path, old: str, new: str) -> Page:
    source = path.read_text(encoding="utf-8")
    assert old in source
    return parse_page(source.replace(old, new, 1), path.name)


def test_page_edits_are_reported(tmp_path: Path) -> None:
    root, parser = ctl_root(), daemon.build_parser()
    page = edited(CTL_PAGE, ".TP\n.B \\-\\-running\nAlso stop the task if it runs", "Also stop it")
    assert "`msearchctl tasks cancel`: option --running is not documented" in "\n".join(
        ctl_problems(page, root, parser)
    )
    page = edited(CTL_PAGE, ".SH EXIT STATUS\n", ".SH EXIT CODES\n")
    problems = common_problems(page, "MSEARCHCTL", "1", CTL_SECTIONS) + ctl_problems(page, root, parser)
    assert f"{CTL_PAGE.name}: no section EXIT STATUS" in problems
    page = edited(CTL_PAGE, ".TP\n.B 4\n", ".TP\n.B 5\n")
    problems = ctl_problems(page, root, parser)
    assert f"{CTL_PAGE.name}: EXIT STATUS does not document 4" in problems
    assert f"{CTL_PAGE.name}: EXIT STATUS documents 5, which is never used" in problems
    page = edited(CTL_PAGE, "msearchctl tasks stats\n", "msearchctl tasks stats \\-\\-all\n")
    assert any(
        "the example `msearchctl tasks stats --all` is wrong" in p for p in ctl_problems(page, root, parser)
    )
    page = edited(CTL_PAGE, ".SH DESCRIPTION\n", ".SH DESCRIPTION\nSee \\fB\\-\\-gone\\fR.\n")
    assert f"{CTL_PAGE.name} mentions --gone, which neither msearchctl nor msearchd has" in ctl_problems(
        page, root, parser
    )
    page = edited(
        CTL_PAGE, ".B MSEARCH_SOCKET\nThe daemon's socket", ".B MSEARCH_SOCKETS\nThe daemon's socket"
    )
    problems = ctl_problems(page, root, parser)
    assert f"{CTL_PAGE.name}: ENVIRONMENT does not document MSEARCH_SOCKET" in problems
    assert f"{CTL_PAGE.name}: ENVIRONMENT documents MSEARCH_SOCKETS, which no code reads" in problems
    page = edited(CTL_PAGE, "Exit status: 0 shown; 2 usage error; 3 daemon unreachable.\n", "\n")
    assert "msearchctl.1: `msearchctl tasks stats` has no 'Exit status:' paragraph" in ctl_problems(
        page, root, parser
    )
    page = edited(CTL_PAGE, ".I msearchd.lock\n", ".I msearchd.pid\n")
    assert f"{CTL_PAGE.name}: FILES does not list msearchd.lock" in files_problems(
        page, state_file_names(tmp_path)
    )
    page = edited(
        DAEMON_PAGE, "[type_limits]\nfile_embed_video = 1\n", "[type_limits]\nfile_embed_video = 0\n"
    )
    assert any("does not load" in p for p in config_example_problems(page, tmp_path))


def test_render_warnings_are_reported(tmp_path: Path) -> None:
    broken = tmp_path / "broken.1"
    broken.write_text(CTL_PAGE.read_text(encoding="utf-8").replace(".SH NAME\n", ".SH NAME\n.BRR oops\n", 1))
    assert any("BRR" in p for p in render_problems(broken))
