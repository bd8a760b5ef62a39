"""Experiment configs: dataclasses addressed by dotted keys, type-checked from their annotations.

An experiment's config is a (possibly nested) dataclass. `build(cls, values)` makes one from a dict
of dotted keys ("rational.degrees") or nested dicts, checking every value against the field's
annotation (bool, int, float, str, Literal[...], tuple[int, ...], nested dataclass, X | None) and
raising `ConfigError` naming the key and what was expected. A nested field whose metadata has
`when=(key, value)` only applies when that key has that value (`rational.*` only matters for
activation == "rational"), or, with `when=(key, condition)`, when `condition(value)` holds (a
callable whose str() says what it tests); `active_keys` and `flatten` leave out the keys that do
not apply. A field whose metadata has `key="from"` is addressed by that key (a Python keyword
cannot be a field's name).
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import json
import re
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal

import yaml

from .errors import ConfigError


def identity(values: Mapping[str, Any]) -> str:
    """What makes two trials the same configuration: their applicable values, as one string (lists
    and tuples alike, key order aside). Used to skip repeats, dedupe a searcher's suggestions and
    pick a config's latest run."""
    return json.dumps(dict(values), sort_keys=True, default=str)


def check(ok: bool, key: str, expected: str, got: Any) -> None:
    """Raise ConfigError("key: expected ..., got ...") unless ok: for range checks in __post_init__."""
    if not ok:
        raise ConfigError(key, f"expected {expected}, got {got!r}")


def _key(field: dataclasses.Field) -> str:
    return field.metadata.get("key", field.name)


def _fields(cls) -> dict[str, dataclasses.Field]:
    """The init fields by config key."""
    return {_key(f): f for f in dataclasses.fields(cls) if f.init}


def _hints(cls) -> dict[str, Any]:
    """The init fields' annotations by config key."""
    hints = typing.get_type_hints(cls)
    return {key: hints[f.name] for key, f in _fields(cls).items()}


def _holds(condition, value) -> bool:
    """Whether a `when` condition (a value, or a callable that tests one) holds for `value`."""
    return condition(value) if callable(condition) else value == condition


def annotation_of(cls, key: str):
    """The annotation of a dotted leaf key (which must be one of keys(cls))."""
    head, _, rest = key.partition(".")
    annotation = _hints(cls)[head]
    return annotation_of(annotation, rest) if rest else annotation


def keys(cls, prefix: str = "") -> list[str]:
    """Every dotted leaf key of a config class."""
    hints, out = _hints(cls), []
    for name in _fields(cls):
        if dataclasses.is_dataclass(hints[name]):
            out += keys(hints[name], f"{prefix}{name}.")
        else:
            out.append(prefix + name)
    return out


def describe(annotation) -> str:
    """What a value of this annotation looks like, for error messages."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Literal:
        return "one of " + ", ".join(str(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else describe(a) for a in args)
    if origin is tuple:
        plural = {bool: "booleans", int: "integers", float: "numbers", str: "strings"}
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {plural.get(args[0], describe(args[0]))}"
        return f"a list of {len(args)} {' and '.join(sorted({plural.get(a, describe(a)) for a in args}))}"
    if dataclasses.is_dataclass(annotation):
        return "a mapping of " + ", ".join(_fields(annotation))
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(annotation, str(annotation))


def coerce(annotation, value, key: str):
    """value as the annotation's type (ints are floats, lists are tuples), or ConfigError."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    fail = ConfigError(key, f"expected {describe(annotation)}, got {value!r}")
    if origin is Literal:
        if value in args and all(type(value) is type(a) for a in args if a == value):
            return value
        raise ConfigError(key, f"expected one of {', '.join(map(str, args))}, got {value!r}{did_you_mean(value, args)}")
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is not type(None):
                try:
                    return coerce(arg, value, key)
                except ConfigError:
                    pass
        raise fail
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise fail
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(coerce(args[0], v, key) for v in value)
        if len(value) != len(args):
            raise fail
        return tuple(coerce(a, v, key) for a, v in zip(args, value))
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise fail
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise fail
    if annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise fail
    if annotation is str:
        if isinstance(value, str):
            return value
        raise fail
    if annotation is Any:
        return value
    raise ConfigError(key, f"unsupported config annotation {annotation!r}")


