"""The `eval` section of a generative config: how runs are measured.

The one home of its defaults: configs/common.py builds the configs' section from them, and
`mmgen_jax.evaluate` fills the fields a run's saved config.json lacks (runs trained before a
field existed) from here -- which is why they live in the package (configs/ is not
installed with it) and not in configs/.
"""

import ml_collections

BEST_MODES = ("min", "max")  # eval.best_mode: which direction of eval.best_metric is better


def defaults() -> ml_collections.ConfigDict:
    e = ml_collections.ConfigDict()
    # Workdir of the domain evaluator (train it: python -m mmgen_jax.main
    # --config=configs/evaluator.py --workdir=runs/evaluator); relative paths are taken from
    # the current directory.
    e.evaluator_workdir = "runs/evaluator"
    e.extractor = "evaluator"  # feature network for FD/KID/P-R: "evaluator" or "inception_v3"
    # inception_v3: the converted weights (python -m mmgen_jax.convert_inception); "" = its
    # default output, ~/.cache/mmgen_jax/inception_fid.npz
    e.extractor_file = ""
    e.num_samples = 1800  # evaluate: test captions (and real test images) used, at most all
    e.train_num_samples = 1000  # the same during training (every train.eval_every steps)
    e.reference_split = "train"  # real images of the reference row, compared with real test
    e.kid_subsets = 50  # KID: random subsets averaged (mean and std reported)
    e.kid_subset_size = 500  # KID: samples per subset; needs at least this many per side
    e.pr_k = 3  # precision/recall: k of the k-nearest-neighbour manifolds
    e.diversity_samples = 4  # diversity: images drawn per caption (K)
    e.diversity_captions = 100  # diversity: at most this many attribute groups, 1 caption each
    e.batch_size = 256  # images per device call (rounded up to a multiple of the devices)
    # Families with a likelihood (the VAE): importance samples per test example of the IWAE
    # bounds of log p(image, caption), log p(image), log p(caption) (0 = not measured).
    e.iwae_samples = 16
    e.seed = 0  # noise seed of the generated images (image i uses fold_in(key, i))
    e.best_metric = "fd_digits"  # metric that picks the best checkpoint (WORKDIR/best/)
    e.best_mode = "min"  # one of BEST_MODES: which direction of best_metric is better
    return e


def with_defaults(section) -> ml_collections.ConfigDict:
    """`section` (a dict or ConfigDict, possibly missing fields) completed from `defaults()`;
    returns (completed, names of the fields that were missing)."""
    full = defaults()
    given = dict(section or {})
    unknown = sorted(set(given) - set(full))
    if unknown:
        raise ValueError(f"unknown eval field(s) {unknown}; known: {sorted(full)}")
    missing = sorted(set(full) - set(given))
    full.update(given)
    return full, missing
