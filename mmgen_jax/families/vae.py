"""Multimodal VAE over (image, caption): one latent z for both, so one model generates both
modalities jointly and translates between them.

Fusion of the two Gaussian posteriors q(z|x) and q(z|t), by `config.model.fusion`:
  'poe' (MVAE, Wu & Goodman 2018): q(z|x,t) is the product of the experts and a N(0, I) prior
        expert; the objective is the joint ELBO plus the unimodal ELBOs of q(z|x) (image
        only) and q(z|t) (caption only), MVAE's sub-sampled training.
  'moe' (MMVAE, Shi et al. 2019): q(z|x,t) is the uniform mixture of the experts; the
        stratified objective draws z from each expert and reconstructs *both* modalities
        from it, with the KL estimated against the mixture density.
Both: KL weight beta with a linear warm-up, per-modality reconstruction weights.

`train_step` is written for one device's shard of the batch (pmap-style), averaged over
`axis_name`; `mmgen_jax.parallel.data_parallel` maps it over all devices. All randomness of
example i comes from fold_in(key, index_i), so results do not depend on the device count.
"""

import jax
import jax.numpy as jnp
import optax

from mmgen_jax import elbo, latent_mixture, losses, utf8
from mmgen_jax.data import tokenizer
from mmgen_jax.families import base, pretrained_text
from mmgen_jax.models import minilm
from mmgen_jax.models import vae as vae_lib

FUSIONS = ("poe", "moe")
PAD_ID, EOS_ID = tokenizer.PAD, tokenizer.EOS  # padding and end of caption


