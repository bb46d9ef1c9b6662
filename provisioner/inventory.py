"""Read an Ansible YAML inventory into a `Cluster`, keeping the file line of every key.

The file stays a plain Ansible inventory (`ansible-inventory -i FILE --list` reads it):

    all:
      vars:
        cluster_name: lab            # cluster settings, flat in all.vars ...
        cluster: {cni: flannel}      # ... or in a `cluster:` block inside them
        ansible_user: root
      children:
        control_plane: {hosts: {cp1: {ansible_host: 10.90.0.11}}}
        workers:       {hosts: {w1:  {ansible_host: 10.90.0.21}}}
        etcd:          {hosts: {...}}   # external etcd (kubeadm only)
        loadbalancers: {hosts: {...}}   # haproxy + keepalived pair

`load` collects every structural problem (syntax, types, unknown keys, missing groups), then
every semantic one (`provisioner.validate`), and raises `InvalidInventory` with all of them.
"""

from __future__ import annotations

import difflib
import os
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import yaml

from . import model
from .errors import InvalidInventory, Problem

# ---------------------------------------------------------------------------------------------
# The settings a cluster has: key -> (type, default, allowed values or None, what it is).
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Setting:
    type: type | tuple[type, ...]
    default: Any
    choices: tuple | None = None
    help: str = ""


SETTINGS: dict[str, Setting] = {
    "cluster_name": Setting(str, "k8s", None, "name of the cluster and of its state folder"),
    "distribution": Setting(str, "kubeadm", ("kubeadm", "k3s"), "how Kubernetes is installed"),
    "kubernetes_version": Setting(str, None, None, "e.g. v1.32.4 (kubeadm) or v1.32.4+k3s1 (k3s)"),
    "pod_cidr": Setting(str, "10.244.0.0/16", None, "pod network"),
    "service_cidr": Setting(str, "10.96.0.0/12", None, "service network"),
    "cluster_domain": Setting(str, "cluster.local", None, "DNS domain of services"),
    "cni": Setting(str, "flannel", ("flannel", "calico"), "pod network plugin"),
    "ha_mode": Setting(str, None, ("none", "kube-vip", "haproxy", "local"), "API load balancing"),
    "api_vip": Setting(str, None, None, "virtual IP of the API (kube-vip, haproxy modes)"),
    "api_port": Setting(int, 6443, None, "API server port"),
    "vip_interface": Setting(str, "eth0", None, "interface that carries the VIP"),
    "registry_mirrors": Setting(dict, {}, None, "registry -> list of mirror URLs"),
    "sandbox_image": Setting(str, "registry.k8s.io/pause:3.10", None, "pod sandbox image"),
    "bundle_dir": Setting(str, None, None, "offline bundle folder (see `invoke bundle.fetch`)"),
    "download_mirror": Setting(str, "https://dl.k8s.io", None, "base URL bundle.fetch downloads from"),
    "github_mirror": Setting(str, "https://github.com", None,
                             "replaces https://github.com for crictl, CNI plugins and k3s"),
    "state_dir": Setting(str, "state", None, "controller folder for secrets, kubeconfig, logs"),
    "backup_keep": Setting(int, 10, None, "etcd backups kept in <state>/<cluster>/backups "
                           "(the newest; at least 1)"),
    "lab_bridge": Setting(str, None, None, "host bridge of the built-in lab"),
    "lab_bridge_address": Setting(str, None, None, "host address on the lab bridge (CIDR)"),
}

# Ansible's own connection variables, accepted in all.vars and on hosts.
ANSIBLE_VARS = (
    "ansible_host",
    "ansible_port",
    "ansible_user",
    "ansible_ssh_private_key_file",
    "ansible_python_interpreter",
    "ansible_connection",
    "ansible_become",
    "ansible_become_password_file",
    "ansible_become_password",
)
HOST_KEYS = {
    "ansible_host": str,
    "ansible_port": int,
    "ansible_user": str,
    "ansible_ssh_private_key_file": str,
    "ansible_python_interpreter": str,
    "ansible_connection": str,
    "ansible_become": bool,
    "ansible_become_password_file": str,
    "ansible_become_password": str,
    "node_labels": dict,
    "node_taints": list,
    "keepalived_priority": int,
}
GROUP_KEYS = ("hosts", "vars", "children")


