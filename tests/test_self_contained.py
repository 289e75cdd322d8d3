"""The repository cites only files it contains: no design notes of the team's workspace
(ALGORITHM.md, FACTS.md, ...), and every path of ours named in the code or docs exists."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUTSIDE = re.compile(r"\b(?:ALGORITHM|FACTS|ARCHITECTURE|STYLE|DEVELOPERS)\.md\b|\.\./shared|"
                     r"(?<![\w/.])design/")
OURS = re.compile(r"(?<![\w/.-])((?:vidt|serving|cli|tests|benchmarks|docs|scripts|proto|"
                  r"deploy|docker)/[\w./-]*\w\.(?:py|md|proto|toml|png|csv|cfg|txt|sh|json))")


def _tracked() -> list[Path]:
    out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout.split()
    return [ROOT / p for p in out if p.endswith((".py", ".md", ".toml", ".cfg", ".txt", ".proto",
                                                 ".sh", "Makefile", "Dockerfile", "run"))]


def test_no_reference_to_a_file_outside_the_repository():
    hits = []
    for p in _tracked():
        if p.name == "test_self_contained.py":
            continue
        for i, line in enumerate(p.read_text(errors="replace").splitlines(), 1):
            if OUTSIDE.search(line):
                hits.append(f"{p.relative_to(ROOT)}:{i}: {line.strip()[:100]}")
    assert not hits, "\n".join(hits)


def test_every_path_of_ours_that_is_named_exists():
    missing = []
    for p in _tracked():
        for i, line in enumerate(p.read_text(errors="replace").splitlines(), 1):
            for m in OURS.finditer(line):
                name = m.group(1)
                # proto import paths (vidt/v1/policy.proto) are relative to proto/
                if not any(base.joinpath(name).exists() for base in (ROOT, p.parent,
                                                                     ROOT / "proto")):
                    missing.append(f"{p.relative_to(ROOT)}:{i}: {name}")
    assert not missing, "\n".join(missing)
