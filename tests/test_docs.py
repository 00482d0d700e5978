"""The docs a newcomer reads stay true: their links resolve and their commands run as written.

Checked in README.md and docs/*.md:

- every relative link and image resolves to a file of the repository, and its #anchor (if any) to a
  heading of that file (GitHub's anchor rules);
- README.md stays short (at most README_MAX_LINES lines) and opens with `make bench` and `make test`;
- every `sabench ...` command in a fenced code block (```bash, ```sh, ```shell or ```console; in a
  console block only the lines after `$ `) parses with the CLI's own parser (`build_parser()`);
- the cheap ones also run and must exit 0: `sabench --help`, `sabench COMMAND --help`, `sabench
  --version` and `sabench inspect ...` (closed forms: no weights, any model size). In a console block
  the lines shown after such a command are its expected output: each must appear in the real output,
  in order (a line `...` stands for output left out).

Convention for commands that must not be run here (placeholders such as `<run>`, paths that exist
only on the reader's machine, anything slow): put the HTML comment

    <!-- docs-test: parse-only -->

on the line right before the opening fence. Every command of that block is then only parsed. Other
commands (`sabench run`, `compare`, `check`, `history`, `quality`, `report`) are never run here: they
are parsed only, whatever the marker.
"""
from __future__ import annotations

import io
import re
import shlex
from contextlib import redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import pytest

from sabench.cli import COMMANDS, build_parser, main

ROOT = Path(__file__).resolve().parent.parent
README_MAX_LINES = 160
PARSE_ONLY = "<!-- docs-test: parse-only -->"
SHELL_LANGS = {"bash", "sh", "shell", "console"}
CONTROL = {"&&", "||", ";", "|", ">", ">>", "<", "2>", "&"}


def doc_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


# ------------------------------------------------------------------ markdown structure
@dataclass
class Block:
    path: Path
    line: int  # 1-based line of the opening fence
    lang: str
    lines: list  # the block's content lines
    parse_only: bool


