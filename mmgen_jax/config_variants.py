"""Config variants: `--config=configs/NAME.py:a,b` applies variants a then b to the defaults."""


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