class VAE(base.Family):
    """The family: networks and optimizer from a config, pure functions over its state."""

    capabilities = frozenset(
        {
            base.TEXT_TO_IMAGE,
            base.IMAGE_TO_TEXT,
            base.JOINT,
            base.RECONSTRUCT,
            base.POSTERIOR,
            base.LIKELIHOOD,
        }
    )

    def __init__(self, config, axis_name="data"):
        super().__init__(config, axis_name)
        m, d, t = config.model, config.data, config.train
        if m.fusion not in FUSIONS:
            raise ValueError(f"config.model.fusion={m.fusion!r}: use one of {FUSIONS}")
        if t.image_likelihood not in elbo.IMAGE_LIKELIHOODS:
            raise ValueError(
                f"config.train.image_likelihood={t.image_likelihood!r}: use one of "
                f"{elbo.IMAGE_LIKELIHOODS}"
            )
        pretrained_text.check(config)
        # WordPiece captions (data.tokenizer="minilm") end with [SEP], from a 30,522-id vocabulary.
        wordpiece = d.get("tokenizer", "bytes") == "minilm"
        self.eos_id = minilm.SEP_ID if wordpiece else EOS_ID
        self.byte_captions = not wordpiece  # valid UTF-8 by construction (`decode_captions`)
        vocab = {"vocab_size": minilm.VOCAB_SIZE} if wordpiece else {}
        self.net = vae_lib.MultimodalVAE(
            latent_dim=m.latent_dim,
            image_size=d.image_size,
            max_text_len=d.max_text_len,
            image_width=m.image_width,
            text_embed_dim=m.text_embed_dim,
            text_width=m.text_width,
            text_layers=m.text_layers,
            text_dim=m.text_dim,
            text_encoder=m.text_encoder,
            text_encoder_trainable=m.get("text_encoder_trainable", False),
            **vocab,
            decoder_hidden=m.decoder_hidden,
            num_classes=m.num_classes if t.aux_classifier_weight else 0,
            dtype=jnp.dtype(m.dtype),
        )
        self.tx = pretrained_text.optimizer(optax.adam(t.lr, b1=t.b1, b2=t.b2), m)

    # ---- state -------------------------------------------------------------------
    def init(self, rng) -> base.NetworkState:
        """A fresh state; deterministic in `rng`."""
        d = self.config.data
        key_params, key_run = jax.random.split(rng)
        images = jnp.zeros((1, d.image_size, d.image_size, 3), jnp.float32)
        tokens = jnp.zeros((1, d.max_text_len), jnp.int32)
        # A pretrained caption encoder starts from its shipped weights (no-op otherwise).
        params = minilm.load_into(self.net.init(key_params, images, tokens)["params"])
        return base.network_state(params, self.tx, key_run)

    def device_batch(self, batch):
        """The host batch fields the step reads, in device dtypes (no int64 on device)."""
        return base.captioned_batch(batch, self.config)

    def example_batch(self, batch_size, seed):
        return base.synthetic_batch(
            self.config, batch_size, seed, labels={"label": self.config.model.num_classes}
        )

    # ---- posteriors and sampling helpers -------------------------------------------
    def _apply(self, params, method, *args):
        return self.net.apply({"params": params}, *args, method=method)

    def _joint_posterior(self, image_q, text_q):
        """(means, logvars) stacked as experts for PoE (without the prior) or the mixture."""
        return jnp.stack([image_q[0], text_q[0]]), jnp.stack([image_q[1], text_q[1]])

    def _unimodal(self, q):
        """The posterior used when only this modality is given: PoE adds the prior expert."""
        if self.config.model.fusion == "poe":
            return elbo.product_of_experts(q[0][None], q[1][None])
        return q

    def _accuracy(self, correct, count):
        """Token accuracy over the global batch (a ratio of sums: not a mean of the devices'
        ratios, which would depend on how the batch is split)."""
        correct, count = (jax.lax.psum(jnp.sum(x), self.axis_name) for x in (correct, count))
        return correct / jnp.maximum(count, 1.0)

    def _sample(self, key, index, mean, logvar):
        """z per example, from fold_in(key, index): independent of device count and batch."""
        return jax.vmap(elbo.reparameterize)(base.example_keys(key, index), mean, logvar)

    # ---- the step ----------------------------------------------------------------
    def train_step(self, state: base.NetworkState, batch):
        """One Adam update of all four networks on this device's shard."""
        t = self.config.train
        key = jax.random.fold_in(state.rng, state.step)
        beta = elbo.kl_warmup(state.step, t.beta, t.kl_warmup_steps)
        objective = (
            self._poe_objective if self.config.model.fusion == "poe" else self._moe_objective
        )

        def loss_fn(params):
            loss, metrics, z = objective(
                params, batch["image"], batch["text"], batch["index"], key, beta
            )
            if t.aux_classifier_weight:
                # Optional, where the data has labels (as the GAN's heads): z names the label.
                logits = self._apply(params, "classify", jnp.concatenate(z))
                labels = jnp.concatenate([batch["label"]] * len(z))
                metrics["z_class"] = losses.classification_loss(logits, labels)
                loss += t.aux_classifier_weight * metrics["z_class"]
            return loss, metrics

        grads, metrics = jax.grad(loss_fn, has_aux=True)(state.params)
        grads = jax.lax.pmean(grads, self.axis_name)
        updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        ema = base.ema_update(state.ema_params, params, state.step, t.ema_decay)
        metrics = jax.lax.pmean({**metrics, "beta": beta}, self.axis_name)
        new_state = state.replace(
            step=state.step + 1, params=params, opt_state=opt_state, ema_params=ema
        )
        return new_state, metrics

    def _decoder_inputs(self, tokens, index, key):
        """The caption shifted right, each input token replaced by PAD with probability
        train.word_dropout (never the first): the decoder must then read the caption from z
        instead of guessing it from the previous tokens (Bowman et al. 2016)."""
        inputs = vae_lib.shift_right(tokens)
        rate = self.config.train.word_dropout
        if not rate:
            return inputs
        keys = base.example_keys(key, index)
        drop = jax.vmap(lambda k: jax.random.bernoulli(k, rate, tokens.shape[1:]))(keys)
        return jnp.where(drop.at[:, 0].set(False), PAD_ID, inputs)

    def _likelihoods(self, params, z_image, z_text, images, tokens, inputs):
        """Decodes images from each z of `z_image` and captions from each of `z_text` (lists
        of (B, D)) in one batched call per decoder. -> (image lls, caption lls, image MSEs,
        caption accuracy counts), one entry per z."""
        t = self.config.train
        means = self._apply(params, "decode_image", jnp.concatenate(z_image))
        means = jnp.split(means, len(z_image))
        logits = self._apply(
            params,
            "decode_text",
            jnp.concatenate(z_text),
            jnp.concatenate([inputs] * len(z_text)),
        )
        text = elbo.caption_log_likelihood(logits, jnp.concatenate([tokens] * len(z_text)))
        text_ll, correct, count = (jnp.split(x, len(z_text)) for x in text)
        image_ll = [
            elbo.image_log_likelihood(images, m, t.image_likelihood, t.image_scale) for m in means
        ]
        mse = [jnp.mean((images - m) ** 2) for m in means]
        return image_ll, text_ll, mse, (correct, count)

    def _poe_objective(self, params, images, tokens, index, key, beta):
        """Joint ELBO of q(z|x,t) + image-only ELBO of q(z|x) + caption-only ELBO of q(z|t)."""
        t = self.config.train
        weights = (t.image_weight, t.text_weight)
        image_q = self._apply(params, "encode_image", images)
        text_q = self._apply(params, "encode_text", tokens)
        joint_q = elbo.product_of_experts(*self._joint_posterior(image_q, text_q))
        image_q, text_q = self._unimodal(image_q), self._unimodal(text_q)
        z_joint, z_image, z_text = (
            self._sample(jax.random.fold_in(key, k), index, *q)
            for k, q in enumerate((joint_q, image_q, text_q))
        )
        inputs = self._decoder_inputs(tokens, index, jax.random.fold_in(key, 3))
        (ll_x, ll_x_only), (ll_t, ll_t_only), (mse, _), ((correct, _), (count, _)) = (
            self._likelihoods(params, [z_joint, z_image], [z_joint, z_text], images, tokens, inputs)
        )
        kl_joint, kl_x, kl_t = (elbo.gaussian_kl(*q) for q in (joint_q, image_q, text_q))
        total = (
            elbo.elbo([ll_x, ll_t], weights, kl_joint, beta)
            + elbo.elbo([ll_x_only], weights[:1], kl_x, beta)
            + elbo.elbo([ll_t_only], weights[1:], kl_t, beta)
        )
        metrics = {
            "elbo": jnp.mean(ll_x + ll_t - kl_joint),  # the joint ELBO (unweighted, beta=1)
            "recon_image": -jnp.mean(ll_x),
            "recon_text": -jnp.mean(ll_t),
            "kl": jnp.mean(kl_joint),
            "kl_image": jnp.mean(kl_x),
            "kl_text": jnp.mean(kl_t),
            "image_mse": mse,
            "text_accuracy": self._accuracy(correct, count),
        }
        return -jnp.mean(total), metrics, [z_joint, z_image, z_text]

    def _moe_objective(self, params, images, tokens, index, key, beta):
        """MMVAE's stratified ELBO: z from each expert reconstructs both modalities; the KL
        is the single-sample estimate log q_mix(z|x,t) - log p(z)."""
        t = self.config.train
        weights = (t.image_weight, t.text_weight)
        image_q = self._apply(params, "encode_image", images)
        text_q = self._apply(params, "encode_text", tokens)
        experts = self._joint_posterior(image_q, text_q)
        z = [
            self._sample(jax.random.fold_in(key, k), index, *q)
            for k, q in enumerate((image_q, text_q))
        ]
        inputs = self._decoder_inputs(tokens, index, jax.random.fold_in(key, 3))
        image_ll, text_ll, mse, (correct, count) = self._likelihoods(
            params, z, z, images, tokens, inputs
        )
        zeros = jnp.zeros_like(z[0])
        kl = [
            elbo.mixture_log_prob(zm, *experts) - elbo.gaussian_log_prob(zm, zeros, zeros)
            for zm in z
        ]
        total = (
            sum(elbo.elbo([lx, lt], weights, k, beta) for lx, lt, k in zip(image_ll, text_ll, kl))
            / 2
        )
        metrics = {
            "elbo": jnp.mean(sum(lx + lt - k for lx, lt, k in zip(image_ll, text_ll, kl)) / 2),
            "recon_image": -jnp.mean(sum(image_ll) / 2),
            "recon_text": -jnp.mean(sum(text_ll) / 2),
            "kl": jnp.mean(sum(kl) / 2),
            "image_mse": sum(mse) / 2,
            # Per-token accuracy of captions decoded from the image's z and the caption's z.
            "text_accuracy_from_image": self._accuracy(correct[0], count[0]),
            "text_accuracy": self._accuracy(jnp.stack(correct), jnp.stack(count)),
        }
        return -jnp.mean(total), metrics, z

    # ---- generation ----------------------------------------------------------------
    def sampling_variables(self, state: base.NetworkState):
        """The EMA parameters (or the live ones when EMA is off)."""
        return {"params": state.ema_params if self.config.train.ema_decay else state.params}

    def generate(self, variables, tokens, key, indices):
        """Text -> image: images in [-1, 1] decoded from z ~ q(z|t); example i uses
        fold_in(key, indices[i])."""
        params = variables["params"]
        q = self._unimodal(self._apply(params, "encode_text", tokens))
        return self._apply(params, "decode_image", self._sample(key, indices, *q))

    def describe(self, variables, images, key, indices, temperature=0.0):
        """Image -> text: int32 caption tokens (N, max_text_len) from z ~ q(z|x); the caption
        is greedy at temperature 0, sampled at softmax temperature `temperature` otherwise."""
        params = variables["params"]
        q = self._unimodal(self._apply(params, "encode_image", images))
        z = self._sample(jax.random.fold_in(key, 0), indices, *q)
        return self._caption(params, z, jax.random.fold_in(key, 1), indices, temperature)

    def joint(self, variables, key, indices):
        """z from the prior -> (images in [-1, 1], greedy caption tokens), one pair per index.
        The prior is N(0, I), or the mixture in variables["latent_mixture"] when there is one
        (`latent_mixture.fit` to codes from `posterior`: ex-post density estimation)."""
        params = variables["params"]
        if "latent_mixture" in variables:
            mixture = variables["latent_mixture"]
            keys = base.example_keys(key, indices)
            z = jax.vmap(lambda k: latent_mixture.sample(k, mixture))(keys)
        else:
            dim = self.config.model.latent_dim
            zeros = jnp.zeros((indices.shape[0], dim), jnp.float32)
            z = self._sample(key, indices, zeros, zeros)
        return self._apply(params, "decode_image", z), self._caption(params, z, key, indices, 0.0)

    def reconstruct(self, variables, images, tokens, key, indices):
        """(image, caption) -> z ~ q(z|x,t) -> (images in [-1, 1], greedy caption tokens)."""
        params = variables["params"]
        key = jax.random.fold_in(key, 0)
        z = self.posterior(variables, images, tokens, key, indices)
        return self._apply(params, "decode_image", z), self._caption(params, z, key, indices, 0.0)

    def posterior(self, variables, images, tokens, key, indices):
        """Latent codes z ~ q(z|x,t) (N, latent_dim) of image-caption pairs: the aggregate
        posterior's samples, e.g. to fit a prior for `joint`."""
        params = variables["params"]
        image_q = self._apply(params, "encode_image", images)
        text_q = self._apply(params, "encode_text", tokens)
        return self._joint_sample(key, indices, self._joint_posterior(image_q, text_q))

    def _joint_sample(self, key, indices, experts):
        """z ~ q(z|x,t): the product of the experts (PoE) or a draw from their mixture (MoE)."""
        if self.config.model.fusion == "poe":
            return self._sample(key, indices, *elbo.product_of_experts(*experts))
        keys = base.example_keys(key, indices)
        pick = jax.vmap(lambda k, m, v: elbo.mixture_sample(k, m, v)[0], in_axes=(0, 1, 1))
        return pick(keys, *experts)

    def _joint_log_prob(self, z, experts):
        """log q(z|x,t) of `_joint_sample`'s posterior."""
        if self.config.model.fusion == "poe":
            return elbo.gaussian_log_prob(z, *elbo.product_of_experts(*experts))
        return elbo.mixture_log_prob(z, *experts)

    # ---- likelihood ------------------------------------------------------------------
    def log_likelihood(self, variables, images, tokens, key, indices, num_samples):
        """Importance-weighted bounds (IWAE, Burda et al. 2016) of log p(x, t), log p(x) and
        log p(t) per example, in nats: log (1/K) sum_k p(. | z_k) p(z_k) / q(z_k | .) with
        K = `num_samples` draws z_k ~ q from the posterior the family infers from what is
        given: q(z|x,t) (`_joint_sample`), q(z|x), q(z|t) (`_unimodal`). K = 1 is a
        single-sample ELBO; the bound tightens as K grows. The likelihood terms are the
        training ones, unweighted (no text_weight, beta = 1) and without word dropout.
        Draw k of example i for bound m (0 joint, 1 image, 2 caption) uses
        fold_in(fold_in(fold_in(key, m), k), indices[i])."""
        params = variables["params"]
        image_q = self._apply(params, "encode_image", images)
        text_q = self._apply(params, "encode_text", tokens)
        experts = self._joint_posterior(image_q, text_q)
        image_q, text_q = self._unimodal(image_q), self._unimodal(text_q)
        inputs = vae_lib.shift_right(tokens)
        zeros = jnp.zeros_like(image_q[0])

        def log_weights(k):
            keys = [jax.random.fold_in(jax.random.fold_in(key, m), k) for m in range(3)]
            z_joint = self._joint_sample(keys[0], indices, experts)
            z_image, z_text = (
                self._sample(kq, indices, *q) for kq, q in zip(keys[1:], (image_q, text_q))
            )
            (ll_x, ll_x_only), (ll_t, ll_t_only), _, _ = self._likelihoods(
                params, [z_joint, z_image], [z_joint, z_text], images, tokens, inputs
            )
            prior = [elbo.gaussian_log_prob(z, zeros, zeros) for z in (z_joint, z_image, z_text)]
            return {
                "joint": ll_x + ll_t + prior[0] - self._joint_log_prob(z_joint, experts),
                "image": ll_x_only + prior[1] - elbo.gaussian_log_prob(z_image, *image_q),
                "text": ll_t_only + prior[2] - elbo.gaussian_log_prob(z_text, *text_q),
            }

        weights = jax.lax.map(log_weights, jnp.arange(num_samples))  # {bound: (K, N)}
        log_k = jnp.log(jnp.float32(num_samples))
        return {m: jax.nn.logsumexp(w, axis=0) - log_k for m, w in weights.items()}

    def _caption(self, params, z, key, indices, temperature):
        """One caption per z (greedy at temperature 0, sampled otherwise; see
        `decode_captions`); example i draws from fold_in(key, indices[i])."""

        def next_logits(carry, previous):
            return self._apply(params, "decode_text_step", z, previous, carry)

        carry = self._apply(params, "start_text", z)
        keys = base.example_keys(key, indices)
        length = self.config.data.max_text_len
        return decode_captions(
            next_logits, carry, keys, length, temperature, self.eos_id, self.byte_captions
        )


