"""Ansible INI inventories, read as Ansible's `ini` inventory plugin reads them, with the line of
every host, variable and section.

    # comment (`;` too)
    [control_plane]
    cp1 ansible_host=10.0.0.11          # host line: name[:port] key=value ... (shell quoting)
    w[1:3] ansible_user=debian          # a range: w1 w2 w3
    [workers:vars]
    node_labels={'tier': 'app'}         # values as Python literals, else plain text
    [k8s:children]
    control_plane

`parse` gives the sections as written (the kubeasz importer reads those); `to_doc` turns them
into the shape of a YAML inventory (`all.vars`, `all.hosts`, `all.children.<group>.{hosts,vars,
children}`) with a line for every key path, so the inventory loader reads both the same way.
"""

from __future__ import annotations

import ast
import re
import shlex
import string
from dataclasses import dataclass, field
from typing import Any

SECTION = re.compile(r"^\[([^:\]\s]+)(?::(\w+))?\]\s*(?:#.*)?$")
GROUP_NAME = re.compile(r"^([^:\]\s]+)\s*(?:#.*)?$")
RANGE = re.compile(r"^(.*?)\[([^\]:]*):([^\]:]*)(?::(\d+))?\](.*)$")
KINDS = ("hosts", "vars", "children")


class IniError(Exception):
    """A line Ansible would refuse: (line, key, message, fix)."""

    def __init__(self, line: int, key: str, message: str, fix: str):
        super().__init__(message)
        self.line, self.key, self.message, self.fix = line, key, message, fix


@dataclass
class HostLine:
    name: str
    line: int
    vars: dict[str, Any] = field(default_factory=dict)
    var_lines: dict[str, int] = field(default_factory=dict)


@dataclass
class Group:
    name: str
    line: int  # of its first section header
    hosts: list[HostLine] = field(default_factory=list)
    vars: dict[str, Any] = field(default_factory=dict)
    var_lines: dict[str, int] = field(default_factory=dict)
    children: dict[str, int] = field(default_factory=dict)  # child -> line
    declared: bool = False  # a [name] or [name:children] section exists (not just [name:vars])


def looks_like_ini(path: str, text: str) -> bool:
    """An `.ini` file, or one whose first line that is not blank or a comment is a section."""
    if path.endswith(".ini"):
        return True
    for line in text.splitlines():
        line = line.strip()
        if line and line[0] not in "#;":
            return bool(SECTION.match(line))
    return False


def value(text: str) -> Any:
    """A variable's value as Ansible reads it: a Python literal, else the text itself."""
    try:
        v = ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return text
    return _plain(v)


def _plain(v: Any) -> Any:
    if isinstance(v, (list, tuple, set)):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if v is ... or isinstance(v, (complex, bytes)):
        return str(v)
    return v


def expand(pattern: str, line: int) -> list[str]:
    """`w[1:3]` -> w1 w2 w3; `n[01:10:2]` keeps the zero padding; `[a:c]` letters."""
    m = RANGE.match(pattern)
    if not m:
        return [pattern]
    head, beg, end, step, tail = m.groups()
    fix = "write a range as name[1:3], name[01:10] or name[a:c]"
    if not end:
        raise IniError(line, pattern, "a host range without an end", fix)
    beg = beg or "0"
    if beg in string.ascii_letters and end in string.ascii_letters:
        i, j = string.ascii_letters.index(beg), string.ascii_letters.index(end)
        if i > j:
            raise IniError(line, pattern, "a host range whose start is after its end", fix)
        seq = list(string.ascii_letters[i:j + 1])
    elif beg.isdigit() and end.isdigit():
        width = len(beg) if beg[0] == "0" and len(beg) > 1 else 0
        if width and len(end) != width:
            raise IniError(line, pattern, "a zero-padded host range whose start and end differ "
                           "in length", fix)
        if int(beg) > int(end) or (step is not None and int(step) < 1):
            raise IniError(line, pattern, "an empty host range", fix)
        seq = [str(n).zfill(width) for n in range(int(beg), int(end) + 1, int(step or 1))]
    else:
        raise IniError(line, pattern, "a host range must be numbers or single letters", fix)
    return [h for s in seq for h in expand(f"{head}{s}{tail}", line)]


def _host_and_port(token: str, line: int) -> tuple[str, int | None]:
    """`name:2222` -> (name, 2222); a colon inside a range's brackets is not a port."""
    m = re.match(r"^(.*[^:]):(\d+)$", token)
    if m and m.group(1).count("[") == m.group(1).count("]"):
        return m.group(1), int(m.group(2))
    if token.endswith(":"):
        raise IniError(line, token, "a host name ending in ':' (the colon is kept for a port)",
                       "write name:PORT or remove the colon")
    return token, None


