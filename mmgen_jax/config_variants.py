"""Config variants: `--config=configs/NAME.py:a,b` applies variants a then b to the defaults;
and the shared sections a config file loads from beside it (configs/common.py)."""

import importlib.util
import os


def apply(config, arg, variants, config_file):
    """Applies the comma-separated `arg` (None or "" = none) from `variants` (name -> function
    editing the config in place) to `config`; an unknown name is a clear error."""
    for name in arg.split(",") if arg else ():
        if name not in variants:
            raise ValueError(
                f"unknown variant {name!r} of {config_file}; known: {', '.join(variants)}"
            )
        variants[name](config)
    return config


def sibling(config_file, name):
    """The module `name`.py in the folder of `config_file` (a config's `__file__`). Config
    files are loaded by path, from any folder, so their shared module is too: a copy of
    configs/ elsewhere keeps working."""
    path = os.path.join(os.path.dirname(os.path.abspath(config_file)), f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"mmgen_jax_config_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