# ---------------------------------------------------------------------------------------------
# YAML with line numbers
# ---------------------------------------------------------------------------------------------


# Bounds on what a YAML file may make us build: an inventory is a few levels deep and a few
# thousand values at most. Anchors and aliases are allowed (Ansible reads them), but a file of
# nested aliases expands exponentially ("billion laughs"): expansion stops past MAX_NODES.
MAX_DEPTH = 40
MAX_NODES = 50_000
YAML_TAG = "tag:yaml.org,2002:"
MERGE_TAG = YAML_TAG + "merge"


class _Loader(yaml.SafeLoader):
    """SafeLoader whose composer refuses nesting deeper than MAX_DEPTH (PyYAML's composer is
    recursive: 3,000 levels would end in a RecursionError)."""

    _depth = 0

    def compose_node(self, parent, index):
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH and not self.check_event(yaml.AliasEvent):
                mark = self.peek_event().start_mark
                raise _Refused(mark.line + 1, "yaml", f"nested deeper than {MAX_DEPTH} levels",
                               "an inventory needs fewer than 10; check the brackets and "
                               "indentation")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


class Located:
    """Plain values of a YAML file plus the 1-based line of every key path."""

    def __init__(self, path: str, text: str):
        self.path = path
        self.lines: dict[tuple, int] = {}
        self._constructor = yaml.constructor.SafeConstructor()
        self._count = 0
        self._open: set[int] = set()  # ids of the nodes being built (a cycle = recursive alias)
        loader = _Loader(text)
        try:
            node = loader.get_single_node()
        finally:
            loader.dispose()
        self.data = self._build(node, ()) if node is not None else None

    def _build(self, node: yaml.Node, at: tuple) -> Any:
        self._count += 1
        line = node.start_mark.line + 1
        if self._count > MAX_NODES:
            raise _Refused(line, "yaml", f"the file expands to more than {MAX_NODES} values "
                           "(nested aliases *name repeat what their anchors &name hold)",
                           "write the values out or use fewer nested aliases")
        if len(at) > MAX_DEPTH:
            raise _Refused(line, dotted(at), f"nested deeper than {MAX_DEPTH} levels (through "
                           "aliases)", "an inventory needs fewer than 10")
        if id(node) in self._open:
            raise _Refused(self.line(*at), dotted(at), "recursive alias: an anchor &name contains an "
                           "alias *name of itself", "remove the alias from inside its anchor")
        self.lines.setdefault(at, line)
        _check_tag(node, at)
        if isinstance(node, yaml.MappingNode):
            self._open.add(id(node))
            try:
                return self._mapping(node, at)
            finally:
                self._open.discard(id(node))
        if isinstance(node, yaml.SequenceNode):
            self._open.add(id(node))
            try:
                return [self._build(v, at + (i,)) for i, v in enumerate(node.value)]
            finally:
                self._open.discard(id(node))
        return self._scalar(node)

    def _mapping(self, node: yaml.MappingNode, at: tuple) -> dict:
        out: dict = {}
        merges = []
        for key_node, value_node in node.value:
            if key_node.tag == MERGE_TAG:
                merges.append(value_node)
                continue
            key = self._key(key_node, at)
            if key in out:
                raise _Duplicate(key, key_node.start_mark.line + 1, at, self.lines[at + (key,)])
            self.lines[at + (key,)] = key_node.start_mark.line + 1
            out[key] = self._build(value_node, at + (key,))
        # YAML merge keys (`<<: *defaults`, as Ansible reads them): keys written in the mapping
        # win, then the merged mappings in order.
        for value_node in merges:
            sources = value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
            for src in sources:
                if id(src) in self._open:
                    raise _Refused(value_node.start_mark.line + 1, dotted(at) + ".<<",
                                   "recursive alias: a merge key merges the mapping it is in",
                                   "remove the alias from inside its anchor")
                if not isinstance(src, yaml.MappingNode):
                    raise _Refused(src.start_mark.line + 1, dotted(at) + ".<<",
                                   "a merge key `<<:` takes a mapping or a list of mappings",
                                   "write `<<: *name` where &name anchors a mapping")
                self._count += 1
                self._open.add(id(src))
                saved, self.lines = self.lines, {}
                try:
                    merged = self._mapping(src, at)
                finally:
                    self._open.discard(id(src))
                    scratch, self.lines = self.lines, saved
                for k, v in merged.items():
                    if k not in out:
                        out[k] = v
                        n = len(at) + 1
                        self.lines.update((p, ln) for p, ln in scratch.items()
                                          if p[:n] == at + (k,))
        return out

    def _key(self, key_node: yaml.Node, at: tuple) -> Any:
        if not isinstance(key_node, yaml.ScalarNode):
            raise _Refused(key_node.start_mark.line + 1, dotted(at),
                           "a key is a list or mapping", "keys must be plain words; check for a "
                           "stray `?`, `[` or `{` before the colon")
        _check_tag(key_node, at)
        return self._scalar(key_node)

    def _scalar(self, node: yaml.Node) -> Any:
        return self._constructor.construct_object(node, deep=True)

    def line(self, *at) -> int:
        """Line of the longest known prefix of `at` (a missing key points at its parent)."""
        while at and at not in self.lines:
            at = at[:-1]
        return self.lines.get(at, 1)


