"""Text-conditional GAN: state, init, the pure per-device train step, generation.

`GAN.train_step` is written for one device's shard of the batch (pmap-style): gradients,
metrics and BatchNorm statistics are averaged over the named axis `axis_name`.
`mmgen_jax.parallel.data_parallel` maps it over all devices. The players' objectives are
the module-level pure functions below, bound to the networks with `functools.partial`.
"""

import functools
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from mmgen_jax import augment as augment_lib
from mmgen_jax import losses
from mmgen_jax.families import base, pretrained_text
from mmgen_jax.models import dcgan, minilm
from mmgen_jax.models import text as text_lib
from mmgen_jax.models.conditional import PrecomputedText, TextConditioned

PRECOMPUTED_TEXT = "none"  # model.text_encoder: the batch carries caption embeddings


@flax.struct.dataclass
class NetState:
    """One network's trainable part: parameters, BatchNorm statistics, optimizer state."""

    params: Any
    batch_stats: Any
    opt_state: Any


@flax.struct.dataclass
class GANState:
    step: jax.Array  # int32 scalar: optimisation steps taken
    rng: jax.Array  # raw uint32 PRNG key; per step and example via fold_in
    g: NetState
    d: NetState
    ema_params: Any  # exponential moving average of g.params, used for sampling


