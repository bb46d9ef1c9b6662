"""TEST-ONLY stand-in for crictl: `--version` / `version` only; it talks to no runtime."""

from __future__ import annotations

from . import Failed, Tool


def main(tool: Tool, argv: list[str]) -> int:
    if "--version" in argv or "-v" in argv or argv[:1] == ["version"]:
        print(tool.version_line())
        return 0
    raise Failed("the crictl stand-in makes no CRI calls (it implements --version only)")