# Standard YAML tags that construct plain values. Anything else (Ansible's `!vault`,
# `!unsafe`, python tags, `!!binary`, `!!set`, ...) is refused with what it is.
PLAIN_TAGS = {YAML_TAG + t for t in ("str", "int", "float", "bool", "null", "map", "seq",
                                     "timestamp")}


def _check_tag(node: yaml.Node, at: tuple) -> None:
    tag = node.tag or ""
    if tag in PLAIN_TAGS or tag == MERGE_TAG:
        return
    line = node.start_mark.line + 1
    if tag == "!vault":
        raise _Refused(line, dotted(at), "`!vault` is an Ansible Vault encrypted value; the "
                       "provisioner reads the inventory itself and cannot decrypt it, so vault "
                       "values are not supported", "write the value in plain text; the inventory "
                       "holds no secrets, tokens and keys are made in the state folder")
    if tag == "!unsafe":
        raise _Refused(line, dotted(at), "`!unsafe` (Ansible's marker for text not to template) "
                       "is not supported", "remove the tag; the provisioner never templates "
                       "inventory values")
    shown = tag.replace(YAML_TAG, "!!")
    raise _Refused(line, dotted(at), f"the YAML tag {shown} is not supported",
                   "remove the tag and write a plain value")


class _Refused(Exception):
    """Something in the YAML we will not read: (line, key, message, fix)."""

    def __init__(self, line, key, message, fix):
        super().__init__(message)
        self.line, self.key, self.message, self.fix = line, key, message, fix


class _Duplicate(Exception):
    def __init__(self, key, line, at, first):
        self.key, self.line, self.at, self.first = key, line, at, first


def dotted(at: tuple) -> str:
    """`all.vars.pod_cidr`; stops before a part with spaces so the key stays one word."""
    parts = []
    for p in at:
        if not str(p) or any(ch.isspace() for ch in str(p)):
            break
        parts.append(str(p))
    return ".".join(parts) or "inventory"


