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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from . import images, ini, model, versions
from .errors import InvalidInventory, Problem, UserError

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
    "kubernetes_version": Setting(str, None, None, f"e.g. {versions.DEFAULT['kubeadm']} (kubeadm) or {versions.DEFAULT['k3s']} (k3s)"),
    "pod_cidr": Setting(str, "10.244.0.0/16", None, "pod network"),
    "service_cidr": Setting(str, "10.96.0.0/12", None, "service network"),
    "cluster_domain": Setting(str, "cluster.local", None, "DNS domain of services"),
    "cni": Setting(str, "flannel", ("flannel", "calico"), "pod network plugin"),
    "ha_mode": Setting(str, None, ("none", "kube-vip", "haproxy", "local"), "API load balancing"),
    "api_vip": Setting(str, None, None, "virtual IP of the API (kube-vip, haproxy modes)"),
    "api_port": Setting(int, 6443, None, "API server port"),
    "vip_interface": Setting(str, "eth0", None, "interface that carries the VIP"),
    "registry_mirrors": Setting(dict, {}, None, "registry -> list of mirror URLs"),
    "sandbox_image": Setting(str, None, None, "pod sandbox image (default: kubeadm's pause "
                             "for the version, under image_repository)"),
    "image_repository": Setting((str, dict), "registry.k8s.io", None,
                                "registry (or {source registry: target}) images are pulled "
                                "from; kubeadm's imageRepository"),
    "bundle_dir": Setting(str, None, None, "offline bundle folder (see `invoke bundle.fetch`)"),
    "download_mirror": Setting(str, "https://dl.k8s.io", None, "base URL bundle.fetch downloads from"),
    "github_mirror": Setting(str, "https://github.com", None,
                             "replaces https://github.com for crictl, CNI plugins and k3s"),
    "state_dir": Setting(str, "state", None, "controller folder for secrets, kubeconfig, logs"),
    "backup_keep": Setting(int, 10, None, "etcd backups kept in <state>/<cluster>/backups "
                           "(the newest; at least 1)"),
    "containerd_source": Setting(str, "bundle", ("bundle", "os"),
                                 "kubeadm nodes' containerd and runc: the bundle's upstream "
                                 "release, or the OS package (checked against the minor)"),
    "allow_cgroup_v1": Setting(bool, False, None, "run Kubernetes >= 1.35 on cgroup v1 hosts "
                               "(the kubelet's failCgroupV1: false); preflight still reports it"),
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

    @classmethod
    def of(cls, path: str, data: Any, lines: dict[tuple, int]) -> "Located":
        """A document read some other way (an INI inventory) with the same interface."""
        doc = cls.__new__(cls)
        doc.path, doc.data, doc.lines = path, data, lines
        return doc

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

VAR_EXTENSIONS = (".yml", ".yaml", ".json")  # what Ansible's host_group_vars plugin reads


@dataclass
class Var:
    """One variable as written: its value and the file and key path that set it."""

    value: Any
    doc: Located
    at: tuple


@dataclass
class Group:
    name: str
    doc: Located  # where it is first defined
    at: tuple
    vars: dict[str, Var] = field(default_factory=dict)
    hosts: list[str] = field(default_factory=list)
    parents: list[str] = field(default_factory=list)
    files: list[Located] = field(default_factory=list)  # group_vars/<name>...


@dataclass
class Host:
    name: str
    doc: Located  # the block that holds its variables (else where it is first listed)
    at: tuple
    vars: dict[str, Var] = field(default_factory=dict)
    groups: list[str] = field(default_factory=list)  # listed directly in
    files: list[Located] = field(default_factory=list)  # host_vars/<name>...
    merged: dict[str, Var] = field(default_factory=dict)  # as Ansible merges them


