"""README.md's examples run as written: every ```python block executes, every `ukd ...` command line parses.

A Python block runs in a fresh namespace, in a temporary working directory, on the CPU; a failure names the line of
README.md where the block starts. Command lines are parsed by ``ukd.cli.build_parser()`` (nothing is trained), and
the first-steps block is checked to need only the checkpoints its earlier lines write.
"""

from __future__ import annotations

import re
import shlex
import traceback
from pathlib import Path
from typing import NamedTuple

import pytest

from ukd.cli import build_parser, config_from_args

README = Path(__file__).resolve().parents[1] / "README.md"
_FENCE = re.compile(r"^```(\w*)\s*$")


class CodeBlock(NamedTuple):
    """One fenced block of a Markdown file.

    Attributes:
        language: the fence's info string (``"python"``, ``"bash"``, or ``""``).
        line: the 1-based line number of the block's first line of code in the file.
        source: the code, lines joined with ``"\\n"``.
    """

    language: str
    line: int
    source: str


def extract_blocks(markdown: str) -> list[CodeBlock]:
    """Every fenced (```) block of ``markdown``, in order; an unclosed fence is an error."""
    blocks: list[CodeBlock] = []
    language: str | None = None
    start = 0
    body: list[str] = []
    for number, text in enumerate(markdown.splitlines(), start=1):
        fence = _FENCE.match(text)
        if language is None:
            if fence:
                language, start, body = fence.group(1), number + 1, []
        elif text.strip() == "```":
            blocks.append(CodeBlock(language, start, "\n".join(body)))
            language = None
        else:
            body.append(text)
    if language is not None:
        raise ValueError(f"README.md:{start - 1}: unclosed ``` fence")
    return blocks


def run_python_block(block: CodeBlock) -> None:
    """Execute ``block`` in a fresh namespace; any exception becomes an AssertionError naming README.md's line."""
    namespace = {"__name__": "__readme__"}
    try:
        exec(compile(block.source, f"README.md:{block.line}", "exec"), namespace)
    except Exception as exc:  # every failure of a README example is reported the same way
        detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        raise AssertionError(f"README.md:{block.line}: the python block starting here fails: {detail}") from exc


class CommandLine(NamedTuple):
    """One command of a ```bash block: its README.md line, the text, and the arguments after ``ukd`` (or None)."""

    line: int
    text: str
    ukd_args: list[str] | None


def _ukd_arguments(words: list[str]) -> list[str] | None:
    """The arguments a command gives to ``ukd`` (``ukd ...``, ``python -m ukd ...``, ``torchrun ... -m ukd ...``)."""
    if not words:
        return None
    if words[0] == "ukd":
        return words[1:]
    if words[0] in ("torchrun", "python", "python3"):
        for i in range(len(words) - 1):
            if words[i] == "-m" and words[i + 1] == "ukd":
                return words[i + 2 :]
    return None  # pip, bash, python -m pytest, ...


def command_lines(blocks: list[CodeBlock]) -> list[CommandLine]:
    """Each command of the bash blocks (comments stripped, ``&&`` / ``;`` chains split), in README order."""
    commands = []
    for block in blocks:
        if block.language != "bash":
            continue
        for offset, text in enumerate(block.source.splitlines()):
            words = shlex.split(text, comments=True)
            chain: list[str] = []
            for word in [*words, "&&"]:
                if word in ("&&", ";", "||"):
                    if chain:
                        commands.append(CommandLine(block.line + offset, shlex.join(chain), _ukd_arguments(chain)))
                    chain = []
                else:
                    chain.append(word)
    return commands


TRAINING_COMMANDS = ("train-teacher", "distill", "demo")
README_BLOCKS = extract_blocks(README.read_text(encoding="utf-8"))
PYTHON_BLOCKS = [b for b in README_BLOCKS if b.language == "python"]
UKD_COMMANDS = [c for c in command_lines(README_BLOCKS) if c.ukd_args is not None]


def test_the_readme_has_the_examples_these_tests_check() -> None:
    assert len(PYTHON_BLOCKS) >= 2
    assert len(UKD_COMMANDS) >= 8
    assert any(c.text.startswith("torchrun") for c in UKD_COMMANDS)


