"""Text-conditional DCGAN on image-caption pairs.

Run (trains on the embedded `digits_captions` data, ~15 min on 2 CPU cores):
    python -m mmgen_jax.main --config=configs/gan.py --workdir=runs/gan
Variants: `configs/gan.py:smoke` (seconds; tests and CI), `configs/gan.py:dcgan32`
(exactly the peer benchmark's architecture and step, ../shared/peers/SPEC.md),
`configs/gan.py:folder` (your own data: --config.data.path=DIR), `minilm` (the pretrained
English text encoder), `cifar10`, `mnist` and
`coco_captions` (public TFDS datasets: prepare them once, see README "Data"); combine with
commas.
Override any field: --config.train.num_steps=200 --config.data.data_dir=/data/tfds
"""

from mmgen_jax import config_variants

common = config_variants.sibling(__file__, "common")


def get_config(arg=None):
    c = common.base("gan", num_steps=6000, batch_size=64)  # one D and one G update per step

    m = c.model
    m.noise_dim = 64  # size of z
    m.g_width = 32  # generator base width (channels double towards the 4x4 start)
    m.d_width = 32  # discriminator base width (channels double at each downsampling)
    m.g_impl = "fast"  # G's upsampling: "fast" (sub-pixel convs) or "textbook" ConvTranspose
    # G's 2x steps: "transpose", "icnr" (same, checkerboard-free init), "resize_conv" (slow on
    # CPU), "icnr_resize_out" (icnr, and resize_conv for the output step only)
    m.g_upsample = "transpose"
    m.d_impl = (
        "textbook"  # D's downsampling: "textbook" strided Conv (fastest on XLA:CPU) or "fast"
    )
    m.conditioning = "projection"  # how D uses the caption: "projection" or "concat"
    m.d_norm = "spectral"  # D's normalisation: "spectral" (SNGAN) or "batch" (DCGAN)
    m.d_minibatch_std = 0  # D sees the batch's variety: std over groups of this many (0 = off)
    m.num_classes = 10  # classes of the dataset's label (auxiliary classifier head)
    m.text_proj_dim = 128  # width of the caption projection inside G and D
    m.text_encoder = "conv"  # caption encoder: "conv" (dilated 1-D convs), "transformer",
    # "minilm" (pretrained all-MiniLM-L6-v2, English; with data.tokenizer="minilm"), or
    # "none" (the batch carries text_dim-sized caption embeddings: benchmarks only)
    m.text_encoder_trainable = False  # "minilm": fine-tune it (True) or keep it frozen
    m.text_embed_dim = 64  # byte-token embedding width
    m.text_width = 64  # hidden width of the caption encoder
    m.text_layers = 2  # caption encoder depth
    m.text_dim = 128  # pooled caption embedding size
    m.dtype = "float32"  # compute dtype ("bfloat16" on accelerators; params stay float32)

    t = c.train
    t.loss = "hinge"  # "hinge" (SNGAN) or "nonsaturating" (-log D, DCGAN)
    t.matching_aware = False  # real image + mismatched caption counts as a negative for D
    t.mismatch_weight = 0.5  # share of D's negative term given to mismatched captions
    t.contrastive_weight = 1.0  # image-caption alignment loss in D's projection space (0 = off)
    t.contrastive_temperature = 0.1  # softmax temperature of that alignment loss
    t.diversity_weight = 0.0  # mode seeking: one caption, two noises, distinct images (0 = off)
    t.diversity_pool = 1  # ... compared after this much average pooling (shapes, not pixel noise)
    # Where the dataset has labels: D's image head classifies them (TAC-GAN) and both caption
    # encoders get a label head, so they learn to read the digit; 0 = captions only.
    t.aux_classifier_weight = 1.0
    t.twin_classifier = False  # TAC-GAN: a twin label head on generated images (anti-collapse)
    t.augment = ""  # DiffAugment of D's inputs: "", "translation", "translation,cutout"
    t.update_order = "alternating"  # "alternating" (G sees the updated D) or "simultaneous"
    t.lr_g = 2e-4  # Adam learning rate of G
    t.lr_d = 2e-4  # Adam learning rate of D
    t.b1 = 0.5  # Adam beta1 (DCGAN)
    t.b2 = 0.999  # Adam beta2
    t.ema_decay = 0.999  # EMA of generator params used for sampling (0 = no EMA)
    t.sample_rows = 8  # captions in a sample grid
    t.sample_cols = 4  # generated images per caption in a sample grid

    c.eval = common.eval_section()
    return config_variants.apply(c, arg, VARIANTS, "configs/gan.py")


