"""Text-conditional GAN: state, init, the pure per-device train step, generation.

`train_step` is written for one device's shard of the batch (pmap-style): gradients,
metrics and BatchNorm statistics are averaged over the named axis `axis_name`.
`mmgen_jax.parallel.data_parallel` maps it over all devices.
"""

from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

from mmgen_jax import losses
from mmgen_jax.families import batches, pretrained_text
from mmgen_jax.models import dcgan, minilm
from mmgen_jax.models import text as text_lib
from mmgen_jax.models.conditional import PrecomputedText, TextConditioned


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


class GAN:
    """The family: networks and optimizers from a config, and pure functions over GANState."""

    def __init__(self, config, axis_name="data"):
        self.config = config
        self.axis_name = axis_name
        t = config.train
        if t.update_order not in ("alternating", "simultaneous"):
            raise ValueError(
                f"config.train.update_order={t.update_order!r}: use 'alternating' or 'simultaneous'"
            )
        # BatchNorm averages its statistics over `axis_name` inside the mapped step; the
        # `_local` twins (same parameters) run outside it: at init and when sampling.
        if t.contrastive_weight > 0 and config.model.conditioning != "projection":
            raise ValueError(
                "train.contrastive_weight > 0 aligns the two sides of a projection "
                "discriminator: set --config.model.conditioning=projection (or the weight to 0)"
            )
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
        if m.text_encoder == "none":
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
        embeddings when `model.text_encoder == "none"`."""
        m = self.config.model
        if m.text_encoder == "none":
            return (m.text_dim,), jnp.float32
        return (self.config.data.max_text_len,), jnp.int32

    def device_batch(self, batch):
        """The host batch fields the step reads, in device dtypes (no int64 on device)."""
        return batches.captioned_batch(batch, self.config)

    # ---- the step ----------------------------------------------------------------
    def train_step(self, state: GANState, batch):
        """One D and one G update on this device's shard; returns (state, metrics)."""
        t = self.config.train
        key = jax.random.fold_in(state.rng, state.step)
        z = self.noise(key, batch["index"])
        real, tokens = batch["image"], batch["text"]
        wrong = self._mismatched(tokens, batch["index"]) if t.matching_aware else None

        # With the mode-seeking term, G also draws every caption from a second noise, z2.
        diverse = t.diversity_weight > 0
        z2 = self.noise(jax.random.fold_in(key, 1), batch["index"]) if diverse else None

        classify = t.aux_classifier_weight > 0

        def class_loss(logits):
            return t.aux_classifier_weight * losses.classification_loss(logits, batch["label"])

        def generate(g_params):
            images, new_vars = self.generator.apply(
                {"params": g_params, "batch_stats": state.g.batch_stats},
                jnp.concatenate([z, z2]) if diverse else z,
                jnp.concatenate([tokens, tokens]) if diverse else tokens,
                train=True,
                mutable=["batch_stats", "intermediates"],
            )
            pair = tuple(jnp.split(images, 2)) if diverse else (images, None)
            text_loss = (
                class_loss(new_vars["intermediates"]["text_class_logits"][0][: len(z)])
                if classify
                else jnp.zeros(())
            )
            return (*pair, text_loss), new_vars["batch_stats"]

        (fake, twin, g_text_class), g_vjp, g_stats = jax.vjp(generate, state.g.params, has_aux=True)

        def encode(d_params, toks):
            """D's caption embedding, and its label logits when the label heads are on."""
            embedding, sown = self.discriminator.apply(
                {"params": d_params},
                toks,
                train=True,
                method="encode",
                mutable=["intermediates"],
            )
            return embedding, sown.get("intermediates", {}).get("text_class_logits", (None,))[0]

        contrastive = t.contrastive_weight > 0

        def discriminate(d_params, images, embedding):
            """-> (logits, new batch_stats, {name: what D sowed}: features, class logits)."""
            logits, new_vars = self.discriminator.apply(
                {"params": d_params, "batch_stats": state.d.batch_stats},
                images,
                embedding,
                train=True,
                mutable=["batch_stats", "intermediates"],
                method="score",
            )
            sown = {k: v[0] for k, v in new_vars.get("intermediates", {}).get("net", {}).items()}
            return logits.astype(jnp.float32), new_vars["batch_stats"], sown

        def alignment(image_features, text_features):
            """Each image should pick its own caption among all captions of the global batch."""
            all_text, offset = self._gather(text_features)
            return losses.contrastive_loss(
                image_features, all_text, offset, t.contrastive_temperature
            )

        def objectives(d_params, fake):
            # Each caption batch is encoded once and shared by the passes that use it.
            # D's running statistics follow the real batches (they are never used for
            # sampling: D always runs on batch statistics).
            embedding, text_logits = encode(d_params, tokens)
            real_logits, d_stats, real_features = discriminate(d_params, real, embedding)
            fake_logits, _, fake_features = discriminate(d_params, fake, embedding)
            wrong_logits = (
                None
                if wrong is None
                else discriminate(d_params, real, encode(d_params, wrong)[0])[0]
            )
            d_loss = losses.discriminator_loss(
                t.loss, real_logits, fake_logits, wrong_logits, t.mismatch_weight
            )
            g_loss = losses.generator_loss(t.loss, fake_logits)
            metrics = {
                "d_real": jnp.mean(jax.nn.sigmoid(real_logits)),  # D's belief that reals are real
                "d_fake": jnp.mean(jax.nn.sigmoid(fake_logits)),  # ... and that fakes are real
            }
            if classify:
                # TAC-GAN: D's image head names the label of real images and G wants its
                # images named as the label of their caption; D's caption head names it too.
                d_class = class_loss(real_features["class_logits"])
                g_class = class_loss(fake_features["class_logits"])
                d_loss += d_class + class_loss(text_logits)
                g_loss += g_class
                metrics.update(d_class=d_class, g_class=g_class)
            if contrastive:
                # D learns to tell which caption goes with which real image (both ways);
                # G is rewarded when D would match its image to the caption it was given.
                image, text = real_features["image_features"], real_features["text_features"]
                all_images, offset = self._gather(image)
                d_align = 0.5 * alignment(image, text) + 0.5 * losses.contrastive_loss(
                    text, all_images, offset, t.contrastive_temperature
                )
                g_align = alignment(fake_features["image_features"], text)
                d_loss += t.contrastive_weight * d_align
                g_loss += t.contrastive_weight * g_align
                metrics.update(d_align=d_align, g_align=g_align)
            return (d_loss, g_loss), (d_stats, metrics)

        # One forward through D serves both players; each backward below keeps only the
        # cotangents it needs, and XLA drops the rest.
        (d_loss, g_loss), d_vjp, (d_stats, metrics) = jax.vjp(
            objectives, state.d.params, fake, has_aux=True
        )
        one, zero = jnp.ones_like(d_loss), jnp.zeros_like(d_loss)
        d_grads = jax.lax.pmean(d_vjp((one, zero))[0], self.axis_name)
        new_d = _apply(state.d, d_grads, d_stats, self.tx_d)

        if t.update_order == "simultaneous":  # G's gradient through the not yet updated D
            fake_grads = d_vjp((zero, one))[1]
        else:  # alternating: G plays against the freshly updated D

            def g_objective(fake):
                logits, _, sown = discriminate(new_d.params, fake, encode(new_d.params, tokens)[0])
                loss = losses.generator_loss(t.loss, logits)
                if classify:
                    loss += class_loss(sown["class_logits"])
                if contrastive:
                    loss += t.contrastive_weight * alignment(
                        sown["image_features"], sown["text_features"]
                    )
                return loss

            g_loss, fake_grads = jax.value_and_grad(g_objective)(fake)
        twin_grads = None
        if diverse:
            # Mode seeking (Mao et al., 2019): the same caption under two noises should give
            # images as far apart as the noises are; G minimises 1 / (that ratio + eps).
            def spread(fake, twin):
                ratio = jnp.mean(jnp.abs(fake - twin)) / jnp.mean(jnp.abs(z - z2))
                return t.diversity_weight / (ratio + 1e-5), ratio

            (_, ratio), (extra, twin_grads) = jax.value_and_grad(
                spread, argnums=(0, 1), has_aux=True
            )(fake, twin)
            fake_grads = fake_grads + extra
            metrics["diversity"] = ratio
        g_grads = jax.lax.pmean(
            g_vjp((fake_grads, twin_grads, jnp.ones_like(g_text_class)))[0], self.axis_name
        )
        if classify:
            metrics["g_text_class"] = g_text_class
        new_g = _apply(state.g, g_grads, g_stats, self.tx_g)

        # The EMA's decay warms up as (1 + step) / (10 + step) until it reaches ema_decay,
        # so early averages are not dominated by the random initialisation.
        step = state.step.astype(jnp.float32)
        decay = jnp.minimum(t.ema_decay, (1.0 + step) / (10.0 + step))
        ema = optax.incremental_update(new_g.params, state.ema_params, 1.0 - decay)
        metrics = jax.lax.pmean({**metrics, "d_loss": d_loss, "g_loss": g_loss}, self.axis_name)
        new_state = state.replace(step=state.step + 1, g=new_g, d=new_d, ema_params=ema)
        return new_state, metrics

    def noise(self, key, index):
        """z for each example from its global stream index: independent of device count."""
        nz = self.config.model.noise_dim
        return jax.vmap(lambda i: jax.random.normal(jax.random.fold_in(key, i), (nz,)))(index)

    def _gather(self, x):
        """The rows of every device (in device order), and where this device's rows start."""
        start = jax.lax.axis_index(self.axis_name) * x.shape[0]
        return jax.lax.all_gather(x, self.axis_name, tiled=True), start

    def _mismatched(self, tokens, index):
        """Each example's 'wrong' caption: the caption of the example whose stream index
        comes next in the global batch (cyclically). It depends on the indices only, so
        any split of the batch over devices and processes pairs the same examples."""
        n = tokens.shape[0]
        all_tokens, start = self._gather(tokens)
        all_index, _ = self._gather(index)
        order = jnp.argsort(all_index)  # rows in stream order
        rank = jnp.argsort(order)  # each row's place in that order
        mine = jax.lax.dynamic_slice_in_dim(rank, start, n)
        return all_tokens[order[(mine + 1) % all_index.shape[0]]]

    # ---- sampling ----------------------------------------------------------------
    def sampling_variables(self, state: GANState):
        """The EMA generator (or the live one when EMA is off) with its BN statistics."""
        params = state.ema_params if self.config.train.ema_decay else state.g.params
        return {"params": params, "batch_stats": state.g.batch_stats}

    def generate(self, variables, tokens, key, indices):
        """Images in [-1, 1] for caption tokens; image i uses noise fold_in(key, indices[i])."""
        z = self.noise(key, indices)
        return self._generator_local.apply(variables, z, tokens, train=False)


def _apply(net: NetState, grads, batch_stats, tx) -> NetState:
    updates, opt_state = tx.update(grads, net.opt_state, net.params)
    return NetState(
        params=optax.apply_updates(net.params, updates),
        batch_stats=batch_stats,
        opt_state=opt_state,
    )
