"""Every config variant builds exactly the ConfigDict it built before configs/common.py
(tests/data/config_snapshots.json), and passes the up-front config checks.

After an intended change of a default, rewrite the snapshot: python tests/test_configs.py
"""

import json
import pathlib

import pytest
from conftest import load_config

from mmgen_jax import config_checks

SNAPSHOT = pathlib.Path(__file__).parent / "data" / "config_snapshots.json"
VARIANTS = {
    "gan": [None, "smoke", "dcgan32", "folder", "cifar10", "mnist", "coco_captions"],
    "vae": [None, "smoke", "poe", "moe"],
    "flow": [None, "smoke", "cross_attention", "size64"],
    "evaluator": [None, "smoke"],
}
CASES = [(name, arg) for name, args in VARIANTS.items() for arg in args]


def _as_json(name, arg):
    return json.loads(json.dumps(load_config(name, arg).to_dict()))


@pytest.mark.parametrize("name, arg", CASES)
def test_config_is_unchanged_and_valid(name, arg):
    want = json.loads(SNAPSHOT.read_text())[f"{name}:{arg or ''}"]
    assert _as_json(name, arg) == want
    assert config_checks.problems(load_config(name, arg)) == []


def test_every_variant_has_a_snapshot():
    assert set(json.loads(SNAPSHOT.read_text())) == {f"{n}:{a or ''}" for n, a in CASES}


if __name__ == "__main__":
    snapshot = {f"{n}:{a or ''}": _as_json(n, a) for n, a in CASES}
    SNAPSHOT.write_text(json.dumps(snapshot, indent=1, sort_keys=True) + "\n")
    print(f"wrote {SNAPSHOT}")
