"""Multimodal VAE over (image, caption): one latent space, joint generation, text -> image and
image -> text.

Run (trains on the embedded `digits_captions` data, ~12 min on 2 CPU cores):
    python -m mmgen_jax.main --config=configs/vae.py --workdir=runs/vae
Variants: `configs/vae.py:smoke` (seconds; tests and CI), `configs/vae.py:poe` (product of
experts, MVAE), `configs/vae.py:moe` (mixture of experts, MMVAE; the default) and
`configs/vae.py:minilm` (the pretrained English text encoder); combine with commas.
Sample: python -m mmgen_jax.sample --workdir=runs/vae --mode=image2text --out_dir=captions
"""

from mmgen_jax import config_variants

common = config_variants.sibling(__file__, "common")


def get_config(arg=None):
    c = common.base("vae", num_steps=4000, batch_size=64)
    # data.image_size: 4 * 2^k

    m = c.model
    m.fusion = "moe"  # joint posterior: "moe" (mixture, MMVAE) or "poe" (product + prior, MVAE)
    m.latent_dim = 32  # size of z
    m.image_width = 16  # image encoder/decoder base width (doubles at each 2x step)
    m.text_encoder = "conv"  # caption encoder: "conv" (dilated 1-D convs), "transformer" or
    # "minilm" (pretrained all-MiniLM-L6-v2, English; with data.tokenizer="minilm")
    m.text_encoder_trainable = False  # "minilm": fine-tune it (True) or keep it frozen
    m.text_embed_dim = 32  # byte-token embedding width (caption encoder and decoder)
    m.text_width = 64  # hidden width of the caption encoder
    m.text_layers = 2  # caption encoder depth
    m.text_dim = 128  # pooled caption feature size before the posterior head
    m.decoder_hidden = 96  # GRU state size of the caption decoder
    m.num_classes = 10  # classes of the dataset's label (used when train.aux_classifier_weight > 0)
    m.dtype = "float32"  # compute dtype ("bfloat16" on accelerators; params stay float32)
    # z of joint samples (sample --mode=joint, evaluate's joint_coherence): "standard" = N(0, I),
    # "mixture" = a Gaussian mixture fitted after training to codes of training pairs.
    m.joint_prior = "mixture"
    # "mixture": its Gaussian components; many, because the codes' density is far from a few
    # blobs (joint_coherence 3% at 20, 39% at 1,000, 49% at 4,000: docs/results.md)
    m.joint_mixture_components = 1000
    m.joint_mixture_examples = 8192  # "mixture": training pairs encoded (the first, at most all)

    t = c.train
    t.lr = 1e-3  # Adam learning rate
    t.b1 = 0.9  # Adam beta1
    # Adam beta2: 0.99 forgets the huge gradients of the first steps (image term ~10k nats)
    # in ~100 steps; at 0.999 they damped later learning (digit right 16-18% vs 30%).
    t.b2 = 0.99
    t.beta = 1.0  # weight of the KL term (beta-VAE)
    t.kl_warmup_steps = 1000  # beta rises linearly from 0 over these steps (0 = no warm-up)
    t.image_likelihood = "gaussian"  # p(x|z): "gaussian" (MSE) or "laplace" (L1)
    # Fixed standard deviation (gaussian) or scale (laplace) of p(x|z). At 0.1 the image
    # term (~6k nats) drowned the caption's digit word in the encoders' gradients.
    t.image_scale = 0.3
    t.image_weight = 1.0  # weight of the image log-likelihood
    # Weight of the caption log-likelihood (summed over its ~45 tokens, against ~3k pixels):
    # at 1 the digit word (log 10 nats) is not worth its KL cost and goes unread (digit at
    # chance both ways); 50 makes it worth encoding.
    t.text_weight = 50.0
    # Share of the caption decoder's teacher-forced input tokens replaced by PAD, so that it
    # reads the caption from z instead of guessing it from the previous tokens (0 = off).
    t.word_dropout = 0.25
    # Where the dataset has labels: a linear head on z (both experts' z) names the label, as
    # the GAN's auxiliary heads; 0 for caption-only data (a dataset without labels stops with
    # a clear error). The image term (~3k pixels) dominates the encoders' gradients: at 0
    # the digit was right ~30% both ways, at 50 the head was still at chance after 1,200
    # steps; at 1000 the digit is right 100% text -> image and 97% image -> text.
    t.aux_classifier_weight = 1000.0
    t.ema_decay = 0.999  # EMA of params used for sampling (0 = no EMA)
    t.sample_rows = 8  # eval examples in a sample grid
    t.sample_cols = 2  # images from each caption, and joint samples, per grid row

    c.eval = common.eval_section()
    return config_variants.apply(c, arg, VARIANTS, "configs/vae.py")


def _smoke(c):
    """Tiny and fast: for tests and CI."""
    common.smoke(c)
    c.model.latent_dim = 8
    c.model.image_width = 8
    c.model.text_embed_dim = 16
    c.model.text_width = 16
    c.model.text_layers = 1
    c.model.text_dim = 16
    c.model.decoder_hidden = 16
    c.data.max_text_len = 48
    c.train.batch_size = 8
    c.train.kl_warmup_steps = 4
    c.train.sample_rows = 2
    c.train.sample_cols = 1
    c.model.joint_mixture_components = 4
    c.model.joint_mixture_examples = 64


def _poe(c):
    """Product of experts with a prior expert (MVAE): joint + sub-sampled unimodal ELBOs."""
    c.model.fusion = "poe"


def _moe(c):
    """Mixture of experts (MMVAE): stratified ELBO, every z reconstructs both modalities."""
    c.model.fusion = "moe"


def _fashion_mnist(c):
    """Fashion-MNIST, 32x32 RGB, captions from the class names; prepared offline from the
    Debian package (apt-get install dataset-fashion-mnist; data/fashion_mnist_captions.py)."""
    c.data.name = "fashion_mnist_captions"
    c.model.num_classes = 10
    c.eval.best_metric = "fd_fashion"  # the domain evaluator trained on it (tag "fashion")


VARIANTS = {
    "smoke": _smoke,
    "poe": _poe,
    "moe": _moe,
    "minilm": common.minilm,
    "fashion_mnist": _fashion_mnist,
}
