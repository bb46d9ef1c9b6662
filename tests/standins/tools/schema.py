"""Strict decoding of a config document against an upstream field tree (json names and types).

The checker works on a small normalised form built by `types_from_tree`:
  ("struct", {json name: type}, name)  ("list", type)  ("map", type)  ("scalar", name)  ("any",)
Errors read like the Go decoders kubeadm uses: `unknown field "a.b"` for a field the type does
not have, `json: cannot unmarshal string into Go struct field X.a.b of type int` for a value of
the wrong kind.
"""

from __future__ import annotations

SCALARS = {"string", "int", "float", "bool", "duration", "time"}


def json_kind(value) -> str:
    """How encoding/json names a decoded value's kind in its errors."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    if value is None:
        return "null"
    return type(value).__name__  # e.g. a YAML date


def go_name(t) -> str:
    kind = t[0]
    if kind == "struct":
        return t[2] if len(t) > 2 else "struct"
    if kind == "list":
        return "[]" + go_name(t[1])
    if kind == "map":
        return "map[string]" + go_name(t[1])
    if kind == "scalar":
        return t[1]
    return "interface {}"


def check(value, t, path: str, owner: str, errors: list[str]) -> None:
    """Append to errors every unknown field and wrong-typed value under `value`."""
    kind = t[0]
    if value is None or kind == "any":
        return  # null decodes to the zero value
    if kind == "struct":
        if not isinstance(value, dict):
            errors.append(mismatch(value, t, path, owner))
            return
        fields = t[1]
        for key, sub in value.items():
            here = f"{path}.{key}" if path else str(key)
            if key not in fields:
                errors.append(f'unknown field "{here}"')
            else:
                check(sub, fields[key], here, owner, errors)
    elif kind == "list":
        if not isinstance(value, list):
            errors.append(mismatch(value, t, path, owner))
            return
        for i, item in enumerate(value):
            check(item, t[1], f"{path}[{i}]", owner, errors)
    elif kind == "map":
        if not isinstance(value, dict):
            errors.append(mismatch(value, t, path, owner))
            return
        for key, sub in value.items():
            check(sub, t[1], f"{path}[{key}]", owner, errors)
    elif kind == "scalar":
        name = t[1]
        ok = ((name == "bool" and isinstance(value, bool))
              or (name == "int" and isinstance(value, int) and not isinstance(value, bool))
              or (name == "float" and isinstance(value, (int, float))
                  and not isinstance(value, bool))
              or (name in ("string", "duration", "time") and isinstance(value, str)))
        if not ok:
            errors.append(mismatch(value, t, path, owner))


def mismatch(value, t, path: str, owner: str) -> str:
    return (f"json: cannot unmarshal {json_kind(value)} into Go struct field {owner}.{path} "
            f"of type {go_name(t)}")


# ---------------------------------------------------------------------------------------------
# Type expressions as tests/data/upstream/*.yaml write them: string, int, bool, duration, time,
# [T] (a list of T), {T} (a map of string to T), any, or the name of another type.
# ---------------------------------------------------------------------------------------------


def parse_type(expr, named: dict) -> tuple:
    """Turn a type expression into the normalised form; named: type name -> struct."""
    s = str(expr).strip()
    if s.startswith("[") and s.endswith("]"):
        return ("list", parse_type(s[1:-1], named))
    if s.startswith("{") and s.endswith("}"):
        return ("map", parse_type(s[1:-1], named))
    if s == "any":
        return ("any",)
    if s in SCALARS:
        return ("scalar", s)
    if s in named:
        return named[s]
    raise ValueError(f"unknown type {s!r} in the upstream field tree")


def types_from_tree(tree: dict) -> dict[str, tuple]:
    """type name -> normalised struct, for every type of an upstream tree file."""
    named: dict[str, tuple] = {name: ("struct", {}, name) for name in tree["types"]}
    for name, fields in tree["types"].items():
        named[name][1].update({k: parse_type(v, named) for k, v in fields.items()})
    return named
