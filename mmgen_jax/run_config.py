"""A workdir is one experiment: the config a run starts with must match its config.json.

The check applies whenever config.json exists, checkpoint or not: a workdir whose
checkpoints are gone still holds that experiment's metrics and samples.
"""

import json
import os


def check_matches_saved(workdir, config, may_change=()):
    """Raises ValueError if `config` differs from `workdir`/config.json in a field other
    than those in `may_change` (dotted names; a name ending in '.' covers a whole section,
    e.g. 'eval.'). Returns the differing fields that were allowed, for the record."""
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        saved = flatten(json.load(f))
    current = flatten(json.loads(config.to_json()))
    differ = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
    allowed = [k for k in differ if _covered(k, may_change)]
    refused = [k for k in differ if k not in allowed]
    if refused:
        shown = ", ".join(f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in refused[:5])
        more = f" and {len(refused) - 5} more" if len(refused) > 5 else ""
        raise ValueError(
            f"{workdir} holds a run with a different config ({shown}{more}; saved in {path}). "
            f"A workdir is one experiment: use a new --workdir, or rerun with the saved "
            f"config to resume it."
        )
    return allowed


def _covered(key, may_change):
    return any(key == m or (m.endswith(".") and key.startswith(m)) for m in may_change)


def flatten(tree, prefix=""):
    """{'a': {'b': 1}} -> {'a.b': 1}."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out