def suggest(word: str, known) -> str:
    close = difflib.get_close_matches(str(word), list(known), n=1, cutoff=0.6)
    return f"did you mean '{close[0]}'?" if close else "known keys: " + ", ".join(sorted(known))


TYPE_NAMES = {str: "a string", int: "a whole number", dict: "a mapping", list: "a list",
              bool: "true or false"}


def _type_ok(value: Any, want) -> bool:
    if want is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, want)


def _type_problem(value: Any, want) -> tuple[str, str]:
    """(message, fix) for a value of the wrong type, with the YAML pitfall behind it if any."""
    message = f"must be {TYPE_NAMES[want]}, got {value!r}"
    if want is str and isinstance(value, bool):
        return message, "YAML reads yes/no/on/off/true/false as true or false: quote the value"
    if want is str and isinstance(value, (int, float)):
        return message, f"quote it: '{value}'"
    if want is int and isinstance(value, str) and value.strip().isdigit():
        return message, f"write it without quotes: {value.strip()}"
    if want is list and isinstance(value, str):
        return message, f"write it as a list: [{value}]"
    return message, f"write it as {TYPE_NAMES[want]}"


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------


@dataclass
class Where:
    """Maps a setting, a host key or a group to the `(dotted key, line)` a problem should name.

    A key that is not in the file is named under the block it belongs in and gets the line of
    that block (a missing setting: the `cluster:` block if there is one, else `all.vars`).
    """

    doc: Located
    setting_paths: dict[str, tuple]
    host_paths: dict[str, tuple]

    def _at(self, at: tuple) -> tuple[str, int]:
        return dotted(at), self.doc.line(*at)

    def setting(self, key: str, *sub) -> tuple[str, int]:
        at = self.setting_paths.get(key)
        if at is None:
            block = ("all", "vars", "cluster")
            at = (block if block in self.doc.lines else ("all", "vars")) + (key,)
        return self._at(at + sub)

    def host(self, name: str, key: str | None = None, *sub) -> tuple[str, int]:
        """The host's own `key`; a connection variable it inherits from all.vars is named there."""
        at = self.host_paths.get(name, ("all", "children"))
        if key is None:
            return self._at(at)
        if at + (key,) not in self.doc.lines and key in self.setting_paths:
            return self._at(self.setting_paths[key] + sub)
        return self._at(at + (key,) + sub)

    def host_sets(self, name: str, key: str) -> bool:
        """Whether the file gives `key` to this host (on the host or in all.vars)."""
        at = self.host_paths.get(name, ())
        return at + (key,) in self.doc.lines or key in self.setting_paths

    def group(self, name: str) -> tuple[str, int]:
        return self._at(("all", "children", name))


class _Collector:
    def __init__(self, doc: Located):
        self.doc, self.problems = doc, []

    def add(self, at: tuple, message: str, fix: str = "") -> None:
        self.problems.append(Problem(self.doc.path, self.doc.line(*at), dotted(at), message, fix))


def read(path: str | os.PathLike) -> Located:
    path = str(path)
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise InvalidInventory([Problem(path, 0, "file", f"cannot read: {e.strerror}",
                                        "check the path given with -i")]) from None
    text = decode(path, data)
    try:
        return Located(path, text)
    except _Duplicate as d:
        raise InvalidInventory([Problem(path, d.line, dotted(d.at + (d.key,)),
                                        f"key appears twice (first on line {d.first})",
                                        "keep one of them")]) from None
    except _Refused as r:
        raise InvalidInventory([Problem(path, r.line, r.key, r.message, r.fix)]) from None
    except yaml.MarkedYAMLError as e:
        line, message, fix = _yaml_error(e, text)
        raise InvalidInventory([Problem(path, line, "yaml", message, fix)]) from None
    except yaml.YAMLError as e:  # unmarked (rare): still a clear line, never a traceback
        raise InvalidInventory([Problem(path, 1, "yaml", f"not valid YAML: {e}",
                                        "fix the file")]) from None
    except RecursionError:
        raise InvalidInventory([Problem(path, 1, "yaml", "nested too deeply",
                                        "an inventory needs fewer than 10 levels")]) from None


