"""`--help` reads like a man page at 80 columns, in a real process (Rich sizes itself from COLUMNS)."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from cli_helpers import subprocess_env

COMMANDS = [[], ["upscale"], ["info"], ["weights"], ["weights", "list"], ["weights", "download"], ["weights", "convert"]]
TYPE_TAGS = re.compile(r"<(bool|str|int|float|path|file|list\[[^\]]*\]|[a-z]+ range)>")


def help_of(command: list[str], tmp_path) -> str:
    env = subprocess_env(tmp_path)
    env.update(COLUMNS="80", LINES="50", TERM="xterm")
    env.pop("NO_COLOR", None)
    result = subprocess.run(
        [sys.executable, "-m", "stablesr_cli", *command, "--help"],
        capture_output=True, env=env, cwd=tmp_path, timeout=120, text=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "stablesr")
def test_help_fits_80_columns_without_type_tags(tmp_path, command):
    text = help_of(command, tmp_path)
    assert max(len(line) for line in text.splitlines()) <= 80
    assert not TYPE_TAGS.search(text), TYPE_TAGS.search(text)
    assert "{" not in text.split("\n", 3)[1]  # the usage line: no `{INPUT...}...`


def test_upscale_help_has_metavars_defaults_panels_and_examples(tmp_path):
    text = help_of(["upscale"], tmp_path)
    assert "Usage: stablesr upscale [OPTIONS] INPUT..." in text
    for metavar in (r"--output\s+-o\s+PATH", r"--scale\s+-s\s+FLOAT", r"--steps\s+N\b", r"--format\s+png\|jpg\|webp\|tiff\|bmp"):
        assert re.search(metavar, text), metavar
    assert re.search(r"--dry-run\s{2,}Show", text)  # a flag: nothing between the name and its help
    assert "[default: 4.0]" in text and "[default: turbo]" in text
    panels = [re.search(rf"─ {re.escape(name)} ─", text) for name in ("Output", "Quality", "Model and hardware", "Tiling and memory", "Batch and reporting")]
    assert all(panels) and [p.start() for p in panels] == sorted(p.start() for p in panels)
    examples = text.index("Examples:")
    assert examples > panels[-1].start() and "stablesr upscale - < small.png > big.png" in text[examples:]
    assert "appended" in text.lower() and "photoout.png" in text  # the suffix is taken as written


def test_weights_help_paragraphs_reflow(tmp_path):
    """Each paragraph is wrapped once, by the terminal: a line ends early only where the next word
    would not have fitted (Rich leaves one column of padding on each side of 80)."""
    text = help_of(["weights"], tmp_path)
    description = text.split("Usage:", 1)[1].split("╭", 1)[0]
    paragraphs = [p for p in re.split(r"\n\s*\n", description) if p.strip()][1:]  # after the usage line
    assert len(paragraphs) >= 4
    for paragraph in paragraphs:
        rows = [line.strip() for line in paragraph.splitlines()]
        for line, following in zip(rows, rows[1:]):
            assert len(line) + 1 + len(following.split()[0]) > 78, (line, following)


def test_root_help_lists_the_commands(tmp_path):
    text = help_of([], tmp_path)
    for command in ("upscale", "info", "weights"):
        assert re.search(rf"│ {command}\s", text)