class GAN(base.Family):
    """The family: networks and optimizers from a config, and pure functions over GANState."""

    capabilities = frozenset({base.TEXT_TO_IMAGE})
    # Sampling controls over G's noise that `sample` offers: generate(..., truncation=T),
    # and embed/draw, which interpolate between noises and between caption embeddings.
    noise_controls = frozenset({"truncation", "interpolate"})
    nan_hint = "lower the learning rates (--config.train.lr_g, --config.train.lr_d)"

    def __init__(self, config, axis_name="data"):
        super().__init__(config, axis_name)
        t = config.train
        if t.update_order not in losses.UPDATE_ORDERS:
            raise ValueError(
                f"config.train.update_order={t.update_order!r}: use one of {losses.UPDATE_ORDERS}"
            )
        # BatchNorm averages its statistics over `axis_name` inside the mapped step; the
        # `_local` twins (same parameters) run outside it: at init and when sampling.
        if t.contrastive_weight > 0 and config.model.conditioning != "projection":
            raise ValueError(
                "train.contrastive_weight > 0 aligns the two sides of a projection "
                "discriminator: set --config.model.conditioning=projection (or the weight to 0)"
            )
        augment_lib.parse(t.get("augment", ""))  # a bad policy fails here, not in the step
        self.generator = self._generator(axis_name)
        self.discriminator = self._discriminator(axis_name)
        self._generator_local = self._generator(None)
        self._discriminator_local = self._discriminator(None)
        pretrained_text.check(config)
        self.tx_g = pretrained_text.optimizer(optax.adam(t.lr_g, b1=t.b1, b2=t.b2), config.model)
        self.tx_d = pretrained_text.optimizer(optax.adam(t.lr_d, b1=t.b1, b2=t.b2), config.model)

    # ---- networks ----------------------------------------------------------------
    def _text_encoder(self):
        m = self.config.model
        if m.text_encoder == PRECOMPUTED_TEXT:
            return PrecomputedText()
        if m.text_encoder == "minilm":
            return minilm.CaptionEncoder(
                out_dim=m.text_dim, trainable=m.text_encoder_trainable, dtype=jnp.dtype(m.dtype)
            )
        return text_lib.TextEncoder(
            max_len=self.config.data.max_text_len,
            embed_dim=m.text_embed_dim,
            width=m.text_width,
            num_layers=m.text_layers,
            out_dim=m.text_dim,
            kind=m.text_encoder,
            dtype=jnp.dtype(m.dtype),
        )

    def _generator(self, axis_name):
        m, d = self.config.model, self.config.data
        net = dcgan.Generator(
            image_size=d.image_size,
            base_width=m.g_width,
            text_proj_dim=m.text_proj_dim,
            impl=m.g_impl,
            upsample=m.get("g_upsample", "transpose"),  # runs from before the field: default
            axis_name=axis_name,
            dtype=jnp.dtype(m.dtype),
        )
        return TextConditioned(encoder=self._text_encoder(), net=net, num_classes=self._classes())

    def _classes(self):
        """Label classes of the auxiliary heads, or 0 when they are off."""
        return self.config.model.num_classes if self.config.train.aux_classifier_weight else 0

    def _discriminator(self, axis_name):
        m, d = self.config.model, self.config.data
        net = dcgan.Discriminator(
            image_size=d.image_size,
            base_width=m.d_width,
            text_proj_dim=m.text_proj_dim,
            conditioning=m.conditioning,
            norm=m.d_norm,
            num_classes=self._classes(),
            twin_classifier=_twin(self.config.train),
            minibatch_std=m.get("d_minibatch_std", 0),  # runs from before the field: off
            impl=m.d_impl,
            axis_name=axis_name,
            dtype=jnp.dtype(m.dtype),
        )
        return TextConditioned(encoder=self._text_encoder(), net=net, num_classes=self._classes())

    # ---- state -------------------------------------------------------------------
    def init(self, rng) -> GANState:
        """A fresh state; deterministic in `rng`."""
        m, d = self.config.model, self.config.data
        key_g, key_d, key_run = jax.random.split(rng, 3)
        z = jnp.zeros((1, m.noise_dim), jnp.float32)
        text_shape, text_dtype = self.text_spec()
        tokens = jnp.zeros((1, *text_shape), text_dtype)
        images = jnp.zeros((1, d.image_size, d.image_size, 3), jnp.float32)
        g_vars = self._generator_local.init(key_g, z, tokens, train=False)
        d_vars = self._discriminator_local.init(key_d, images, tokens, train=False)
        # A pretrained caption encoder starts from its shipped weights (no-op otherwise).
        g_vars = {**g_vars, "params": minilm.load_into(g_vars["params"])}
        d_vars = {**d_vars, "params": minilm.load_into(d_vars["params"])}

        def net_state(variables, tx):
            return NetState(
                params=variables["params"],
                batch_stats=variables.get("batch_stats", {}),
                opt_state=tx.init(variables["params"]),
            )

        return GANState(
            step=jnp.zeros((), jnp.int32),
            rng=key_run,
            g=net_state(g_vars, self.tx_g),
            d=net_state(d_vars, self.tx_d),
            ema_params=g_vars["params"],
        )

    def text_spec(self):
        """(shape without the batch axis, dtype) of `batch["text"]`: token ids, or caption
        embeddings when `model.text_encoder == PRECOMPUTED_TEXT`."""
        m = self.config.model
        if m.text_encoder == PRECOMPUTED_TEXT:
            return (m.text_dim,), jnp.float32
        return (self.config.data.max_text_len,), jnp.int32

    def device_batch(self, batch):
        """The host batch fields the step reads, in device dtypes (no int64 on device)."""
        if self.config.model.text_encoder == PRECOMPUTED_TEXT and np.issubdtype(
            np.asarray(batch["text"]).dtype, np.integer
        ):
            raise ValueError(
                "model.text_encoder='none' feeds precomputed caption embeddings and serves the "
                "benchmark (configs/gan.py:dcgan32); to train on captions set "
                "--config.model.text_encoder=conv (or transformer)"
            )
        return base.captioned_batch(batch, self.config)

    def example_batch(self, batch_size, seed):
        """Synthetic captions (or caption embeddings with text_encoder='none') and labels."""
        batch = base.synthetic_batch(
            self.config, batch_size, seed, labels={"label": self.config.model.num_classes}
        )
        shape, dtype = self.text_spec()
        if not np.issubdtype(dtype, np.integer):
            rng = np.random.default_rng(seed)
            batch["text"] = rng.standard_normal((batch_size, *shape)).astype(dtype)
        return batch

    # ---- the step ----------------------------------------------------------------
    def train_step(self, state: GANState, batch):
        """One D and one G update on this device's shard; returns (state, metrics)."""
        t, axis = self.config.train, self.axis_name
        key = jax.random.fold_in(state.rng, state.step)
        z = self.noise(key, batch["index"])
        # With the mode-seeking term, G also draws every caption from a second noise, z2.
        diverse = t.diversity_weight > 0
        z2 = self.noise(jax.random.fold_in(key, 1), batch["index"]) if diverse else None
        tokens, labels = batch["text"], batch.get("label")  # labels: with the label heads on
        wrong = mismatched_captions(tokens, batch["index"], axis) if t.matching_aware else None
        d_nets = {"apply": self.discriminator.apply, "batch_stats": state.d.batch_stats}
        common = {
            "tokens": tokens,
            "labels": labels,
            "train": t,
            "axis_name": axis,
            "augment": augmenter(t.get("augment", ""), key, batch["index"]),
        }

        draw = functools.partial(
            generator_pass,
            apply=self.generator.apply,
            batch_stats=state.g.batch_stats,
            z=z,
            z2=z2,
            tokens=tokens,
            labels=labels,
            train=t,
        )
        (fake, twin, g_text_class), g_vjp, g_stats = jax.vjp(draw, state.g.params, has_aux=True)
        # One forward through D serves both players; each backward below keeps only the
        # cotangents it needs, and XLA drops the rest.
        judge = functools.partial(
            discriminator_pass, real=batch["image"], wrong=wrong, **d_nets, **common
        )
        (d_loss, g_loss), d_vjp, (d_stats, metrics) = jax.vjp(
            judge, state.d.params, fake, has_aux=True
        )
        one, zero = jnp.ones_like(d_loss), jnp.zeros_like(d_loss)
        new_d = _apply(state.d, jax.lax.pmean(d_vjp((one, zero))[0], axis), d_stats, self.tx_d)

        if t.update_order == "simultaneous":  # G's gradient through the not yet updated D
            fake_grads = d_vjp((zero, one))[1]
        else:  # alternating: G plays against the freshly updated D
            objective = functools.partial(
                generator_objective, d_params=new_d.params, **d_nets, **common
            )
            g_loss, fake_grads = jax.value_and_grad(objective)(fake)
        twin_grads = None
        if twin is not None:
            seek = functools.partial(
                losses.mode_seeking_loss,
                z=z,
                z2=z2,
                weight=t.diversity_weight,
                pool=t.get("diversity_pool", 1),  # runs from before the field: pixels
            )
            (_, ratio), (extra, twin_grads) = jax.value_and_grad(
                seek, argnums=(0, 1), has_aux=True
            )(fake, twin)
            fake_grads = fake_grads + extra
            metrics["diversity"] = ratio
        g_grads = jax.lax.pmean(
            g_vjp((fake_grads, twin_grads, jnp.ones_like(g_text_class)))[0], axis
        )
        if labels is not None:
            metrics["g_text_class"] = g_text_class
        new_g = _apply(state.g, g_grads, g_stats, self.tx_g)

        ema = base.ema_update(state.ema_params, new_g.params, state.step, t.ema_decay)
        metrics = jax.lax.pmean({**metrics, "d_loss": d_loss, "g_loss": g_loss}, axis)
        new_state = state.replace(step=state.step + 1, g=new_g, d=new_d, ema_params=ema)
        return new_state, metrics

    def noise(self, key, index, truncation=None):
        """z for each example from its global stream index: independent of device count.
        With `truncation` T > 0, each component is drawn from the standard normal truncated
        to [-T, T] (the truncation trick: the same law as redrawing |z_i| > T)."""
        shape = (self.config.model.noise_dim,)
        if not truncation:
            return base.example_normal(key, index, shape)
        keys = base.example_keys(key, index)
        return jax.vmap(lambda k: jax.random.truncated_normal(k, -truncation, truncation, shape))(
            keys
        )

    # ---- sampling ----------------------------------------------------------------
    def sampling_variables(self, state: GANState):
        """The EMA generator (or the live one when EMA is off) with its BN statistics."""
        params = state.ema_params if self.config.train.ema_decay else state.g.params
        return {"params": params, "batch_stats": state.g.batch_stats}

    def generate(self, variables, tokens, key, indices, truncation=None):
        """Images in [-1, 1] for caption tokens; image i uses noise fold_in(key, indices[i]),
        truncated to [-truncation, truncation] per component when given (see `noise`)."""
        z = self.noise(key, indices, truncation)
        return self._generator_local.apply(variables, z, tokens, train=False)

    def embed(self, variables, tokens):
        """G's pooled caption embeddings (B, text_dim): what `draw` conditions on."""
        return self._generator_local.apply(variables, tokens, train=False, method="encode")

    def draw(self, variables, z, embeddings):
        """Images in [-1, 1] from explicit noise and caption embeddings (interpolation)."""
        return self._generator_local.apply(variables, z, embeddings, train=False, method="score")