def _smoke(c):
    """Tiny and fast: for tests and CI."""
    common.smoke(c)
    common.smoke_eval(c)
    c.model.noise_dim = 16
    c.model.g_width = 8
    c.model.d_width = 8
    c.model.text_proj_dim = 16
    c.model.text_embed_dim = 16
    c.model.text_width = 16
    c.model.text_layers = 1
    c.model.text_dim = 16
    c.train.batch_size = 8
    c.train.sample_rows = 2
    c.train.sample_cols = 2


def _dcgan32(c):
    """Exactly the peer benchmark's network and step (../shared/peers/SPEC.md): 128-d caption
    embeddings fed directly, simultaneous D/G update, plain non-saturating loss. For
    `python -m mmgen_jax.benchmark`; training needs a caption encoder."""
    c.model.text_encoder = "none"
    c.model.noise_dim = 100
    c.model.g_width = 64
    c.model.d_width = 64
    c.model.conditioning = "concat"
    c.model.d_norm = "batch"
    c.train.loss = "nonsaturating"
    c.model.text_proj_dim = 128
    c.model.text_dim = 128
    c.train.batch_size = 64
    c.train.matching_aware = False
    c.train.contrastive_weight = 0.0
    c.train.diversity_weight = 0.0
    c.train.aux_classifier_weight = 0.0
    c.train.update_order = "simultaneous"
    c.train.ema_decay = 0.0


def _folder(c):
    """Your own images and captions: --config=configs/gan.py:folder --config.data.path=DIR
    (see mmgen_jax/data/caption_folder.py for the folder layout)."""
    c.data.name = "caption_folder"
    c.data.eval_split = "test"
    c.train.aux_classifier_weight = 0.0  # user folders have no labels


def _cifar10(c):
    """CIFAR-10, 32x32; captions are made from the class name ("a photo of a cat", ...)."""
    c.data.name = "cifar10"
    c.data.train_split = "train"
    c.data.eval_split = "test"
    c.data.image_size = 32
    c.model.num_classes = 10  # `label` drives the auxiliary classifier


def _mnist(c):
    """MNIST digits as 32x32 RGB; captions from the digit ("a handwritten seven, ...")."""
    c.data.name = "mnist"
    c.data.train_split = "train"
    c.data.eval_split = "test"
    c.data.image_size = 32
    c.model.num_classes = 10


def _fashion_mnist(c):
    """Fashion-MNIST, 32x32 RGB, captions from the class names; prepared offline from the
    Debian package (apt-get install dataset-fashion-mnist; data/fashion_mnist_captions.py)."""
    c.data.name = "fashion_mnist_captions"
    c.model.num_classes = 10
    c.eval.best_metric = "fd_fashion"  # the domain evaluator trained on it (tag "fashion")
    # Ten captions' worth of classes, each with every garment of its class: the default drew
    # one image per class (docs/results.md, "Fashion-MNIST"). Against collapse:
    c.train.diversity_weight = 0.1  # mode seeking (weight 1 draws noise on digits)
    c.train.twin_classifier = True  # TAC-GAN's twin head instead of AC-GAN's pull to one image
    c.model.g_upsample = "icnr"  # checkerboard-free start, the default's cost per step
    c.train.num_steps = 5000  # mode seeking costs 1.2x a step: ~15 min on 2 cores


def _coco_captions(c):
    """COCO 2014 images, centre-cropped to 64x64, each with one of its ~5 real captions."""
    c.data.name = "coco_captions/2014"  # explicit config: it names the prepared directory
    c.data.train_split = "train"
    c.data.eval_split = "val"
    c.data.image_size = 64
    c.train.aux_classifier_weight = 0.0  # no image-level label


VARIANTS = {
    "smoke": _smoke,
    "minilm": common.minilm,
    "dcgan32": _dcgan32,
    "folder": _folder,
    "cifar10": _cifar10,
    "mnist": _mnist,
    "coco_captions": _coco_captions,
    "fashion_mnist": _fashion_mnist,
}
