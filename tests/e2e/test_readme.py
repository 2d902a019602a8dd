"""README.md runs as written: every ```bash block, in order, in a fresh directory (issue 16).

A newcomer copies the README's commands one after the other; each block must make the inputs of the
next, with nothing to edit.  This test does exactly that in a temporary copy of the checkout's configs
(plus the Makefile, for ``make demo``), with ``MLFASTSIM_QUICK=1`` as the README itself offers: every
command at smoke-test size, the chain of files intact.  A block preceded by
``<!-- readme-test: skip (why) -->`` needs what a test machine lacks (several nodes, a database, the
network) and is listed, not run.

It takes many minutes, so it is marked ``slow``: ``make test`` leaves it out, ``make test-readme`` (run by
``.ci/run`` after ``make test``) runs it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
SKIP = re.compile(r"<!--\s*readme-test:\s*skip\b(.*?)-->")
# each block gets this long (the slowest, the Belle II chain, takes a few minutes on a busy 2-core machine)
BLOCK_TIMEOUT_S = 1800


@dataclass
class Block:
    line: int  # where the block starts in README.md (1-based), for the failure message
    code: str
    skip: str | None  # the reason, for a block that is not run


def readme_blocks(text: str) -> list[Block]:
    """The ```bash blocks of ``text`` in order, each with its skip reason (None: run it)."""
    blocks: list[Block] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        if lines[i].strip() == "```bash":
            before = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
            match = SKIP.search(before)
            end = next(j for j in range(i + 1, len(lines)) if lines[j].strip() == "```")
            blocks.append(Block(i + 1, "\n".join(lines[i + 1 : end]), match.group(1).strip() if match else None))
            i = end
        i += 1
    return blocks


def test_readme_blocks_are_found() -> None:
    """The parser sees every block (a renamed fence would silently drop one from the slow test)."""
    blocks = readme_blocks(README.read_text(encoding="utf-8"))
    assert sum(README.read_text(encoding="utf-8").count(f) for f in ("```bash\n",)) == len(blocks)
    assert any("make demo" in b.code for b in blocks) and all(b.skip is None or b.skip for b in blocks)
    assert "MLFASTSIM_QUICK=1" in README.read_text(encoding="utf-8")


def _fresh_checkout(root: Path) -> Path:
    """What a fresh clone puts in front of a user: configs, scripts, the Makefile (the code is installed)."""
    work = root / "checkout"
    work.mkdir()
    for name in ("configs", "deploy", "benchmarks", "scripts"):
        shutil.copytree(REPO / name, work / name)
    for name in ("Makefile", "pyproject.toml"):
        shutil.copy2(REPO / name, work / name)  # mtimes kept: the venv's install stamp stays newer
    # `make demo` uses .venv/bin/mlfastsim: point it at this interpreter's, with an install stamp newer
    # than pyproject.toml so make installs nothing (a link to the whole venv would let make reinstall it)
    venv_bin = work / ".venv" / "bin"
    venv_bin.mkdir(parents=True)
    for name in ("python", "mlfastsim"):
        (venv_bin / name).symlink_to(Path(sys.executable).parent / name)
    (work / ".venv" / ".installed").touch()
    return work


@pytest.mark.slow
def test_readme_runs_top_to_bottom(tmp_path: Path) -> None:
    work = _fresh_checkout(tmp_path)
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "MLFASTSIM_QUICK": "1", "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg",
           "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}", "COLUMNS": "120"}
    skipped = []
    for block in readme_blocks(README.read_text(encoding="utf-8")):
        if block.skip is not None:
            skipped.append(f"README.md:{block.line} ({block.skip})")
            continue
        proc = subprocess.run(["bash", "-euo", "pipefail", "-c", block.code], cwd=work, env=env,
                              capture_output=True, text=True, timeout=BLOCK_TIMEOUT_S)
        if proc.returncode != 0:
            tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-25:])
            pytest.fail(f"README.md:{block.line}: block exited {proc.returncode}:\n{block.code}\n"
                        f"--- output ---\n{tail}")
    print("not run:", *skipped, sep="\n  ")  # shown with -s / -rA