def _apply(net: NetState, grads, batch_stats, tx) -> NetState:
    updates, opt_state = tx.update(grads, net.opt_state, net.params)
    return NetState(
        params=optax.apply_updates(net.params, updates),
        batch_stats=batch_stats,
        opt_state=opt_state,
    )


# ---- the players' objectives: pure functions of parameters and batch ---------------------


def augmenter(policy, key, index):
    """What D's inputs pass through: `see(images, pass_number)`, DiffAugment with fresh
    per-example draws for each pass (see mmgen_jax/augment.py), or the identity."""
    if not augment_lib.parse(policy):
        return lambda images, _: images

    def see(images, pass_number):
        keys = base.example_keys(jax.random.fold_in(key, 100 + pass_number), index)
        return augment_lib.diff_augment(images, keys, policy)

    return see


def label_loss(train, logits, labels):
    """The auxiliary label heads' weighted cross-entropy."""
    return train.aux_classifier_weight * losses.classification_loss(logits, labels)


def _twin(train) -> bool:
    """Whether D has TAC-GAN's twin label head (runs from before the field: no)."""
    return bool(train.aux_classifier_weight) and train.get("twin_classifier", False)


def class_terms(train, sown, labels):
    """G's label terms on its images: named as their caption's label by the head trained on
    real images, and with TAC-GAN's twin, minus what the twin (trained on generated images)
    reads, which cancels the pull towards the easiest-to-classify image of each label."""
    loss = label_loss(train, sown["class_logits"], labels)
    if "twin_logits" in sown:
        loss -= label_loss(train, sown["twin_logits"], labels)
    return loss


