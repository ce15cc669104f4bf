"""Reading params.yaml strictly: a regular text file of bounded size, a YAML mapping whose keys
are names, each given once, with no alias expansion that could grow without bound."""

from __future__ import annotations

import copy
import stat
from pathlib import Path
from typing import Any

import yaml

from trilemma.errors import ConfigError

MAX_BYTES = 1 << 20  # the project's params.yaml is about 20 KB
MAX_VALUES = 100_000  # values after YAML aliases are expanded (the project's: about 600)
MAX_DEPTH = 32  # nesting of mappings and lists (the project's: 3)


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice and keys that are not strings (YAML 1.1 reads
    an unquoted `on:` or `1:` as a boolean or a number)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base` merges; not a key
                continue
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if not isinstance(key, str):
                raise ConfigError(f"key {key!r} (line {line}) is not a name; quote it if it is "
                                  f"meant as one")
            if key in seen:
                raise ConfigError(f"key {key!r} is given twice (again on line {line})")
            seen.add(key)
        return super().construct_mapping(node, deep)


def check_bounded(raw: Any) -> None:
    """ConfigError if `raw` nests deeper than MAX_DEPTH or expands to more than MAX_VALUES values
    (recursive YAML anchors never end; alias bombs multiply): checked before anything walks it."""
    count, stack = 0, [(raw, 0)]
    while stack:
        value, depth = stack.pop()
        count += 1
        if count > MAX_VALUES:
            raise ConfigError(f"more than {MAX_VALUES} values once YAML aliases are expanded "
                              "(a recursive or repeated `*alias`?)")
        if depth > MAX_DEPTH:
            raise ConfigError(f"nested more than {MAX_DEPTH} levels deep (a recursive `*alias`?)")
        children = value.values() if isinstance(value, dict) else value \
            if isinstance(value, list) else ()
        stack.extend((child, depth + 1) for child in children)


def read_params_file(path: Path) -> Any:
    """The parsed YAML of a params file; ConfigError naming the file for anything unreadable."""
    try:
        info = path.stat()
        if stat.S_ISDIR(info.st_mode):
            raise ConfigError(f"{path}: is a directory, not a params file")
        if not stat.S_ISREG(info.st_mode):  # a FIFO blocks, /dev/zero never ends
            raise ConfigError(f"{path}: not a regular file")
        if info.st_size > MAX_BYTES:
            raise ConfigError(f"{path}: {info.st_size} bytes; a params file has at most "
                              f"{MAX_BYTES}")
        raw = yaml.load(path.read_text(), Loader=_StrictLoader)  # noqa: S506 (a SafeLoader)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such params file") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text file (not UTF-8)") from None
    except OSError as err:
        raise ConfigError(f"{path}: cannot read ({err.strerror})") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise ConfigError(f"{path}: not valid YAML{where}") from None
    except RecursionError:
        raise ConfigError(f"{path}: nested too deeply to read") from None
    except ConfigError as err:
        raise ConfigError(err if str(err).startswith(f"{path}:") else f"{path}: {err}") from None
    try:
        check_bounded(raw)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None
    return raw


def with_overrides(raw: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """A copy of params `raw` with dotted keys set ('vae.epochs': 3); missing sections are
    created."""
    raw = copy.deepcopy(raw)
    for dotted, value in overrides.items():
        *parents, last = dotted.split(".")
        node = raw
        for key in parents:
            if not isinstance(node.get(key), dict):
                node[key] = {}
            node = node[key]
        node[last] = value
    return raw