def from_text(annotation, text: str, key: str):
    """A config value back from its text (str() of it: how MLflow keeps params), in its own type:
    "None" is None where the field allows it, a str field keeps "" and "0.5" as written, other
    text is read as YAML (numbers, true/false, [5, 4]). Text the annotation rejects comes back as YAML reads it."""
    read = parse_text(text)
    candidates = ([None] if text == "None" else []) + ([read] if annotation is Any else [text, read])
    for candidate in candidates:
        try:
            return coerce(annotation, candidate, key)
        except ConfigError:
            continue
    return read


# A document may repeat itself through aliases (*base), but not grow past this many values once
# expanded: nested anchors double or decuple at each level, and checking or printing the expansion
# would take every byte of memory.
MAX_YAML_VALUES = 100_000


def _expanded_values(node: yaml.Node, sizes: dict[int, int], open_nodes: set[int]) -> int:
    """How many values the node stands for with every alias expanded (each node counted once, by id)."""
    key = id(node)
    if key in sizes:
        return sizes[key]
    if key in open_nodes:
        raise yaml.constructor.ConstructorError(None, None, "an alias refers to a value that contains it", node.start_mark)
    open_nodes.add(key)
    children = [n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode) else \
        node.value if isinstance(node, yaml.SequenceNode) else []
    sizes[key] = 1 + sum(_expanded_values(child, sizes, open_nodes) for child in children)
    open_nodes.discard(key)
    return sizes[key]


class YamlLoader(yaml.SafeLoader):
    """PyYAML's safe loader, but 1e-5 is a float (YAML 1.1 wants a dot: "1e-05" was a string), as
    Python writes small and large floats, and as users write them in spaces and --set; a key
    given twice in one mapping is an error (PyYAML keeps the later one silently: a grid's values
    lost); and a document that expands to more than MAX_YAML_VALUES values is refused."""

    def construct_document(self, node):
        if _expanded_values(node, {}, set()) > MAX_YAML_VALUES:
            raise yaml.constructor.ConstructorError(
                None, None, f"expected at most {MAX_YAML_VALUES:,} values once its aliases (*name) are expanded; "
                "this document holds more (nested anchors)", node.start_mark)
        return super().construct_document(node)

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":  # "<<: *base": its keys may be overridden here
                    continue
                key = self.construct_object(key_node, deep=True)
                if isinstance(key, (str, int, float, bool)) and key in seen:
                    raise yaml.constructor.ConstructorError("while reading a mapping", node.start_mark,
                                                            f"the key {key!r} is given twice", key_node.start_mark)
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


