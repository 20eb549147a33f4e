"""Every shell block of README.md and docs/*.md runs as written.

Each fenced block tagged `sh`, `bash`, `shell` or `console` is run with bash
(`set -e -o pipefail`) from the root of a scratch copy of the repository (the
example config, the fixtures, `.venv` pointing at this interpreter's), against
a real `hookledger serve` of `examples/hookledger.toml` on a free port with a
fresh SQLite database, as `make run` serves it. The blocks of one file run in
order against one server, so a file reads as one session. The only changes to
the text: `localhost:8000` and `127.0.0.1:8000` name the test's port, and
`hookledger` (bare or `.venv/bin/hookledger`) runs this checkout, with
`send` given that port when the block gives no `--url`. Environment
assignments in front of a `make run` of the same file (the secrets the
providers' examples need) go to the server.

A block must exit 0. A comment line `# -> OUTPUT` in a block (with the
`#   ` lines indented under it) is output the docs promise: every `"key":` shown must be in the block's standard output,
and so must every `"key":value` whose value is a string (without `...`),
`true`, `false` or `null` (numbers such as positions are not compared), and a
leading status (`202 {...}`) must be curl's when the block prints it (`-i`);
output that is not JSON must contain each of its words. Other comments are prose.

A block that cannot run here is marked, on the line just before its fence,
with `<!-- not run by tests/test_doc_commands.py: REASON -->`; the generated
part of docs/performance.md cannot hold markers, so NOT_RUN lists it. Any
other block, including a new one, runs.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import ServerProcess

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELLS = {"sh", "bash", "shell", "console"}
MARKER = re.compile(r"<!-- not run by tests/test_doc_commands\.py: (.+?) -->")
KEEP_MARKER = "<!-- Sections below are kept by `python -m bench ingest`. -->"
# Blocks excluded here rather than by a marker: (file, a line the block contains) -> reason.
NOT_RUN = {
    ("docs/performance.md", "-m bench ingest"): "a 25-minute benchmark (make bench)",
    ("docs/performance.md", "wrk -t1"): "wrk against a benchmark target, run by bench ingest",
    ("docs/performance.md", "py-spy record"): "py-spy on a benchmark process, run by bench ingest",
}
BLOCK_TIMEOUT = 30


@dataclass
class Block:
    doc: str  # relative path
    line: int  # of the opening fence
    text: str
    skip: str | None  # the reason it is not run, or None

    @property
    def name(self) -> str:
        return f"{self.doc}:{self.line}"


def blocks_of(path: Path) -> list[Block]:
    doc = path.relative_to(ROOT).as_posix()
    lines = path.read_text().splitlines()
    found: list[Block] = []
    i = 0
    while i < len(lines):
        fence = lines[i].strip()
        if not fence.startswith("```"):
            i += 1
            continue
        lang = fence[3:].strip()
        end = i + 1
        while end < len(lines) and not lines[end].strip().startswith("```"):
            end += 1
        if lang in SHELLS:
            text = "\n".join(lines[i + 1 : end]) + "\n"
            previous = next((s for s in reversed(lines[:i]) if s.strip()), "")
            marked = MARKER.search(previous)
            skip = marked.group(1) if marked else None
            for (listed, needle), reason in NOT_RUN.items():
                if listed == doc and needle in text:
                    skip = reason
            found.append(Block(doc, i + 1, text, skip))
        i = end + 1
    return found


def all_blocks() -> list[Block]:
    return [b for path in DOCS for b in blocks_of(path)]


def test_every_not_run_entry_still_names_a_block():
    texts = {(b.doc, b.text) for b in all_blocks()}
    for doc, needle in NOT_RUN:
        assert any(d == doc and needle in t for d, t in texts), f"NOT_RUN: no block {needle!r}"


def test_the_generated_part_of_performance_md_is_the_only_unmarked_exclusion():
    """A block above bench's marker is rewritten by `bench ingest`: markers cannot live
    there, so NOT_RUN covers it; every other excluded block carries its marker."""
    text = (ROOT / "docs/performance.md").read_text()
    assert KEEP_MARKER in text, "docs/performance.md lost the marker bench ingest keeps"
    generated_lines = text.split(KEEP_MARKER, 1)[0].count("\n")
    for b in all_blocks():
        if b.doc == "docs/performance.md" and b.line <= generated_lines:
            assert b.skip is not None, f"{b.name}: a generated block that would run"


def test_the_stand_alone_verifier_of_ledger_md_finds_a_changed_byte(tmp_path):
    """examples/verify_export.py, the chain of docs/ledger.md with the standard library
    alone: an export passes, and one changed header fails at that position. (The
    chain does not depend on the backend: SQLite only.)"""
    import json

    from ledger import migrate
    from ledger.recorder import make_engine
    from ledger.transfer import export_lines
    from tests.helpers import append, new_event

    engine = make_engine(f"sqlite:///{tmp_path / 'ledger.db'}")
    try:
        migrate.upgrade(engine)
        append(engine, [new_event(b'{"n":%d}' % n, event_id=f"e{n}") for n in range(3)])
        lines = list(export_lines(engine))
    finally:
        engine.dispose()
    good, bad = tmp_path / "good.jsonl", tmp_path / "bad.jsonl"
    good.write_bytes(b"".join(lines))
    doc = json.loads(lines[1])
    doc["headers"] = doc["headers"].replace("application/json", "application/jsoN")
    bad.write_bytes(lines[0] + json.dumps(doc).encode() + b"\n" + lines[2])
    script = str(ROOT / "examples" / "verify_export.py")
    ok = subprocess.run([sys.executable, script, str(good)], capture_output=True, text=True)
    assert (ok.returncode, ok.stdout) == (0, "chain intact: 3 events\n")
    broken = subprocess.run([sys.executable, script, str(bad)], capture_output=True, text=True)
    assert broken.returncode == 1
    assert broken.stdout == "chain broken at position 2: hash does not match the chain\n"


# --- running the blocks ---------------------------------------------------------

PRELUDE = r"""
set -e -o pipefail
hookledger() {
  local args=("$@") i
  if [[ " $* " == *" send "* && " $* " != *" --url "* ]]; then
    for ((i = 0; i < ${#args[@]}; i++)); do
      if [[ ${args[i]} == send ]]; then
        args+=(--url "http://127.0.0.1:$DOC_PORT/hooks/${args[i + 1]}")
        break
      fi
    done
  fi
  "$DOC_PYTHON" -m api.cli "${args[@]}"
}
"""


def rewrite(text: str, port: int) -> str:
    text = text.replace(".venv/bin/hookledger", "hookledger")
    return re.sub(r"\b(localhost|127\.0\.0\.1):8000\b", f"127.0.0.1:{port}", text)


def server_env(blocks: list[Block]) -> dict[str, str]:
    """Assignments written before `make run` in the file's blocks."""
    env: dict[str, str] = {}
    for b in blocks:
        for line in b.text.splitlines():
            if "make run" in line:
                before = line.split("make run", 1)[0].split()
                pairs = (w.partition("=") for w in before if re.match(r"[A-Z_]+=", w))
                env.update((name, value) for name, _, value in pairs)
    return env


def expectations(text: str) -> list[str]:
    """The `# -> ` comments, each with the `#   ` lines that continue it."""
    found: list[str] = []
    continuing = False
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("# -> "):
            found.append(stripped[5:])
            continuing = True
        elif continuing and re.match(r"#\s{2,}\S", stripped):
            found[-1] += " " + stripped[1:].strip()
        else:
            continuing = False
    return found


def check_output(block: Block, expected: str, stdout: str, stderr: str) -> None:
    where = f"{block.name}: promised {expected!r}\nstdout: {stdout[-2000:]}"
    status = re.match(r"(\d{3}) ", expected)
    if status and "HTTP/1.1 " in stdout:  # curl -i: the status line is output too
        assert f"HTTP/1.1 {status.group(1)} " in stdout, where
    if "{" in expected or "[" in expected:
        for key in re.findall(r'"([A-Za-z_][A-Za-z0-9_]*)":', expected):
            assert f'"{key}":' in stdout, where
        for pair in re.finditer(
            r'"([A-Za-z_][A-Za-z0-9_]*)":("(?:[^"\\]|\\.)*"|true|false|null)', expected
        ):
            if "..." not in pair.group(2):
                assert f'"{pair.group(1)}":{pair.group(2)}' in stdout, where
    else:
        for word in re.findall(r"[A-Za-z]{3,}", expected.split("(", 1)[0]):
            assert word in stdout + stderr, where


class Workspace:
    """A scratch root with the example config, fixtures and a server on it."""

    def __init__(self, tmp: Path, env: dict[str, str]) -> None:
        self.root = tmp / "repo"
        self.root.mkdir()
        shutil.copytree(ROOT / "examples", self.root / "examples")
        shutil.copytree(ROOT / "tests" / "fixtures", self.root / "tests" / "fixtures")
        (self.root / ".venv").symlink_to(Path(sys.executable).parent.parent)
        (self.root / "data").mkdir()
        config = self.root / "examples" / "hookledger.toml"
        self.env = {
            "PYTHONPATH": str(ROOT),
            "HOOKLEDGER_DATABASE_URL": f"sqlite:///{self.root / 'data' / 'hookledger.db'}",
            **env,
        }
        self.server = ServerProcess(config, self.env)
        # `make run` serves with the projectors in-process; ServerProcess runs with
        # --no-projector, so a worker beside it does their work.
        self.projector = subprocess.Popen(
            [sys.executable, "-m", "api.cli", "project", "--config", str(config)],
            env={**os.environ, **self.env},
            cwd=self.root,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )

    def run(self, block: Block) -> None:
        env = {
            **os.environ,
            **self.env,
            "DOC_PORT": str(self.server.port),
            "DOC_PYTHON": sys.executable,
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        }
        script = PRELUDE + rewrite(block.text, self.server.port)
        done = subprocess.run(
            ["bash", "-c", script],
            cwd=self.root,
            env=env,
            capture_output=True,
            text=True,
            timeout=BLOCK_TIMEOUT,
            stdin=subprocess.DEVNULL,
        )
        assert done.returncode == 0, (
            f"{block.name} exited {done.returncode}\n{block.text}\n"
            f"stdout: {done.stdout[-3000:]}\nstderr: {done.stderr[-3000:]}"
        )
        for expected in expectations(block.text):
            check_output(block, expected, done.stdout, done.stderr)

    def stop(self) -> None:
        if self.projector.poll() is None:
            os.killpg(self.projector.pid, signal.SIGTERM)
            try:
                self.projector.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.projector.pid, signal.SIGKILL)
        self.server.stop()


RUN = [p for p in DOCS if any(b.skip is None for b in blocks_of(p))]


@pytest.mark.parametrize("doc", RUN, ids=[p.relative_to(ROOT).as_posix() for p in RUN])
def test_the_shell_blocks_of_a_doc_run_as_written(doc, tmp_path):
    blocks = blocks_of(doc)
    workspace = Workspace(tmp_path, server_env(blocks))
    try:
        for block in blocks:
            if block.skip is None:
                workspace.run(block)
    finally:
        workspace.stop()