def split_markdown(text: str, path: Path) -> tuple[list[Block], list[str]]:
    """Fenced code blocks, and the file's lines with every block's lines blanked out."""
    blocks, prose = [], []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        m = re.match(r"^(\s*)(`{3,}|~{3,})\s*([\w+-]*)", lines[i])
        if not m:
            prose.append(lines[i])
            i += 1
            continue
        fence, lang = m.group(2), m.group(3).lower()
        parse_only = i > 0 and lines[i - 1].strip() == PARSE_ONLY
        start, body = i, []
        i += 1
        while i < len(lines) and not lines[i].strip().startswith(fence):
            body.append(lines[i])
            i += 1
        assert i < len(lines), f"{rel(path)}:{start + 1}: unclosed code fence"
        blocks.append(Block(path, start + 1, lang, body, parse_only))
        prose.extend([""] * (len(body) + 2))  # keeps prose[k] on line k + 1
        i += 1
    return blocks, prose


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"`([^`]*)`", r"\1", heading.strip())
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)  # a link's text only
    text = re.sub(r"[^\w\- ]", "", text.lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    _, prose = split_markdown(path.read_text(encoding="utf-8"), path)
    seen: dict[str, int] = {}
    out = set()
    for line in prose:
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        a = github_anchor(m.group(1))
        n = seen.get(a, 0)
        seen[a] = n + 1
        out.add(a if n == 0 else f"{a}-{n}")
    return out


LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def links() -> list[tuple[Path, int, str]]:
    found = []
    for path in doc_files():
        _, prose = split_markdown(path.read_text(encoding="utf-8"), path)
        for n, line in enumerate(prose, 1):
            line = re.sub(r"`[^`]*`", "", line)  # inline code is not a link
            for m in LINK.finditer(line):
                target = m.group(1)
                if not re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto: ...
                    found.append((path, n, target))
    return found


# ------------------------------------------------------------------ commands
@dataclass
class Command:
    where: str
    argv: list
    run: bool
    expected: list  # output lines shown after it (console blocks); [] when none are shown


def _segments(tokens: list) -> list[list]:
    """Split a shell token list at control operators and redirections; keep each command's words."""
    out, cur, skip_next = [], [], False
    for t in tokens:
        if skip_next:
            skip_next = False
            continue
        if t in CONTROL:
            if t in (">", ">>", "<", "2>"):
                skip_next = True  # the redirection's file name
            out.append(cur)
            cur = []
            continue
        cur.append(t)
    out.append(cur)
    return [s for s in out if s]


def _is_cheap(argv: list) -> bool:
    return bool(argv) and (argv[0] == "inspect" or "--help" in argv or "-h" in argv or argv == ["--version"])


def _shell_lines(block: Block) -> list[tuple[int, str, list]]:
    """(line number, command text, output lines) for each command of a block."""
    out = []
    lines = block.lines
    i = 0
    while i < len(lines):
        line, n = lines[i], block.line + 1 + i
        i += 1
        if block.lang == "console":
            if not line.startswith("$ "):
                continue
            text = line[2:]
        else:
            text = line
        while text.rstrip().endswith("\\") and i < len(lines):  # continuation lines
            text = text.rstrip()[:-1] + " " + lines[i].lstrip()
            i += 1
        output = []
        if block.lang == "console":
            while i < len(lines) and not lines[i].startswith("$ "):
                output.append(lines[i])
                i += 1
        out.append((n, text, output))
    return out


def commands() -> list[Command]:
    found = []
    for path in doc_files():
        blocks, _ = split_markdown(path.read_text(encoding="utf-8"), path)
        for block in blocks:
            if block.lang not in SHELL_LANGS:
                continue
            for n, text, output in _shell_lines(block):
                try:
                    tokens = shlex.split(text, comments=True)
                except ValueError as e:
                    raise AssertionError(f"{rel(path)}:{n}: cannot split {text!r}: {e}") from None
                for seg in _segments(tokens):
                    if seg[0] != "sabench":
                        continue
                    argv = seg[1:]
                    found.append(Command(f"{rel(path)}:{n}", argv, _is_cheap(argv) and not block.parse_only,
                                         output))
    return found


ALL_COMMANDS = commands()


# ------------------------------------------------------------------ tests
def test_the_docs_exist_and_show_commands():
    names = {p.name for p in doc_files()}
    assert {"README.md", "guide.md", "reference.md", "methodology.md", "architecture.md"} <= names
    assert any(c.run for c in ALL_COMMANDS), "no command is run: the extraction is broken"
    assert any(c.argv and c.argv[0] == "run" for c in ALL_COMMANDS)


def test_readme_is_short_and_opens_with_the_two_commands():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; move detail into docs/"
    head = "\n".join(lines[:8])
    assert "make bench" in head and "make test" in head


@pytest.mark.parametrize("path,line,target", links(), ids=lambda v: str(v) if not isinstance(v, Path) else rel(v))
def test_relative_link_resolves(path, line, target):
    file_part, _, anchor = target.partition("#")
    dest = (path.parent / file_part).resolve() if file_part else path
    where = f"{rel(path)}:{line}: link {target!r}"
    assert dest.exists(), f"{where}: {dest} does not exist"
    assert ROOT in dest.parents or dest == ROOT, f"{where}: points outside the repository"
    if anchor:
        assert dest.suffix == ".md", f"{where}: an anchor into a non-markdown file"
        assert anchor in anchors(dest), f"{where}: no heading with anchor #{anchor} in {rel(dest)}"


@pytest.mark.parametrize("cmd", ALL_COMMANDS, ids=lambda c: f"{c.where} {' '.join(c.argv)[:40]}")
def test_command_parses(cmd):
    parser = build_parser()
    try:
        with redirect_stdout(io.StringIO()):
            args = parser.parse_args(cmd.argv)
    except SystemExit as e:  # --help / --version print and exit 0
        assert e.code == 0, f"{cmd.where}: `sabench {' '.join(cmd.argv)}` exits {e.code}"
        return
    except Exception as e:  # the CLI's parser raises its own error type for bad arguments
        pytest.fail(f"{cmd.where}: `sabench {' '.join(cmd.argv)}` does not parse: {e}")
    assert args.command == cmd.argv[0] and args.func is next(c.run for c in COMMANDS if c.name == cmd.argv[0])


@pytest.mark.parametrize("cmd", [c for c in ALL_COMMANDS if c.run],
                         ids=lambda c: f"{c.where} {' '.join(c.argv)[:40]}")
def test_cheap_command_runs_as_shown(cmd):
    buf = io.StringIO()
    try:
        with redirect_stdout(buf):
            code = main(cmd.argv)
    except SystemExit as e:
        code = e.code
    assert code == 0, f"{cmd.where}: `sabench {' '.join(cmd.argv)}` exited {code}"
    got = [line.rstrip() for line in buf.getvalue().splitlines()]
    i = 0
    for want in (w.rstrip() for w in cmd.expected):
        if want.strip() in ("", "..."):
            continue
        while i < len(got) and got[i] != want:
            i += 1
        assert i < len(got), f"{cmd.where}: shown output line not in the real output (or out of order):\n{want}"
        i += 1


# ------------------------------------------------------------------ the checker itself
def test_extraction_on_a_sample(tmp_path):
    md = tmp_path / "x.md"
    md.write_text("# Title: `a` b\n\n## Title: `a` b\n\n[x](#title-a-b-1)\n\n"
                  "```console\n$ sabench inspect --model tiny --json\n{\n$ echo hi && sabench --help | head\n```\n\n"
                  f"{PARSE_ONLY}\n```bash\nsabench run smoke \\\n  --out /tmp/o   # comment\n```\n")
    assert anchors(md) == {"title-a-b", "title-a-b-1"}
    blocks, _ = split_markdown(md.read_text(), md)
    assert [b.lang for b in blocks] == ["console", "bash"] and blocks[1].parse_only
    lines = _shell_lines(blocks[0]) + _shell_lines(blocks[1])
    assert [t for _, t, _ in lines][2] == "sabench run smoke  --out /tmp/o   # comment"
    assert lines[0][2] == ["{"]
    segs = [_segments(shlex.split(t, comments=True)) for _, t, _ in lines]
    assert segs == [[["sabench", "inspect", "--model", "tiny", "--json"]],
                    [["echo", "hi"], ["sabench", "--help"], ["head"]],
                    [["sabench", "run", "smoke", "--out", "/tmp/o"]]]
    assert _is_cheap(["inspect", "--model", "tiny"]) and not _is_cheap(["run", "smoke"])