def parse(text: str) -> dict[str, Group]:
    """The groups of an INI inventory in the order written; hosts before any section are in
    the group `ungrouped`, `[all:vars]` in `all`. Raises `IniError` at the first bad line."""
    groups: dict[str, Group] = {}
    name, kind = "ungrouped", "hosts"
    pending: dict[str, tuple[int, str]] = {}  # group used before its section: line, how

    def group(n: str, line: int) -> Group:
        return groups.setdefault(n, Group(n, line))

    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        m = SECTION.match(line)
        if m:
            name, kind = m.group(1), m.group(2) or "hosts"
            if kind not in KINDS:
                raise IniError(number, f"[{name}:{kind}]", f"unknown section type '{kind}'",
                               "a section is [group], [group:vars] or [group:children]")
            g = group(name, number)
            if kind != "vars":
                g.declared = True
            continue
        if line.startswith("["):
            raise IniError(number, line, "not a valid section header", "write [group], "
                           "[group:vars] or [group:children], without spaces, with the ']'")
        if kind == "vars":
            if "=" not in line:
                raise IniError(number, line.split()[0], "expected key=value in a :vars section",
                               "write one `key=value` per line")
            k, v = (s.strip() for s in line.split("=", 1))
            g = group(name, number)
            g.vars[k], g.var_lines[k] = value(v), number
            pending.setdefault(name, (number, "vars"))
        elif kind == "children":
            m = GROUP_NAME.match(line)
            if not m:
                raise IniError(number, line, "expected a group name in a :children section",
                               "write one group name per line")
            group(name, number).children[m.group(1)] = number
            pending.setdefault(m.group(1), (number, f"children of {name}"))
        else:
            try:
                tokens = shlex.split(line, comments=True)
            except ValueError as e:
                raise IniError(number, line.split()[0], f"cannot read this host line: {e}",
                               "close the quote") from None
            if not tokens:
                continue
            host, port = _host_and_port(tokens[0], number)
            if host == "---":
                raise IniError(number, host, "'---' starts a YAML document", "this file mixes "
                               "YAML and INI: write it as one or the other")
            variables, lines = {}, {}
            for t in tokens[1:]:
                if "=" not in t:
                    raise IniError(number, t, "expected key=value after the host name",
                                   "write host variables as key=value; quote values that contain spaces")
                k, v = t.split("=", 1)
                variables[k], lines[k] = value(v), number
            if port is not None:
                variables["ansible_port"], lines["ansible_port"] = port, number
            g = group(name, number)
            g.declared = True
            for h in expand(host, number):
                g.hosts.append(HostLine(h, number, dict(variables), dict(lines)))
    for n, (number, how) in pending.items():
        if n in ("all", "ungrouped") or (n in groups and groups[n].declared):
            continue
        if how == "vars":
            raise IniError(number, f"[{n}:vars]", f"vars for the group '{n}', which has no "
                           "[section] of its own", f"add a [{n}] section; it may be empty")
        raise IniError(number, n, f"'{n}' is listed as one of the {how} but has no section",
                       f"add a [{n}] section; it may be empty")
    return groups


def to_doc(groups: dict[str, Group]) -> tuple[dict, dict[tuple, int]]:
    """The groups as a YAML inventory's data and the line of every key path."""
    root: dict = {}
    lines: dict[tuple, int] = {("all",): 1}
    data = {"all": root}

    for name, g in groups.items():
        if name == "all":
            at, body = ("all",), root
        else:
            at = ("all", "children", name)
            body = root.setdefault("children", {}).setdefault(name, {})
            lines.setdefault(("all", "children"), g.line)
            lines.setdefault(at, g.line)
        for h in g.hosts:
            hosts = body.setdefault("hosts", {})
            lines.setdefault(at + ("hosts",), h.line)
            lines.setdefault(at + ("hosts", h.name), h.line)
            hosts.setdefault(h.name, {}).update(h.vars)
            for k, n in h.var_lines.items():
                lines[at + ("hosts", h.name, k)] = n
        if g.vars:
            body.setdefault("vars", {}).update(g.vars)
            lines.setdefault(at + ("vars",), min(g.var_lines.values()))
            for k, n in g.var_lines.items():
                lines[at + ("vars", k)] = n
        for c, n in g.children.items():
            if name == "all":
                root.setdefault("children", {}).setdefault(c, {})
            else:
                body.setdefault("children", {}).setdefault(c, None)
            lines.setdefault(at + ("children",), n)
            lines.setdefault(at + ("children", c), n)
    return data, lines