YamlLoader.yaml_implicit_resolvers = {k: list(v) for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789"))


def yaml_load(text: str):
    return yaml.load(text, Loader=YamlLoader)  # noqa: S506  (a SafeLoader)


def yaml_load_all(text: str) -> list:
    return list(yaml.load_all(text, Loader=YamlLoader))  # noqa: S506  (a SafeLoader)


def parse_text(text: str):
    """The value YAML reads from the text (yaml_load), or the text itself where it is not YAML."""
    try:
        return yaml_load(text)
    except yaml.YAMLError:
        return text


def did_you_mean(value, options) -> str:
    close = difflib.get_close_matches(str(value), [str(o) for o in options], n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def nest(values: Mapping[str, Any]) -> dict[str, Any]:
    """{"a.b": 1} -> {"a": {"b": 1}}; nested dicts pass through and merge."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        head, _, rest = key.partition(".")
        if rest:
            value = nest({rest: value})
        if isinstance(value, Mapping) and isinstance(out.get(head), dict):
            out[head] = {**out[head], **nest(value)}
        else:
            out[head] = nest(value) if isinstance(value, Mapping) else value
    return out


def build(cls, values: Mapping[str, Any] | None = None, prefix: str = ""):
    """An instance of the config dataclass `cls` from dotted or nested values; defaults elsewhere."""
    values = nest(values or {})
    fields, hints = _fields(cls), _hints(cls)
    unknown = [k for k in values if k not in fields]
    if unknown:
        key = prefix + unknown[0]
        raise ConfigError(key, f"unknown key{did_you_mean(key, keys(cls, prefix))}; expected one of {', '.join(keys(cls, prefix))}")
    kwargs = {}
    for name, value in values.items():
        annotation, key = hints[name], prefix + name
        if dataclasses.is_dataclass(annotation):
            if not isinstance(value, Mapping):
                raise ConfigError(key, f"expected {describe(annotation)}, got {value!r}")
            kwargs[fields[name].name] = build(annotation, value, key + ".")
        else:
            kwargs[fields[name].name] = coerce(annotation, value, key)
    try:
        return cls(**kwargs)
    except ConfigError as e:
        if prefix and not e.key.startswith(prefix):
            raise ConfigError(prefix + e.key, str(e).split(": ", 1)[1]) from None
        raise


def applies(cls, key: str, values: Mapping[str, Any]) -> bool:
    """Whether a dotted key matters given the other values (dotted, defaults where absent)."""
    head, _, rest = key.partition(".")
    field = _fields(cls).get(head)
    if field is None or not rest:
        return True
    when = field.metadata.get("when")
    if when is not None:
        on_key, on_value = when
        current = values.get(on_key, _default(cls, on_key))
        if not _holds(on_value, current):
            return False
    inner = {k.partition(".")[2]: v for k, v in values.items() if k.startswith(head + ".")}
    return applies(_hints(cls)[head], rest, inner)


def _default(cls, key: str):
    head, _, rest = key.partition(".")
    field = _fields(cls)[head]
    if rest:
        return _default(_hints(cls)[head], rest)
    return field.default_factory() if field.default is dataclasses.MISSING else field.default


@dataclasses.dataclass(frozen=True)
class KeyDoc:
    """One config key as `ratsweep describe` shows it."""

    key: str
    expected: str  # describe(annotation)
    default: Any
    when: str  # "activation = rational" for a conditional key, else ""
    doc: str  # the field's trailing comment in the source


def key_docs(cls, prefix: str = "", when: str = "") -> list[KeyDoc]:
    """Every dotted key of a config class with what it takes, its default, the condition under which
    it applies and its comment: generated from the dataclass, so it cannot drift from it."""
    docs, hints, comments = [], _hints(cls), _field_comments(cls)
    for name, field in _fields(cls).items():
        annotation = hints[name]
        if dataclasses.is_dataclass(annotation):
            on = field.metadata.get("when")
            docs += key_docs(annotation, f"{prefix}{name}.", f"{on[0]} = {on[1]}" if on else when)
        else:
            docs.append(KeyDoc(prefix + name, describe(annotation), _default(cls, name), when, comments.get(name, "")))
    return docs


def _field_comments(cls) -> dict[str, str]:
    """`name: type = default  # comment` lines of the class's source (and its dataclass bases'), by config key."""
    out: dict[str, str] = {}
    keys_by_name = {f.name: key for key, f in _fields(cls).items()}
    for klass in cls.__mro__:  # a subclass that changes a default keeps its base's comment unless it has its own
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            source = inspect.getsource(klass)
        except (OSError, TypeError):
            continue
        for line in source.splitlines():
            match = re.match(r"\s+(\w+)\s*:[^#]*#\s*(.+)$", line)
            if match and match.group(1) in keys_by_name:
                out.setdefault(keys_by_name[match.group(1)], match.group(2).strip())
    return out


def flatten(config, prefix: str = "", root=None) -> dict[str, Any]:
    """The dotted keys and values of a config instance, leaving out the ones that do not apply."""
    root = config if root is None else root
    out: dict[str, Any] = {}
    for name, field in _fields(type(config)).items():
        value = getattr(config, field.name)
        if dataclasses.is_dataclass(value):
            out.update(flatten(value, f"{prefix}{name}.", root))
        else:
            out[prefix + name] = list(value) if isinstance(value, tuple) else value
    if prefix:
        return out
    return {k: v for k, v in out.items() if applies(type(root), k, out)}