BOMS = {b"\xff\xfe\x00\x00": "UTF-32", b"\x00\x00\xfe\xff": "UTF-32",
        b"\xff\xfe": "UTF-16", b"\xfe\xff": "UTF-16"}


def decode(path: str, data: bytes) -> str:
    """The file as text: UTF-8 (a UTF-8 BOM is dropped), no NUL bytes, nothing else."""
    def refuse(at: int, message: str, fix: str):
        line = data[:at].count(b"\n") + 1
        raise InvalidInventory([Problem(path, line, "file", message, fix)])

    for bom, name in BOMS.items():
        if data.startswith(bom):
            refuse(0, f"the file is {name} text", "save it as UTF-8, e.g. with `iconv -f "
                   f"{name} -t UTF-8`")
    if b"\0" in data:
        refuse(data.index(b"\0"), "a NUL byte: this is not a text file (or it is UTF-16 "
               "without a byte order mark)", "save the inventory as UTF-8 text")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        refuse(e.start, f"bytes that are not UTF-8 ({data[e.start:e.start + 4]!r}), even "
               "comments must be UTF-8", "save the file as UTF-8")
    return text.removeprefix("\ufeff")


def _yaml_error(e: yaml.MarkedYAMLError, text: str) -> tuple[int, str, str]:
    """Line, message and fix for a YAML syntax error, in words a YAML novice can act on."""
    mark = e.problem_mark or e.context_mark
    line = mark.line + 1 if mark else 0
    problem, context = e.problem or "", e.context or ""
    opened = e.context_mark.line + 1 if e.context_mark else line
    lines = text.splitlines()
    if "'\\t'" in problem or (0 < line <= len(lines) and "\t" in lines[line - 1]):
        return line, "a tab character on this line", "YAML indents with spaces only"
    if "quoted scalar" in context:
        return opened, "a quote opened on this line is never closed", "add the closing quote"
    if "flow mapping" in context or "flow sequence" in context:
        pair = "{}" if "mapping" in context else "[]"
        return opened, f"a '{pair[0]}' on this line is not closed", (
            f"add the closing '{pair[1]}' on that line")
    if "block mapping" in context or "block collection" in context:
        return line, "this line's indentation does not fit the block above it", (
            "indent it exactly like the keys next to it, with spaces")
    if "mapping values are not allowed" in problem:
        return line, "a `key: value` where a value was expected", (
            "fix the indentation, or quote a value that contains ': '")
    if "single document" in context + problem:
        return line, "more than one YAML document (a second `---`)", "keep one document"
    return line, f"not valid YAML: {problem or context}", (
        "fix the indentation or quoting on that line")


def load(path: str | os.PathLike, check: Callable | None = None) -> model.Cluster:
    """Parse and validate; raise `InvalidInventory` listing every problem found."""
    doc = read(path)
    c = _Collector(doc)
    cluster, where = _build(doc, c)
    if cluster is not None and not c.problems:
        from . import validate  # semantic checks on a structurally sound inventory

        c.problems += (check or validate.check)(cluster, where)
        if not c.problems and check is None:
            cluster = dataclasses.replace(cluster, warnings=tuple(
                str(p) for p in validate.warnings(cluster, where)))
    if c.problems:
        raise InvalidInventory(c.problems)
    return cluster


