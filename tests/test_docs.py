"""Every command and code block of the README and the guides runs as written.

The README and the guides under docs/ (not docs/RESULTS.md and not docs/results/, whose commands need data sets the
repository does not ship) are read for fenced blocks. ```bash and ```python blocks run, file by file, in order, in a
fresh temporary directory that is also $HOME (so the docs' `~/.tfdisguise/keys/` lands there), with .venv/bin first
on the PATH. Bash blocks run with `bash -e -o pipefail`; a bash block that starts `tfdisguise serve` is a server:
it starts in the background, the test waits (bounded) until its ports accept connections, and it is stopped when
the file is done. The Python blocks of a file run in one Python process, in order, so a later block sees an earlier
block's names, as a reader who pastes them into one session does. ```console and ```text blocks are shown, not run
(installs, Docker, Kubernetes, and runs that need data sets or take hours); each file may have only a few, and
every `tfdisguise` command in them must still parse.

To finish in minutes on 2 cores, the test rewrites a few things before it runs a block, and nothing else:
- sizes: `--epochs N` and `epochs=N` become 1, `--keys N` becomes 1, `--limit N` becomes at most 300;
- ports: each port number after `--port`, `--rest_api_port`, `localhost:` or `127.0.0.1:` becomes a free port
  (the same number maps to the same free port throughout a file), since the documented ports may be taken here.
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import shlex
import signal
import socket
import stat
import subprocess
import sys
import threading
import time

import pytest

from tfdisguise import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV_BIN = os.path.dirname(sys.executable)
DOCS = ["README.md"] + sorted(
    os.path.join("docs", name) for name in os.listdir(os.path.join(ROOT, "docs"))
    if name.endswith(".md") and name not in ("RESULTS.md", "api.md"))
RUN_LANGUAGES = ("bash", "python")
SHOWN_LANGUAGES = ("console", "text")
MAX_SHOWN_BLOCKS = 3
BLOCK_SECONDS = 300  # one block at test size; a hang fails the test instead of stalling the suite
SERVER_START_SECONDS = 120

FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```[ \t]*$", re.S | re.M)


def fenced_blocks(path: str) -> list[tuple[str, str]]:
    """(language, text) of each fenced block of a file, in order.

    >>> [lang for lang, _ in fenced_blocks("README.md")][:1]
    ['console']
    """
    with open(os.path.join(ROOT, path), encoding="utf-8") as f:
        text = f.read()
    return [(m.group(1).strip(), m.group(2)) for m in FENCE.finditer(text)]


def command_lines(block: str) -> list[list[str]]:
    """The `tfdisguise ...` commands of a shell block as argument lists (continuations joined, comments dropped).

    >>> command_lines("tfdisguise keygen --image-shape 28,28,1 \\\\\\n  --out k.json   # a comment\\nls")
    [['keygen', '--image-shape', '28,28,1', '--out', 'k.json']]
    """
    commands = []
    for line in block.replace("\\\n", " ").splitlines():
        line = line.strip()
        if line.startswith("tfdisguise "):
            words = shlex.split(line, comments=True)
            commands.append([w for w in words[1:] if w != "&"])
    return commands


def shrink(block: str, ports: dict[str, str]) -> str:
    """The block at test size, on free ports (the module docstring lists every rewrite).

    >>> shrink("train --epochs 10 --keys 3 --limit 2000 --port 8500 x localhost:8500; fit(ds, epochs=5)",
    ...        {"8500": "1234"})
    'train --epochs 1 --keys 1 --limit 300 --port 1234 x localhost:1234; fit(ds, epochs=1)'
    """
    block = re.sub(r"--epochs \d+", "--epochs 1", block)
    block = re.sub(r"\bepochs=\d+", "epochs=1", block)
    block = re.sub(r"--keys \d+", "--keys 1", block)
    block = re.sub(r"--limit (\d+)", lambda m: f"--limit {min(int(m.group(1)), 300)}", block)
    return re.sub(r"(--port |--rest_api_port |localhost:|127\.0\.0\.1:)(\d{4,5})\b",
                  lambda m: m.group(1) + ports.setdefault(m.group(2), str(free_port())), block)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, process: subprocess.Popen, deadline: float) -> None:
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the server exited with {process.returncode} before port {port} opened:\n"
                                 f"{process.stdout.read()[-4000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"the server's port {port} did not open within {SERVER_START_SECONDS} s")


# Runs the Python blocks of one file in one namespace: a length line, then the block; answers with a marker line.
PYTHON_DRIVER = """
import sys, traceback
names = {"__name__": "__main__"}
while True:
    header = sys.stdin.readline()
    if not header:
        break
    code = sys.stdin.read(int(header))
    try:
        exec(compile(code, "<docs block>", "exec"), names)
        status = "OK"
    except BaseException:
        traceback.print_exc()
        status = "FAILED"
    sys.stdout.flush()
    sys.stderr.flush()
    print("\\n@@BLOCK " + status + "@@", flush=True)