@pytest.mark.parametrize("block", PYTHON_BLOCKS, ids=[f"README.md:{b.line}" for b in PYTHON_BLOCKS])
def test_python_block_runs(block: CodeBlock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # whatever a block writes stays out of the checkout
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    run_python_block(block)


def test_a_broken_python_block_fails_with_its_line() -> None:
    """The runner can fail: an example that uses a name it never defined (the old README's ``student``)."""
    block = extract_blocks("text\n\n```python\nimport torch\n\nstudent(torch.zeros(1))\n```\n")[0]
    assert block.line == 4
    with pytest.raises(AssertionError, match=r"README\.md:4: .*NameError: name 'student' is not defined"):
        run_python_block(block)


@pytest.mark.parametrize("command", UKD_COMMANDS, ids=[f"README.md:{c.line}" for c in UKD_COMMANDS])
def test_ukd_command_line_parses(command: CommandLine) -> None:
    """Parsed by ukd's own parser; a training command's configuration (shipped names, values) also resolves."""
    try:
        args = build_parser().parse_args(command.ukd_args)
    except SystemExit as exc:
        pytest.fail(f"README.md:{command.line}: `{command.text}` does not parse (exit status {exc.code})")
    if args.command in TRAINING_COMMANDS:
        config_from_args(args)  # a ConfigError (unknown --config name, bad value) fails the test with its message


def test_command_lines_are_found_in_chains_comments_and_torchrun() -> None:
    block = CodeBlock(
        "bash", 10, "bash x.sh && ukd demo   # the main job\n# a comment\ntorchrun -n 2 -m ukd evaluate a.pt"
    )
    assert command_lines([block]) == [
        CommandLine(10, "bash x.sh", None),
        CommandLine(10, "ukd demo", ["demo"]),
        CommandLine(12, "torchrun -n 2 -m ukd evaluate a.pt", ["evaluate", "a.pt"]),
    ]
    with pytest.raises(SystemExit):  # and a command that does not parse fails the parse test
        build_parser().parse_args(["distill", "--method", "hint9"])


def _first_steps() -> list[CommandLine]:
    """The commands of the bash block that starts with ``ukd demo`` (the ones a new user runs in order)."""
    (block,) = [b for b in README_BLOCKS if b.language == "bash" and b.source.startswith("ukd demo")]
    return [c for c in command_lines([block]) if c.ukd_args is not None]


def test_first_steps_need_only_what_earlier_lines_write() -> None:
    """Run in order from a fresh directory, each line finds its teacher / checkpoint and gets a directory of its own.

    After ``ukd demo`` the teacher is ``runs/demo/teacher/last.pt``, not ``runs/teacher/last.pt``: a line that
    names the latter before ``train-teacher`` ran would fail for a new user.
    """
    written: set[Path] = set()
    output_dirs: set[Path] = set()
    steps = _first_steps()
    assert {"demo", "train-teacher", "distill", "evaluate"} <= {c.ukd_args[0] for c in steps if c.ukd_args}
    assert any(c.text.startswith("torchrun") for c in steps)
    for command in steps:
        args = build_parser().parse_args(command.ukd_args)
        where = f"README.md:{command.line}: `{command.text}`"
        if args.command == "evaluate":
            assert Path(args.checkpoint) in written, f"{where} evaluates a checkpoint no earlier line wrote"
        if args.command not in TRAINING_COMMANDS:
            continue
        cfg = config_from_args(args)
        out = Path(cfg["output_dir"])
        if args.command == "distill":
            teacher = Path(cfg["teacher"]["weights"])
            assert teacher in written, f"{where}: its teacher {teacher} is written by no earlier line"
        runs = [out / "teacher", *(out / m for m in cfg["demo"]["methods"])] if args.command == "demo" else [out]
        for run in runs:
            assert run not in output_dirs, f"{where} writes into {run}, which an earlier line already wrote"
            output_dirs.add(run)
            written.add(run / "last.pt")