def decode_captions(next_logits, carry, keys, length, temperature, eos_id=EOS_ID, utf8_bytes=True):
    """Autoregressive decoding: `next_logits(carry, previous tokens (B,)) -> (carry, logits
    (B, vocab))` from BOS, one token per position; greedy at temperature 0, sampled at
    softmax temperature `temperature` otherwise (example b from keys[b]). -> int32 (B, length).

    Never PAD/BOS before the end, `eos_id` at the last position at the latest, PAD after it.
    Byte-level captions (`utf8_bytes`, the tokenizer's ids) are valid UTF-8 by construction
    (`utf8`: each step picks among the bytes that continue a valid sequence and still fit
    before the end)."""
    temperature = jnp.asarray(temperature, jnp.float32)
    batch = keys.shape[0]

    def step(state, position):
        carry, previous, text_state, done = state
        carry, logits = next_logits(carry, previous)
        scaled = jnp.where(temperature > 0, logits / jnp.maximum(temperature, 1e-6), logits)
        if utf8_bytes:
            # Byte positions left after this one before the last, where only EOS fits.
            logits = utf8.constrain(scaled, text_state, length - 2 - position)
        else:
            logits = scaled.at[:, PAD_ID].set(-jnp.inf).at[:, vae_lib.BOS_ID].set(-jnp.inf)
        step_keys = jax.vmap(lambda k: jax.random.fold_in(k, position))(keys)
        sampled = jax.vmap(jax.random.categorical)(step_keys, logits)
        token = jnp.where(temperature > 0, sampled, jnp.argmax(logits, axis=-1))
        token = jnp.where(position == length - 1, eos_id, token)  # (bytes: already EOS)
        token = jnp.where(done, PAD_ID, token).astype(jnp.int32)
        text_state = utf8.advance(text_state, token) if utf8_bytes else text_state
        return (carry, token, text_state, done | (token == eos_id)), token

    start = jnp.full((batch,), vae_lib.BOS_ID, jnp.int32)
    text_state = jnp.full((batch,), utf8.START, jnp.int32)
    done = jnp.zeros((batch,), bool)
    _, tokens = jax.lax.scan(step, (carry, start, text_state, done), jnp.arange(length))
    return tokens.T