def generator_pass(g_params, *, apply, batch_stats, z, z2, tokens, labels, train):
    """G's images for the captions from z, and from z2 in the same call when the mode-seeking
    term is on -> ((images, images from z2 or None, caption-label loss), new batch_stats)."""
    twin = z2 is not None
    images, new_vars = apply(
        {"params": g_params, "batch_stats": batch_stats},
        jnp.concatenate([z, z2]) if twin else z,
        jnp.concatenate([tokens, tokens]) if twin else tokens,
        train=True,
        mutable=["batch_stats", "intermediates"],
    )
    pair = tuple(jnp.split(images, 2)) if twin else (images, None)
    text_loss = (
        label_loss(train, new_vars["intermediates"]["text_class_logits"][0][: len(z)], labels)
        if labels is not None
        else jnp.zeros(())
    )
    return (*pair, text_loss), new_vars["batch_stats"]


def encode(apply, d_params, tokens):
    """D's caption embedding, and its label logits when the label heads are on."""
    embedding, sown = apply(
        {"params": d_params}, tokens, train=True, method="encode", mutable=["intermediates"]
    )
    return embedding, sown.get("intermediates", {}).get("text_class_logits", (None,))[0]


def score(apply, d_params, batch_stats, images, embedding):
    """-> (D's logits, new batch_stats, {name: what D sowed}: features, class logits)."""
    logits, new_vars = apply(
        {"params": d_params, "batch_stats": batch_stats},
        images,
        embedding,
        train=True,
        mutable=["batch_stats", "intermediates"],
        method="score",
    )
    sown = {k: v[0] for k, v in new_vars.get("intermediates", {}).get("net", {}).items()}
    return logits.astype(jnp.float32), new_vars["batch_stats"], sown


def gather(x, axis_name):
    """The rows of every device (in device order), and where this device's rows start."""
    start = jax.lax.axis_index(axis_name) * x.shape[0]
    return jax.lax.all_gather(x, axis_name, tiled=True), start


def alignment(queries, keys, axis_name, temperature):
    """Each local query should pick its own row among the keys of the whole global batch."""
    all_keys, start = gather(keys, axis_name)
    return losses.contrastive_loss(queries, all_keys, start, temperature)