def _build(doc: Located, c: _Collector) -> tuple[model.Cluster | None, Where | None]:
    data = doc.data
    if data is None:
        c.add(("all",), "the file is empty", "see inventories/single.yml for the layout")
        return None, None
    if not isinstance(data, dict):
        got = TYPE_NAMES.get(type(data), type(data).__name__)
        c.add(("all",), f"the top level must be a mapping `all:`, got {got}",
              "see inventories/single.yml for the layout")
        return None, None
    if not isinstance(data.get("all"), dict):
        groups = [k for k in data if k in model.ROLE_GROUPS]
        c.add(("all",), "the inventory must start with a mapping `all:`",
              "put the groups under all.children" if groups else
              "see inventories/single.yml for the layout")
        return None, None
    root = data["all"]
    for key in data:
        if key != "all":
            c.add((key,), "unknown top-level key", "put groups under all.children")
    for key in root:
        if key not in GROUP_KEYS:
            c.add(("all", key), "unknown key", suggest(key, GROUP_KEYS))

    settings, setting_paths = _settings(root.get("vars"), c)
    hosts, host_paths, groups = _hosts(root, c, settings)
    if c.problems:
        return None, None

    nodes = []
    for name, (hvars, at) in hosts.items():
        merged = {k: settings[k] for k in ANSIBLE_VARS if k in settings} | hvars
        user = merged.get("ansible_user", "root")
        nodes.append(model.Node(
            name=name,
            address=str(merged.get("ansible_host", name)),
            roles=tuple(g for g in model.ROLE_GROUPS if name in groups.get(g, ())),
            ssh_user=user,
            become=user != "root" and merged.get("ansible_become", True),
            become_password_file=_key_path(merged.get("ansible_become_password_file"), doc.path),
            ssh_port=merged.get("ansible_port", 22),
            ssh_key=_key_path(merged.get("ansible_ssh_private_key_file"), doc.path),
            labels=dict(hvars.get("node_labels") or {}),
            taints=tuple(hvars.get("node_taints") or ()),
            keepalived_priority=hvars.get("keepalived_priority"),
        ))
    values = {k: s.default for k, s in SETTINGS.items()} | {
        k: v for k, v in settings.items() if k in SETTINGS}
    if values["ha_mode"] is None:
        values["ha_mode"] = "none" if len(groups.get(model.CONTROL_PLANE, ())) <= 1 else "local"
    if values["kubernetes_version"] is None:
        values["kubernetes_version"] = DEFAULT_VERSION[values["distribution"]]
    cluster = model.Cluster(source=doc.path, nodes=tuple(nodes), **values)
    return cluster, Where(doc, setting_paths, host_paths)


DEFAULT_VERSION = {"kubeadm": "v1.32.4", "k3s": "v1.32.4+k3s1"}


def _settings(vars_: Any, c: _Collector) -> tuple[dict, dict]:
    values: dict = {}
    paths: dict = {}
    if vars_ is None:
        return values, paths
    if not isinstance(vars_, dict):
        c.add(("all", "vars"), "must be a mapping of settings", "write `key: value` lines under it")
        return values, paths

    def take(key, value, at):
        if key in values:
            c.add(at, "set twice (in all.vars and in its cluster: block)", "keep one of them")
            return
        if key in ANSIBLE_VARS and at[-2] == "cluster":
            c.add(at, "Ansible reads connection variables only directly in all.vars",
                  "move it out of the cluster: block into all.vars")
            return
        if key in ANSIBLE_VARS:
            want = HOST_KEYS[key]
        elif key in SETTINGS:
            want = SETTINGS[key].type
        else:
            c.add(at, "unknown setting", suggest(key, list(SETTINGS) + list(ANSIBLE_VARS)))
            return
        if value is None and key in SETTINGS:
            return  # explicit null: keep the default
        if not _type_ok(value, want):
            c.add(at, *_type_problem(value, want))
            return
        choices = SETTINGS[key].choices if key in SETTINGS else None
        if choices and value not in choices:
            c.add(at, f"{value!r} is not supported", "use one of: " + ", ".join(choices))
            return
        values[key], paths[key] = value, at

    for key, value in vars_.items():
        if key == "cluster":
            if not isinstance(value, dict):
                c.add(("all", "vars", "cluster"), "must be a mapping of cluster settings",
                      "write `key: value` lines under it")
                continue
            for k, v in value.items():
                take(k, v, ("all", "vars", "cluster", k))
        else:
            take(key, value, ("all", "vars", key))
    return values, paths


