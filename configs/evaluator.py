"""The domain evaluator: an attribute classifier whose features and predictions measure runs.

Train it once per dataset, before evaluating generative runs (~4 min of CPU time):
    python -m mmgen_jax.main --config=configs/evaluator.py --workdir=runs/evaluator
It writes its test accuracy per attribute to runs/evaluator/accuracy.json. Then
    python -m mmgen_jax.evaluate --workdir=runs/gan
measures a run with it (eval.evaluator_workdir, default runs/evaluator).
Variants: `smoke` (seconds; tests and CI). Override any field, e.g.
--config.train.num_steps=500 --config.data.data_dir=/data/tfds
"""

import ml_collections

from mmgen_jax import config_variants

common = config_variants.sibling(__file__, "common")


def get_config(arg=None):
    # data.name: must store every attribute in model.heads; the eval split measures accuracy.
    c = common.base(
        "evaluator",
        num_steps=2000,
        batch_size=128,
        checkpoint_every=500,
        max_to_keep=1,
        sample_every=0,  # the evaluator draws no samples
        eval_every=1000,  # steps between test-accuracy measurements (and at the end)
    )

    m = c.model
    # One softmax head per attribute the dataset stores: {feature name: number of classes}
    # (digits_captions: the digit `label`, foreground `fg` and background `bg` colours).
    m.heads = ml_collections.ConfigDict({"label": 10, "fg": 6, "bg": 6})
    # Heads whose class does not depend on colour (the digit): they read a colour-free stroke
    # map (models/classifier.py) through the shape trunk, and also learn from recoloured
    # images (train.recolour_prob); the other heads read the RGB image (colour trunk).
    m.colour_invariant_heads = ("label",)
    m.width = 32  # shape trunk: channels of the first convolution (doubling twice)
    m.feature_dim = 128  # shape trunk's penultimate features
    m.colour_width = 8  # colour trunk: channels of the first convolution (multiple of 8)
    m.colour_feature_dim = 32  # colour trunk's penultimate features
    # FD, KID and precision/recall use both trunks' features side by side (160-d).

    t = c.train
    t.lr = 1e-3  # Adam learning rate
    t.augment_shift = 2  # random shifts of up to this many pixels (0 = off)
    # Gaussian blur of random std up to this many pixels (0 = off): generated strokes are
    # often smeared; without it the digit head read more held-out generated images unsurely.
    t.augment_blur = 1.0
    t.augment_noise = 0.1  # std of Gaussian pixel noise added to images in [-1, 1]
    t.recolour_prob = 0.5  # share of images in random new colours (0 = off)
    t.eval_examples = 100_000  # test examples measured (at most the whole eval split)

    return config_variants.apply(c, arg, VARIANTS, "configs/evaluator.py")


def _smoke(c):
    """Tiny and fast: for tests and CI."""
    common.smoke(c)
    c.model.width = 8
    c.model.feature_dim = 16
    c.model.colour_feature_dim = 8
    c.train.batch_size = 16
    c.train.eval_examples = 64


def _fashion_mnist(c):
    """Fashion-MNIST (apt-get install dataset-fashion-mnist): one head, the class, read from
    the RGB trunk (greyscale garments: brightness is content) made as wide as the shape
    trunk; no blur, noise or recolouring (they cost 5 points: 84% test accuracy)."""
    c.data.name = "fashion_mnist_captions"
    c.model.heads = ml_collections.ConfigDict({"label": 10})
    c.model.colour_invariant_heads = ()
    c.model.colour_width = 32
    c.model.colour_feature_dim = 128
    c.train.augment_blur = 0.0
    c.train.augment_noise = 0.0
    c.train.recolour_prob = 0.0
    c.train.num_steps = 3000


VARIANTS = {"smoke": _smoke, "fashion_mnist": _fashion_mnist}