def discriminator_pass(
    d_params, fake, *, apply, batch_stats, real, tokens, wrong, labels, train, axis_name, augment
):
    """Both players' losses from one pass of D over real, generated and (with matching-aware
    training) mismatched pairs, each seen through `augment` -> ((d_loss, g_loss), (D's new
    batch_stats, metrics))."""
    t = train
    real, fake = augment(real, 0), augment(fake, 1)
    # Each caption batch is encoded once and shared by the passes that use it. D's running
    # statistics follow the real batches (never used for sampling: D runs on batch stats).
    embedding, text_logits = encode(apply, d_params, tokens)
    real_logits, d_stats, real_features = score(apply, d_params, batch_stats, real, embedding)
    fake_logits, _, fake_features = score(apply, d_params, batch_stats, fake, embedding)
    wrong_logits = None
    if wrong is not None:
        wrong_embedding = encode(apply, d_params, wrong)[0]
        wrong_logits = score(apply, d_params, batch_stats, real, wrong_embedding)[0]
    d_loss = losses.discriminator_loss(
        t.loss, real_logits, fake_logits, wrong_logits, t.mismatch_weight
    )
    g_loss = losses.generator_loss(t.loss, fake_logits)
    metrics = {
        "d_real": jnp.mean(jax.nn.sigmoid(real_logits)),  # D's belief that reals are real
        "d_fake": jnp.mean(jax.nn.sigmoid(fake_logits)),  # ... and that fakes are real
    }
    if labels is not None:
        # TAC-GAN: D's image head names the label of real images and G wants its images
        # named as the label of their caption; D's caption head names it too.
        d_class = label_loss(t, real_features["class_logits"], labels)
        g_class = class_terms(t, fake_features, labels)
        d_loss += d_class + label_loss(t, text_logits, labels)
        if "twin_logits" in fake_features:  # TAC-GAN: the twin learns the generated images
            d_loss += label_loss(t, fake_features["twin_logits"], labels)
        g_loss += g_class
        metrics.update(d_class=d_class, g_class=g_class)
    if t.contrastive_weight > 0:
        # D learns to tell which caption goes with which real image (both ways); G is
        # rewarded when D would match its image to the caption it was given.
        image, text = real_features["image_features"], real_features["text_features"]
        temperature = t.contrastive_temperature
        all_images, offset = gather(image, axis_name)
        d_align = 0.5 * alignment(image, text, axis_name, temperature) + 0.5 * (
            losses.contrastive_loss(text, all_images, offset, temperature)
        )
        g_align = alignment(fake_features["image_features"], text, axis_name, temperature)
        d_loss += t.contrastive_weight * d_align
        g_loss += t.contrastive_weight * g_align
        metrics.update(d_align=d_align, g_align=g_align)
    return (d_loss, g_loss), (d_stats, metrics)


def generator_objective(
    fake, *, d_params, apply, batch_stats, tokens, labels, train, axis_name, augment
):
    """G's loss on its images, seen through `augment`, against D with `d_params`
    (alternating updates)."""
    t = train
    fake = augment(fake, 2)
    logits, _, sown = score(apply, d_params, batch_stats, fake, encode(apply, d_params, tokens)[0])
    loss = losses.generator_loss(t.loss, logits)
    if labels is not None:
        loss += class_terms(t, sown, labels)
    if t.contrastive_weight > 0:
        loss += t.contrastive_weight * alignment(
            sown["image_features"], sown["text_features"], axis_name, t.contrastive_temperature
        )
    return loss


def mismatched_captions(tokens, index, axis_name):
    """Each example's 'wrong' caption: the caption of the example whose stream index comes
    next in the global batch (cyclically). It depends on the indices only, so any split of
    the batch over devices and processes pairs the same examples."""
    n = tokens.shape[0]
    all_tokens, start = gather(tokens, axis_name)
    all_index, _ = gather(index, axis_name)
    order = jnp.argsort(all_index)  # rows in stream order
    rank = jnp.argsort(order)  # each row's place in that order
    mine = jax.lax.dynamic_slice_in_dim(rank, start, n)
    return all_tokens[order[(mine + 1) % all_index.shape[0]]]
