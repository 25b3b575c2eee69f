"""Loading config files by path (``configs/`` is data, not a package)."""

import importlib.util
import os
from typing import Any, Callable, Dict, Iterator, Optional, Tuple


def load(path: str):
    """The module defined by the config file at ``path``."""
    name = "kdad_config_" + os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def sibling(config_file: str, name: str):
    """Config ``name``.py from the same folder as ``config_file`` (for configs built on another)."""
    return load(os.path.join(os.path.dirname(os.path.abspath(config_file)), f"{name}.py"))


def flatten(config, prefix: str = "") -> Iterator[Tuple[str, Any]]:
    """(dotted key, value) for every leaf of a ConfigDict or nested dict, in order."""
    for key, value in config.items():
        path = f"{prefix}{key}"
        if hasattr(value, "items"):
            yield from flatten(value, path + ".")
        else:
            yield path, value


def apply_arg(config, arg: str, apply_preset: Callable[[Any, str], None],
              options: Optional[Dict[str, Callable[[Any, str], None]]] = None, default: str = ""):
    """The one parser of ``get_config(arg)`` arguments: ``'PRESET[,PRESET...][,key=value...]'``.

    Presets apply in order through ``apply_preset(config, name)`` (``default`` when there is
    none); then each ``key=value`` through ``options[key](config, value)``. An unknown key is a
    ``ValueError`` naming it and the known ones. Returns ``config``."""
    parts = [p.strip() for p in (arg or "").split(",") if p.strip()]
    for preset in [p for p in parts if "=" not in p] or [default]:
        apply_preset(config, preset)
    options = options or {}
    for key, value in (p.split("=", 1) for p in parts if "=" in p):
        if key not in options:
            known = ", ".join(sorted(options)) or "none"
            raise ValueError(f"unknown config argument {key!r} (known: {known})")
        options[key](config, value)
    return config


def set_category(config, value: str) -> None:
    """The ``category=NAME`` option every method config takes."""
    config.data.category = value