@dataclass
class Where:
    """Maps a setting, a host key or a group to the `(dotted key, line)` a problem should name,
    and (`*_loc`) to the file that set it: the inventory, a group_vars/ or a host_vars/ file.

    A key that is not set anywhere is named under the block it belongs in and gets the line of
    that block (a missing setting: the `cluster:` block if there is one, else `all.vars`).
    """

    doc: Located  # the inventory file
    settings: dict[str, Var]
    hosts: dict[str, Host]
    groups: dict[str, Group]

    @staticmethod
    def _loc(doc: Located, at: tuple) -> tuple[str, str, int]:
        return doc.path, dotted(at), doc.line(*at)

    def setting_loc(self, key: str, *sub) -> tuple[str, str, int]:
        var = self.settings.get(key)
        if var is not None:
            return self._loc(var.doc, var.at + sub)
        block = ("all", "vars", "cluster")
        at = (block if block in self.doc.lines else ("all", "vars")) + (key,)
        return self._loc(self.doc, at + sub)

    def host_loc(self, name: str, key: str | None = None, *sub) -> tuple[str, str, int]:
        """The value this host gets for `key` (its own, a group's, all's); else its block."""
        host = self.hosts.get(name)
        if host is None:
            return self._loc(self.doc, ("all", "children"))
        if key is None:
            return self._loc(host.doc, host.at)
        var = host.merged.get(key)
        if var is not None:
            return self._loc(var.doc, var.at + sub)
        return self._loc(host.doc, host.at + (key,) + sub)

    def group_loc(self, name: str) -> tuple[str, str, int]:
        group = self.groups.get(name)
        if group is None:
            return self._loc(self.doc, ("all", "children", name))
        return self._loc(group.doc, group.at)

    def setting(self, key: str, *sub) -> tuple[str, int]:
        return self.setting_loc(key, *sub)[1:]

    def host(self, name: str, key: str | None = None, *sub) -> tuple[str, int]:
        return self.host_loc(name, key, *sub)[1:]

    def group(self, name: str) -> tuple[str, int]:
        return self.group_loc(name)[1:]

    def host_sets(self, name: str, key: str) -> bool:
        """Whether the inventory gives `key` to this host (anywhere Ansible would)."""
        host = self.hosts.get(name)
        return host is not None and key in host.merged


class _Collector:
    def __init__(self, doc: Located):
        self.doc, self.problems = doc, []

    def add(self, at: tuple, message: str, fix: str = "", doc: Located | None = None) -> None:
        doc = doc or self.doc
        self.problems.append(Problem(doc.path, doc.line(*at), dotted(at), message, fix))


def read(path: str | os.PathLike, inventory: bool = True) -> Located:
    """A YAML file, or an INI inventory (see `provisioner.ini`), with the line of every key.
    Variable files (`inventory=False`) are YAML (or JSON) only, as Ansible reads them."""
    path = str(path)
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise InvalidInventory([Problem(path, 0, "file", f"cannot read: {e.strerror}",
                                        "check the path given with -i")]) from None
    text = decode(path, data)
    if inventory and ini.looks_like_ini(path, text):
        try:
            return Located.of(path, *ini.to_doc(ini.parse(text)))
        except ini.IniError as e:
            key = e.key.split()[0] if e.key.strip() else "ini"
            raise InvalidInventory([Problem(path, e.line, key, e.message, e.fix)]) from None
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


