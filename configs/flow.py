"""Text-conditional flow matching (rectified flow) with classifier-free guidance.

Run (trains on the embedded `digits_captions` data; 18 min 26 s on 2 CPU cores, measured;
49% of its images match their caption, targets not yet met: docs/recipes.md#flow-matching):
    python -m mmgen_jax.main --config=configs/flow.py --workdir=runs/flow
Variants: `configs/flow.py:smoke` (seconds; tests and CI), `configs/flow.py:cross_attention`
(the U-Net also attends over the caption's tokens), `configs/flow.py:size64` (64x64 images);
combine with commas.
Sampling settings are config fields (model.sampler, model.sample_steps, model.guidance):
override them for training-time grids with --config.model.guidance=2.
"""

from mmgen_jax import config_variants

common = config_variants.sibling(__file__, "common")


def get_config(arg=None):
    # 20.3 GFLOP per step (python -m mmgen_jax.benchmark --config=configs/flow.py); 2.6 steps/s
    # on 2 CPU cores.
    c = common.base("flow", num_steps=3000, batch_size=64)

    m = c.model
    m.width = 16  # U-Net channels at full resolution
    m.channel_mults = (1, 2, 4)  # channel multiplier per resolution level (32, 16, 8 px)
    m.num_res_blocks = 1  # residual blocks per level, on the way down and on the way up
    m.cond_dim = 128  # FiLM conditioning vector (time + pooled caption) size
    m.layout_map = True  # time + caption also paint a map at the lowest resolution (Dense)
    m.cross_attention = False  # also attend over the caption's token states (slower)
    m.attention_size = 8  # cross-attention at feature maps of at most this size
    m.text_encoder = "conv"  # caption encoder: "conv" (dilated 1-D convs) or "transformer"
    m.text_embed_dim = 32  # byte-token embedding width
    m.text_width = 64  # hidden width of the caption encoder (and of its token states)
    m.text_layers = 2  # caption encoder depth
    m.text_dim = 128  # pooled caption embedding size
    m.num_classes = 10  # classes of the dataset's label (used when train.aux_classifier_weight > 0)
    m.sampler = "euler"  # ODE solver from noise (t=1) to image (t=0): "euler" or "heun"
    m.sample_steps = 8  # ODE steps per image (heun: two network calls per step)
    m.guidance = 2.0  # classifier-free guidance scale w: 1 = conditional, 0 = unconditional
    m.dtype = "float32"  # compute dtype ("bfloat16" on accelerators; params stay float32)

    t = c.train
    t.lr = 1e-3  # Adam learning rate
    t.b1 = 0.9  # Adam beta1
    t.b2 = 0.99  # Adam beta2
    t.grad_clip = 1.0  # clip gradients to this global norm (0 = off)
    # Training times t: "uniform" or "logit_normal". Uniform: logit-normal(0, 1) draws t > 0.9
    # for 1.4% of examples, and near t = 1 is where the caption sets what to draw (measured:
    # docs/recipes.md#flow-matching).
    t.time_sampling = "uniform"
    t.logit_mean = 0.0  # logit_normal: mean of logit(t)
    t.logit_std = 1.0  # logit_normal: standard deviation of logit(t)
    # Where the dataset has labels: a head on the pooled caption names them, so the caption
    # encoder learns to read the label (cross-entropy weight; 0 = captions only).
    t.aux_classifier_weight = 1.0
    t.caption_dropout = 0.1  # share of captions replaced by the empty one (for guidance)
    t.ema_decay = 0.995  # EMA of params used for sampling (0 = no EMA)
    t.sample_rows = 8  # eval examples in a sample grid
    t.sample_cols = 4  # images drawn from each caption per grid row

    c.eval = common.eval_section()
    return config_variants.apply(c, arg, VARIANTS, "configs/flow.py")


def _smoke(c):
    """Tiny and fast: for tests and CI."""
    common.smoke(c)
    m = c.model
    m.width = 8
    m.channel_mults = (1, 2)
    m.cond_dim = 16
    m.text_embed_dim = 8
    m.text_width = 16
    m.text_layers = 1
    m.text_dim = 16
    m.sample_steps = 2
    c.data.max_text_len = 48
    c.train.batch_size = 8
    c.train.sample_rows = 2
    c.train.sample_cols = 1


def _cross_attention(c):
    """The U-Net's low-resolution maps also attend over the caption's token states."""
    c.model.cross_attention = True


def _size64(c):
    """64x64 images: one more resolution level."""
    c.data.image_size = 64
    c.model.channel_mults = (1, 2, 2, 2)
    c.model.attention_size = 8


VARIANTS = {"smoke": _smoke, "cross_attention": _cross_attention, "size64": _size64}