def _hosts(root: dict, c: _Collector, settings: dict):
    """Walk all.hosts and all.children (one level of role groups) collecting hosts."""
    hosts: dict[str, tuple[dict, tuple]] = {}
    paths: dict[str, tuple] = {}
    groups: dict[str, list[str]] = {}

    def host_block(block, at, group):
        if block is None:
            return
        if not isinstance(block, dict):
            c.add(at, "must be a mapping of host names", "write `name: {ansible_host: ADDRESS}`")
            return
        for name, hvars in block.items():
            hat = at + (name,)
            if hvars is None:
                hvars = {}
            if not isinstance(hvars, dict):
                c.add(hat, "host variables must be a mapping",
                      "write `name: {ansible_host: ADDRESS}`")
                continue
            ok = True
            for k, v in hvars.items():
                if k in SETTINGS or k == "cluster":
                    c.add(hat + (k,), "a cluster setting cannot be set per host",
                          "move it to all.vars")
                    ok = False
                elif k not in HOST_KEYS:
                    c.add(hat + (k,), "unknown host variable", suggest(k, HOST_KEYS))
                    ok = False
                elif not _type_ok(v, HOST_KEYS[k]):
                    c.add(hat + (k,), *_type_problem(v, HOST_KEYS[k]))
                    ok = False
            if not isinstance(name, str):
                c.add(hat, f"host name {name!r} must be a string", "quote it")
                continue
            if group:
                groups.setdefault(group, []).append(name)
            if name in hosts:
                # The same host in two role groups: allowed; its vars are merged.
                if hvars and hosts[name][0] and hvars != hosts[name][0]:
                    c.add(hat, "host is defined twice with different variables",
                          "set its variables in one place only")
                if hvars and not hosts[name][0]:
                    paths[name] = hat  # name the block that holds its variables
                hosts[name] = (hosts[name][0] or hvars, paths[name])
                continue
            if ok:
                hosts[name] = (hvars, hat)
                paths[name] = hat

    host_block(root.get("hosts"), ("all", "hosts"), None)
    children = root.get("children")
    if children is None:
        children = {}
    if not isinstance(children, dict):
        c.add(("all", "children"), "must be a mapping of groups", "see inventories/single.yml")
        children = {}
    for group, body in children.items():
        at = ("all", "children", group)
        if group not in model.ROLE_GROUPS:
            c.add(at, "unknown group", suggest(group, model.ROLE_GROUPS))
            continue
        if body is None:
            continue
        if not isinstance(body, dict):
            c.add(at, "a group must be a mapping with `hosts:`", "write `hosts:` under it")
            continue
        for key in body:
            if key != "hosts":
                c.add(at + (key,), "unknown key in a role group",
                      "role groups take only `hosts:`; put settings in all.vars")
        host_block(body.get("hosts"), at + ("hosts",), group)

    if not groups.get(model.CONTROL_PLANE):
        c.add(("all", "children"), "no control plane host",
              "add a `control_plane:` group with at least one host")
    for name in hosts:
        if not any(name in members for members in groups.values()):
            c.add(paths[name], "host is in no role group",
                  "list it under control_plane, workers, etcd or loadbalancers")
    return hosts, paths, groups


def _key_path(value: str | None, inventory: str) -> str | None:
    """A relative path is taken from the inventory's folder, never the current one, so every
    task means the same file from anywhere; made absolute for the playbooks' private folder."""
    return str(beside(inventory, value)) if value else None


def beside(inventory: str, value: str) -> Path:
    """`value` (a path written in the inventory) as an absolute path; relative to the file."""
    path = Path(value).expanduser()
    return path if path.is_absolute() else (Path(inventory).resolve().parent / path)