def variables(path: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """Every host and its variables merged as Ansible merges them: what `ansible-inventory -i
    FILE --list` gives as hostvars. Raises `InvalidInventory` on any structural problem."""
    doc = read(path)
    c = _Collector(doc)
    tree = _tree(doc, c)
    if c.problems or tree is None:
        raise InvalidInventory(c.problems)
    return {h.name: {k: v.value for k, v in h.merged.items()} for h in tree.hosts.values()}


@dataclass
class Tree:
    """The inventory as Ansible sees it: groups (with parents) and hosts, each variable located."""

    groups: dict[str, Group]
    hosts: dict[str, Host]
    all_vars: dict[str, Var] = field(default_factory=dict)  # all.vars, then group_vars/all

    def ancestors(self, name: str) -> set[str]:
        out, todo = set(), list(self.groups[name].parents)
        while todo:
            g = todo.pop()
            if g not in out:
                out.add(g)
                todo += self.groups[g].parents
        return out

    def groups_of(self, host: Host) -> set[str]:
        """Every group the host is in: where it is listed, and their ancestors ('all' too)."""
        out = {"all"}
        for g in host.groups:
            out |= {g} | self.ancestors(g)
        return out

    def depth(self, name: str) -> int:
        """Ansible's group depth: the longest path from `all`."""
        parents = self.groups[name].parents
        return 0 if name == "all" else 1 + max((self.depth(p) for p in parents), default=0)


def _build(doc: Located, c: _Collector) -> tuple[model.Cluster | None, Where | None]:
    tree = _tree(doc, c)
    if tree is None:
        return None, None
    settings = _settings(tree, c)
    roles: dict[str, tuple[str, ...]] = {}
    for name, host in tree.hosts.items():
        groups = tree.groups_of(host)
        roles[name] = tuple(g for g in model.ROLE_GROUPS if g in groups)
    if not any(model.CONTROL_PLANE in r for r in roles.values()):
        c.add(("all", "children"), "no control plane host",
              "add a `control_plane:` group with at least one host")
    kubeasz = sorted(g for g in tree.groups if g in KUBEASZ_GROUPS)
    for name, host in tree.hosts.items():
        if not roles[name]:
            fix = "list it under control_plane, workers, etcd or loadbalancers"
            if kubeasz:
                fix += (f"; groups {', '.join(kubeasz)} are kubeasz's: convert a kubeasz hosts "
                        f"file with `invoke cluster.import --kubeasz {doc.path} -o NEW.yml`")
            c.add(host.at, "host is in no role group", fix, doc=host.doc)
    if c.problems:
        return None, None

    nodes = []
    for name, host in tree.hosts.items():
        merged = {k: v.value for k, v in host.merged.items()}
        user = merged.get("ansible_user", "root")
        nodes.append(model.Node(
            name=name,
            address=str(merged.get("ansible_host", name)),
            roles=roles[name],
            ssh_user=user,
            become=user != "root" and merged.get("ansible_become", True),
            become_password_file=_key_path(merged.get("ansible_become_password_file"), doc.path),
            ssh_port=merged.get("ansible_port", 22),
            ssh_key=_key_path(merged.get("ansible_ssh_private_key_file"), doc.path),
            labels=dict(merged.get("node_labels") or {}),
            taints=tuple(merged.get("node_taints") or ()),
            keepalived_priority=merged.get("keepalived_priority"),
        ))
    values = {k: s.default for k, s in SETTINGS.items()} | {
        k: v.value for k, v in settings.items()}
    if values["ha_mode"] is None:
        cps = sum(model.CONTROL_PLANE in r for r in roles.values())
        values["ha_mode"] = "none" if cps <= 1 else "local"
    if values["kubernetes_version"] is None:
        values["kubernetes_version"] = DEFAULT_VERSION[values["distribution"]]
    cluster = model.Cluster(source=doc.path, nodes=tuple(nodes), **values)
    if cluster.sandbox_image is None:
        try:
            cluster = dataclasses.replace(cluster, sandbox_image=images.sandbox_default(cluster))
        except (UserError, ValueError, TypeError, AttributeError):
            pass  # no pins for this version, or a bad image_repository: validation names it
    return cluster, Where(doc, settings, tree.hosts, tree.groups)


DEFAULT_VERSION = versions.DEFAULT
# kubeasz's group names: an inventory that uses them is a kubeasz hosts file to import.
KUBEASZ_GROUPS = ("kube_master", "kube_node", "ex_lb", "kube-master", "kube-node", "ex-lb")


def _tree(doc: Located, c: _Collector) -> Tree | None:
    """Groups, hosts and every variable (inventory, group_vars/, host_vars/), each key checked
    where it is written; each host's variables merged in Ansible's order."""
    data = doc.data
    if data is None:
        c.add(("all",), "the file is empty", "see inventories/single.yml for the layout")
        return None
    if not isinstance(data, dict):
        got = TYPE_NAMES.get(type(data), type(data).__name__)
        c.add(("all",), f"the top level must be a mapping `all:`, got {got}",
              "see inventories/single.yml for the layout")
        return None
    if not isinstance(data.get("all"), dict):
        groups = [k for k in data if k in model.ROLE_GROUPS]
        c.add(("all",), "the inventory must start with a mapping `all:`",
              "put the groups under all.children" if groups else
              "see inventories/single.yml for the layout")
        return None
    for key in data:
        if key != "all":
            c.add((key,), "unknown top-level key", "put groups under all.children")
    for key in data["all"]:
        if key not in GROUP_KEYS:
            c.add(("all", key), "unknown key", suggest(key, GROUP_KEYS))

    tree = Tree({}, {})
    _group(tree, doc, c, "all", data["all"], ("all",), None)
    _var_files(tree, doc, c)
    for name, group in tree.groups.items():
        scope = "all" if name == "all" else "group"
        for key, var in list(group.vars.items()) + _file_vars(group.files):
            _check(c, scope, key, var)
    for host in tree.hosts.values():
        for key, var in list(host.vars.items()) + _file_vars(host.files):
            _check(c, "host", key, var)

    # Ansible's order (VariableManager.get_vars, default VARIABLE_PRECEDENCE): all's inventory
    # vars < every other group's inventory vars (by depth, then name) < group_vars/all <
    # group_vars/<group> (same order) < the host's inventory vars < host_vars/<host>. A later
    # value replaces an earlier one whole (mappings are not merged).
    for key, var in list(tree.groups["all"].vars.items()) + _file_vars(tree.groups["all"].files):
        old = tree.all_vars.get(key)
        if key == "cluster" and old is not None and old.doc is not var.doc:
            c.add(var.at, f"a second `cluster:` block (the first is in {old.doc.path}:"
                  f"{old.doc.line(*old.at)}): Ansible keeps only the last one, whole, so the "
                  "settings of the first would be lost", "keep one cluster: block, or write "
                  "the settings flat", doc=var.doc)
        tree.all_vars[key] = var
    for host in tree.hosts.values():
        groups = sorted(tree.groups_of(host) - {"all"}, key=lambda g: (tree.depth(g), g))
        merged = dict(tree.groups["all"].vars)
        for g in groups:
            merged |= tree.groups[g].vars
        merged |= dict(_file_vars(tree.groups["all"].files))
        for g in groups:
            merged |= dict(_file_vars(tree.groups[g].files))
        merged |= host.vars
        merged |= dict(_file_vars(host.files))
        host.merged = merged
    return tree


def _typo_of_role(name: str) -> str:
    """The role group an extra group's name looks like a misspelling of, or ''."""
    norm = name.lower().replace("-", "_")
    close = difflib.get_close_matches(norm, model.ROLE_GROUPS, n=1, cutoff=0.85)
    if name in model.ROLE_GROUPS or not close:
        return ""
    return close[0]


def _group(tree: Tree, doc: Located, c: _Collector, name: Any, body: Any, at: tuple,
           parent: str | None) -> None:
    """One group of a YAML-shaped inventory (`hosts`, `vars`, `children`), recursively."""
    if not isinstance(name, str):
        c.add(at, f"group name {name!r} must be a string", "quote it")
        return
    if parent is not None:
        if name == "all":
            c.add(at, "`all` cannot be a child of another group", "remove it here: every "
                  "group is in all")
            return
        typo = _typo_of_role(name)
        if typo:
            c.add(at, f"unknown group: it looks like the role group '{typo}' misspelt (other "
                  "groups are fine)", f"did you mean '{typo}'?")
            return
    group = tree.groups.get(name)
    if group is None:
        group = tree.groups[name] = Group(name, doc, at)
    if parent is not None and parent not in group.parents:
        if name == parent or name in tree.ancestors(parent):
            c.add(at, f"group {name} would be its own ancestor", "a group cannot contain "
                  "itself, directly or through its children")
            return
        group.parents.append(parent)
    if body is None:
        return
    if not isinstance(body, dict):
        c.add(at, "a group must be a mapping with `hosts:`", "write `hosts:` under it")
        return
    if parent is not None:
        for key in body:
            if key not in GROUP_KEYS:
                c.add(at + (key,), "unknown key in a group", suggest(key, GROUP_KEYS))
    vars_ = body.get("vars")
    if vars_ is not None and not isinstance(vars_, dict):
        c.add(at + ("vars",), "must be a mapping of settings" if name == "all" else
              "must be a mapping of variables", "write `key: value` lines under it")
    elif vars_:
        for key, value in vars_.items():
            old = group.vars.get(key)
            if old is not None and old.value != value:
                c.add(at + ("vars", key), f"set twice for the group {name} (first on line "
                      f"{old.doc.line(*old.at)})", "set it in one place only")
            group.vars[key] = Var(value, doc, at + ("vars", key))
    _hosts(tree, doc, c, body.get("hosts"), at + ("hosts",), name)
    children = body.get("children")
    if children is None:
        return
    if not isinstance(children, dict):
        c.add(at + ("children",), "must be a mapping of groups", "see inventories/single.yml")
        return
    for child, child_body in children.items():
        _group(tree, doc, c, child, child_body, at + ("children", child), name)


def _hosts(tree: Tree, doc: Located, c: _Collector, block: Any, at: tuple, group: str) -> None:
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
            c.add(hat, "host variables must be a mapping", "write `name: {ansible_host: ADDRESS}`")
            continue
        if not isinstance(name, str):
            c.add(hat, f"host name {name!r} must be a string", "quote it")
            continue
        host = tree.hosts.get(name)
        if host is None:
            host = tree.hosts[name] = Host(name, doc, hat)
        elif hvars and host.vars:
            # The same host in two groups: allowed, with its variables in one place.
            if hvars != {k: v.value for k, v in host.vars.items()}:
                c.add(hat, "host is defined twice with different variables",
                      "set its variables in one place only")
            hvars = {}
        elif hvars:
            host.doc, host.at = doc, hat  # name the block that holds its variables
        if group != "all" and group not in host.groups:
            host.groups.append(group)
        for k, v in hvars.items():
            host.vars[k] = Var(v, doc, hat + (k,))


def _check(c: _Collector, scope: str, key: Any, var: Var) -> None:
    """A variable's key and type, where it is written. `scope`: all, group or host."""
    value, at, doc = var.value, var.at, var.doc
    if scope == "all" and key == "cluster":
        if not isinstance(value, dict):
            c.add(at, "must be a mapping of cluster settings", "write `key: value` lines under "
                  "it", doc=doc)
            return
        for k, v in value.items():
            if k in ANSIBLE_VARS:
                c.add(at + (k,), "Ansible reads connection variables only directly in all.vars",
                      "move it out of the cluster: block into all.vars", doc=doc)
            elif k in SETTINGS:
                _check(c, "all", k, Var(v, doc, at + (k,)))
            else:
                c.add(at + (k,), "unknown setting", suggest(k, list(SETTINGS) +
                                                             list(ANSIBLE_VARS)), doc=doc)
        return
    if scope == "all" and key in SETTINGS:
        want, choices = SETTINGS[key].type, SETTINGS[key].choices
        if value is None:
            return  # explicit null: keep the default
    elif key in SETTINGS or key == "cluster":
        elsewhere = " or group_vars/all.yml" if scope == "group" else ""
        c.add(at, f"a cluster setting cannot be set per {scope}", "move it to all.vars"
              + elsewhere, doc=doc)
        return
    elif key in HOST_KEYS:
        want, choices = HOST_KEYS[key], None
    elif scope == "all":
        c.add(at, "unknown setting", suggest(key, list(SETTINGS) + list(HOST_KEYS)), doc=doc)
        return
    else:
        c.add(at, "unknown host variable" if scope == "host" else "unknown variable",
              suggest(key, HOST_KEYS), doc=doc)
        return
    if not _type_ok(value, want):
        c.add(at, *_type_problem(value, want), doc=doc)
    elif choices and value not in choices:
        c.add(at, f"{value!r} is not supported", "use one of: " + ", ".join(choices), doc=doc)


def _settings(tree: Tree, c: _Collector) -> dict[str, Var]:
    """The cluster settings from all's merged variables, flat or in the `cluster:` block."""
    out: dict[str, Var] = {}

    def take(key, var):
        if key not in SETTINGS or var.value is None:
            return
        if key in out:
            c.add(var.at, "set twice (in all.vars and in its cluster: block)", "keep one of them",
                  doc=var.doc)
            return
        out[key] = var

    for key, var in tree.all_vars.items():
        if key == "cluster" and isinstance(var.value, dict):
            for k, v in var.value.items():
                take(k, Var(v, var.doc, var.at + (k,)))
        else:
            take(key, var)
    return out


def _file_vars(docs: list[Located]) -> list[tuple[Any, Var]]:
    return [(k, Var(v, d, (k,))) for d in docs if isinstance(d.data, dict)
            for k, v in d.data.items()]


def _var_files(tree: Tree, doc: Located, c: _Collector) -> None:
    """group_vars/ and host_vars/ beside the inventory, found as Ansible's host_group_vars
    plugin finds them: `<name>` (a file, or a folder read recursively in name order),
    `<name>.yml`, `<name>.yaml` or `<name>.json` — the first that exists."""
    base = os.path.dirname(doc.path)
    for kind, entities in (("group_vars", tree.groups), ("host_vars", tree.hosts)):
        folder = os.path.join(base, kind)
        if not os.path.lexists(folder):
            continue
        if not os.path.isdir(folder):
            c.problems.append(Problem(folder, 0, kind, "is not a folder (Ansible skips it)",
                                      "make it a folder of <name>.yml files, or remove it"))
            continue
        what = "group" if kind == "group_vars" else "host"
        claimed = set()
        for name, entity in entities.items():
            if "/" in name or name in (".", ".."):
                continue
            found = [p for p in [os.path.join(folder, name + e) for e in ("",) + VAR_EXTENSIONS]
                     if os.path.exists(p)]
            if not found:
                continue
            claimed |= set(found)
            if len(found) > 1:
                c.problems.append(Problem(found[1], 0, kind, f"{found[0]} is there too, and "
                                          "Ansible reads only that one", "merge them into one"))
            files = _dir_files(found[0]) if os.path.isdir(found[0]) else [found[0]]
            for path in files:
                try:
                    var_doc = read(path, inventory=False)
                except InvalidInventory as e:
                    c.problems += e.problems
                    continue
                if var_doc.data is not None and not isinstance(var_doc.data, dict):
                    c.problems.append(Problem(path, 1, kind, "must be a mapping of variables",
                                              "write `key: value` lines"))
                    continue
                entity.files.append(var_doc)
        for entry in sorted(os.listdir(folder)):
            path = os.path.join(folder, entry)
            stem, ext = os.path.splitext(entry)
            if entry.startswith(".") or entry.endswith("~") or path in claimed or (
                    ext and ext not in VAR_EXTENSIONS):
                continue
            c.problems.append(Problem(path, 0, kind, f"no {what} named '{stem}' in {doc.path}, "
                                      "so Ansible ignores this file",
                                      suggest(stem, [e for e in entities if "/" not in e])))


def _dir_files(folder: str) -> list[str]:
    """A group_vars/<name>/ folder's files as Ansible reads them: in name order, recursively,
    skipping hidden and backup files and other extensions."""
    out = []
    for entry in sorted(os.listdir(folder)):
        path = os.path.join(folder, entry)
        ext = os.path.splitext(entry)[1]
        if entry.startswith(".") or entry.endswith("~"):
            continue
        if os.path.isdir(path) and not ext:
            out += _dir_files(path)
        elif os.path.isfile(path) and (not ext or ext in VAR_EXTENSIONS):
            out.append(path)
    return out


def _key_path(value: str | None, inventory: str) -> str | None:
    """A relative path is taken from the inventory's folder, never the current one, so every
    task means the same file from anywhere; made absolute for the playbooks' private folder."""
    return str(beside(inventory, value)) if value else None


def beside(inventory: str, value: str) -> Path:
    """`value` (a path written in the inventory) as an absolute path; relative to the file."""
    path = Path(value).expanduser()
    return path if path.is_absolute() else (Path(inventory).resolve().parent / path)
