"""Loading config files by path (``configs/`` is data, not a package)."""

import importlib.util
import os


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