"""


class PythonSession:
    """One Python process for a file's Python blocks, read through a thread so that a hung block times out."""

    def __init__(self, cwd: str, env: dict):
        self.process = subprocess.Popen([sys.executable, "-c", PYTHON_DRIVER], cwd=cwd, env=env, text=True,
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        start_new_session=True)
        self.lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self):
        for line in self.process.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def run(self, code: str, timeout: float) -> tuple[bool, str]:
        self.process.stdin.write(f"{len(code)}\n{code}")
        self.process.stdin.flush()
        output, deadline = [], time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                return False, "".join(output) + f"\n(timed out after {timeout} s)"
            if line is None:
                return False, "".join(output) + "\n(the Python process ended)"
            if line.startswith("@@BLOCK "):
                return line.strip() == "@@BLOCK OK@@", "".join(output)
            output.append(line)

    def close(self):
        stop(self.process)


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=20)


def run_file(path: str, workdir: str) -> str:
    """Runs a file's blocks in order in `workdir`; returns everything they printed, fails on the first error."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST", "KERAS_BACKEND"))}
    env.update(HOME=workdir, PATH=VENV_BIN + os.pathsep + env.get("PATH", ""), PYTHONUNBUFFERED="1",
               MPLBACKEND="Agg")
    ports: dict[str, str] = {}
    servers: list[subprocess.Popen] = []
    session = None
    transcript = []
    try:
        for index, (language, text) in enumerate(fenced_blocks(path)):
            if language not in RUN_LANGUAGES:
                continue
            code = shrink(text, ports)
            where = f"{path}, block {index + 1} ({language}):\n{text}"
            if language == "python":
                session = session or PythonSession(workdir, env)
                ok, output = session.run(code, BLOCK_SECONDS)
                transcript.append(output)
                assert ok, f"{where}\nfailed:\n{output[-6000:]}"
            elif code.lstrip().startswith("tfdisguise serve"):
                server = subprocess.Popen(["bash", "-e", "-c", code], cwd=workdir, env=env, text=True,
                                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
                servers.append(server)
                deadline = time.monotonic() + SERVER_START_SECONDS
                for port in re.findall(r"--(?:port|rest_api_port) (\d+)", code):
                    wait_for_port(int(port), server, deadline)
            else:
                try:
                    done = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", code], cwd=workdir, env=env,
                                          text=True, capture_output=True, timeout=BLOCK_SECONDS)
                except subprocess.TimeoutExpired as e:
                    pytest.fail(f"{where}\ntimed out after {BLOCK_SECONDS} s:\n{e.stdout}\n{e.stderr}")
                transcript.append(done.stdout + done.stderr)
                assert done.returncode == 0, (f"{where}\nexited with {done.returncode}:\n"
                                              f"{done.stdout[-3000:]}\n{done.stderr[-6000:]}")
    finally:
        if session is not None:
            session.close()
        for server in servers:
            stop(server)
    return "".join(transcript)


@pytest.mark.parametrize("path", DOCS)
def test_every_block_runs_as_written(path, tmp_path):
    workdir = str(tmp_path)
    transcript = run_file(path, workdir)
    if path == "README.md":
        # The walk's promises, seen from outside: a private key file where keygen was told to write it, a trained
        # and exported model, and accuracy printed by both the client and the Python example.
        keygen = next(c for _, text in fenced_blocks(path) for c in command_lines(text) if c[0] == "keygen")
        key = os.path.join(workdir, keygen[keygen.index("--out") + 1].replace("~", workdir, 1))
        assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
        assert os.path.isfile(os.path.join(workdir, "run", "model.keras"))
        assert os.path.isdir(os.path.join(workdir, "saved_models", "mnist", "1"))
        assert "accuracy on 1,000 disguised held-out digits" in transcript
        assert "labelled images)" in transcript, "`tfdisguise predict` on the labelled digits.npz printed no accuracy"
    if path == os.path.join("docs", "serving.md"):
        assert "accuracy through the server:" in transcript
        assert transcript.count("labelled images)") == 3, "the gRPC, REST and TLS predictions each print accuracy"


@pytest.mark.parametrize("path", DOCS)
def test_blocks_are_runnable_or_few_and_shown(path):
    blocks = fenced_blocks(path)
    for language, text in blocks:
        assert language in RUN_LANGUAGES + SHOWN_LANGUAGES, f"{path}: a ```{language} block: name its language"
        if language in RUN_LANGUAGES:
            assert "../shared" not in text and "/work/" not in text, f"{path}: a path a user lacks:\n{text}"
            assert not re.search(r"\[--|<[a-z_ -]+>", text), f"{path}: a placeholder or [optional] part:\n{text}"
    shown = [text for language, text in blocks if language in SHOWN_LANGUAGES]
    assert len(shown) <= MAX_SHOWN_BLOCKS, f"{path}: {len(shown)} blocks are shown, not run; keep them rare"


def test_every_documented_command_line_parses():
    """Also the shown blocks' commands, which the run test does not reach: a renamed flag fails here."""
    parser = cli.build_parser()
    commands = [c for path in DOCS for _, text in fenced_blocks(path) for c in command_lines(text)]
    assert {c[0] for c in commands} >= {"keygen", "preview", "disguise", "train", "stream", "export", "serve",
                                        "predict", "calibrate"}
    for args in commands:
        try:
            parser.parse_args(args)
        except SystemExit as e:  # argparse exits with 2 on an unknown flag or a bad value
            pytest.fail(f"the docs' `tfdisguise {shlex.join(args)}` does not parse (exit {e.code})")


def test_readme_reads_in_five_minutes_and_its_links_resolve():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        text = f.read()
    long_lines = [line for line in text.splitlines() if len(line) > 120]
    assert not long_lines, f"README lines over 120 characters: {long_lines}"
    assert len(text.split()) < 1500, "the README is for five minutes' reading; move detail into docs/"
    for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", text):
        assert os.path.exists(os.path.join(ROOT, target)), f"README links to {target}, which does not exist"


def test_the_serving_guide_tables_every_flag_of_serve():
    """The TF Serving support table names every option `tfdisguise serve` takes, so a new flag gets a row."""
    with open(os.path.join(ROOT, "docs", "serving.md"), encoding="utf-8") as f:
        text = f.read()
    section = text[text.index("## TF Serving support"):]
    section = section[:section.index("\n## ", 1)]
    tabled = set(re.findall(r"`(--[a-z_]+)`", "\n".join(ln for ln in section.splitlines() if ln.startswith("|"))))
    serve = cli.build_parser()._subparsers._group_actions[0].choices["serve"]
    flags = {o for action in serve._actions for o in action.option_strings if o.startswith("--") and o != "--help"}
    flags -= {"--log-level"}  # every command's, not a serving flag
    assert flags - tabled == set(), f"docs/serving.md's table lacks these flags of `tfdisguise serve`: {flags - tabled}"

