"""Text-conditional flow matching (rectified flow) with classifier-free guidance.

The straight path from an image x0 (t = 0) to noise eps (t = 1),

    x_t = (1 - t) x0 + t eps,   whose velocity is   v = dx_t/dt = eps - x0,

is learnt by regressing a network v(x_t, t | caption) on eps - x0 (Liu et al. 2022;
Lipman et al. 2022). Drawing an image integrates dx/dt = v from t = 1 (noise) to t = 0
with `model.sample_steps` Euler or Heun steps. A share `train.caption_dropout` of training
captions is replaced by the empty caption, so the same network also learns v(x_t, t | -),
and sampling may extrapolate from it (classifier-free guidance, Ho & Salimans 2022):

    v = v(x | -) + w (v(x | caption) - v(x | -)),   w = `model.guidance`.

`train_step` is written for one device's shard (pmap-style) and averaged over `axis_name`.
Example i's noise, time and caption dropout come from fold_in(key, index_i): results do not
depend on the batch size or the device count.
"""

import jax
import jax.numpy as jnp
import optax

from mmgen_jax import losses
from mmgen_jax.data import tokenizer
from mmgen_jax.families import base
from mmgen_jax.models import text as text_lib
from mmgen_jax.models import unet as unet_lib

SAMPLERS = ("euler", "heun")  # model.sampler
TIME_SAMPLINGS = ("uniform", "logit_normal")  # train.time_sampling


# ---- the flow's math: pure functions ---------------------------------------------------


def interpolate(x0, eps, t):
    """The straight path's point at time t (B,): (1 - t) x0 + t eps."""
    t = t.reshape(-1, *([1] * (x0.ndim - 1)))
    return (1 - t) * x0 + t * eps


def velocity_target(x0, eps):
    """d/dt of `interpolate`: the velocity the network regresses."""
    return eps - x0


def flow_matching_loss(velocity_fn, x0, eps, t):
    """Mean squared error of `velocity_fn(x_t, t)` against eps - x0 (per pixel), and the
    per-example errors (B,)."""
    error = velocity_fn(interpolate(x0, eps, t), t) - velocity_target(x0, eps)
    per_example = jnp.mean(jnp.square(error), axis=tuple(range(1, error.ndim)))
    return jnp.mean(per_example), per_example


def sample_times(key, index, kind, mean=0.0, std=1.0):
    """A training time in (0, 1) per example, from fold_in(key, index_i): 'uniform', or
    'logit_normal' (sigmoid of N(mean, std^2): more weight on mid-path times, SD3)."""
    keys = base.example_keys(key, index)
    if kind == "uniform":
        return jax.vmap(lambda k: jax.random.uniform(k, ()))(keys)
    normal = jax.vmap(lambda k: jax.random.normal(k, ()))(keys)
    return jax.nn.sigmoid(mean + std * normal)


def guided(v_cond, v_uncond, guidance):
    """Classifier-free guidance: v_uncond + w (v_cond - v_uncond)."""
    return v_uncond + guidance * (v_cond - v_uncond)


def integrate(velocity_fn, x1, steps, sampler):
    """Solves dx/dt = velocity_fn(x, t) from x(1) = x1 to t = 0 on `steps` equal steps with
    'euler' (one evaluation per step) or 'heun' (two: the trapezoid of the Euler step's two
    ends; second order). `t` is passed as a (B,) array."""
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler {sampler!r}: use one of {SAMPLERS}")
    times = jnp.linspace(1.0, 0.0, steps + 1)
    batch_t = lambda t: jnp.full((x1.shape[0],), t, jnp.float32)

    def step(x, i):
        t, t_next = times[i], times[i + 1]
        dt = t_next - t
        v = velocity_fn(x, batch_t(t))
        x_next = x + dt * v
        if sampler == "heun":
            x_next = x + dt * 0.5 * (v + velocity_fn(x_next, batch_t(t_next)))
        return x_next, None

    x0, _ = jax.lax.scan(step, x1, jnp.arange(steps))
    return x0


def empty_captions(tokens):
    """The empty caption (EOS, then PAD), shaped like `tokens`: the unconditional input."""
    return jnp.zeros_like(tokens).at[:, 0].set(tokenizer.EOS)


def drop_captions(key, index, tokens, rate):
    """Each example's caption replaced by the empty one with probability `rate`.
    -> (tokens, kept (B,) bool: the caption is still the example's own)."""
    keys = base.example_keys(key, index)
    drop = jax.vmap(lambda k: jax.random.bernoulli(k, rate))(keys)
    return jnp.where(drop[:, None], empty_captions(tokens), tokens), ~drop


def kept_caption_label_loss(logits, labels, kept, axis_name):
    """This device's share of the label head's cross-entropy averaged over the captions
    kept by caption dropout (the empty one names no label) in the whole batch: its
    `pmean` over `axis_name` is that average however the batch is split over devices
    (a per-device average would weigh devices with fewer kept captions more)."""
    kept = kept.astype(jnp.float32)
    num_devices = jax.lax.psum(1.0, axis_name)
    num_kept = jax.lax.psum(jnp.sum(kept), axis_name)
    total = jnp.sum(kept * losses.cross_entropy(logits, labels))
    return num_devices * total / jnp.maximum(num_kept, 1.0)


# ---- the family ------------------------------------------------------------------------


class Flow(base.Family):
    """Networks and optimizer from a config, pure functions over base.NetworkState."""

    capabilities = frozenset({base.TEXT_TO_IMAGE})
    nan_hint = "lower the learning rate (--config.train.lr) or set --config.train.grad_clip=1"

    def __init__(self, config, axis_name="data"):
        super().__init__(config, axis_name)
        m, d, t = config.model, config.data, config.train
        if m.sampler not in SAMPLERS:
            raise ValueError(f"config.model.sampler={m.sampler!r}: use one of {SAMPLERS}")
        if t.time_sampling not in TIME_SAMPLINGS:
            raise ValueError(
                f"config.train.time_sampling={t.time_sampling!r}: use one of {TIME_SAMPLINGS}"
            )
        if m.sample_steps < 1:
            raise ValueError(f"config.model.sample_steps={m.sample_steps}: must be >= 1")
        if not 0 <= t.caption_dropout < 1:
            raise ValueError(f"config.train.caption_dropout={t.caption_dropout}: must be in [0, 1)")
        dtype = jnp.dtype(m.dtype)
        self.net = unet_lib.TextToVelocity(
            encoder=text_lib.TextEncoder(
                max_len=d.max_text_len,
                embed_dim=m.text_embed_dim,
                width=m.text_width,
                num_layers=m.text_layers,
                out_dim=m.text_dim,
                kind=m.text_encoder,
                dtype=dtype,
                return_states=True,
            ),
            unet=unet_lib.UNet(
                width=m.width,
                channel_mults=tuple(m.channel_mults),
                num_res_blocks=m.num_res_blocks,
                cross_attention=m.cross_attention,
                attention_size=m.attention_size,
                cond_dim=m.cond_dim,
                layout_map=m.get("layout_map", False),  # runs from before the field: off
                dtype=dtype,
            ),
            # Runs from before the label head have neither field: no head.
            num_classes=m.num_classes if t.get("aux_classifier_weight", 0) else 0,
        )
        tx = optax.adam(t.lr, b1=t.b1, b2=t.b2)
        self.tx = optax.chain(optax.clip_by_global_norm(t.grad_clip), tx) if t.grad_clip else tx

    # ---- state -------------------------------------------------------------------
    def init(self, rng) -> base.NetworkState:
        """A fresh state; deterministic in `rng`."""
        d = self.config.data
        key_params, key_run = jax.random.split(rng)
        images = jnp.zeros((1, d.image_size, d.image_size, 3), jnp.float32)
        tokens = jnp.zeros((1, d.max_text_len), jnp.int32)
        params = self.net.init(
            key_params, images, jnp.zeros((1,)), tokens, method="with_caption_classes"
        )["params"]
        return base.network_state(params, self.tx, key_run)

    def device_batch(self, batch):
        """image, text and index (uint32): what the step reads."""
        return base.captioned_batch(batch, self.config)

    def example_batch(self, batch_size, seed):
        labels = {"label": self.config.model.num_classes} if self.net.num_classes else None
        return base.synthetic_batch(self.config, batch_size, seed, labels=labels)

    def sampling_variables(self, state: base.NetworkState):
        """The EMA parameters (or the live ones when EMA is off)."""
        return {"params": state.ema_params if self.config.train.ema_decay else state.params}

    # ---- the step ----------------------------------------------------------------
    def train_step(self, state: base.NetworkState, batch):
        """One Adam update of the velocity network on this device's shard."""
        t = self.config.train
        key = jax.random.fold_in(state.rng, state.step)
        images, index = batch["image"], batch["index"]
        eps = base.example_normal(jax.random.fold_in(key, 0), index, images.shape[1:])
        times = sample_times(
            jax.random.fold_in(key, 1), index, t.time_sampling, t.logit_mean, t.logit_std
        )
        tokens, kept = drop_captions(
            jax.random.fold_in(key, 2), index, batch["text"], t.caption_dropout
        )

        def loss_fn(params):
            apply = lambda method, *a: self.net.apply({"params": params}, *a, method=method)
            text = apply("encode", tokens)
            velocity = lambda x, s: apply("velocity", x, s, text)
            loss, _ = flow_matching_loss(velocity, images, eps, times)
            metrics = {"loss": loss}
            if "label" in batch:
                metrics["caption_class"] = kept_caption_label_loss(
                    apply("caption_classes", text), batch["label"], kept, self.axis_name
                )
                loss = loss + t.aux_classifier_weight * metrics["caption_class"]
            return loss, metrics

        (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        grads = jax.lax.pmean(grads, self.axis_name)
        updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        ema = base.ema_update(state.ema_params, params, state.step, t.ema_decay)
        metrics = jax.lax.pmean({**metrics, "grad_norm": optax.tree.norm(grads)}, self.axis_name)
        new_state = state.replace(
            step=state.step + 1, params=params, opt_state=opt_state, ema_params=ema
        )
        return new_state, metrics

    # ---- generation ----------------------------------------------------------------
    def generate(self, variables, tokens, key, indices):
        """Images in [-1, 1] for caption tokens: the ODE from noise fold_in(key, indices[i])
        at t = 1 to t = 0, with the config's `model.sampler`, `model.sample_steps` and
        classifier-free guidance `model.guidance` (read when traced: change them in the
        config the family is built from to sample otherwise)."""
        m, size = self.config.model, self.config.data.image_size
        w = float(m.guidance)
        apply = lambda method, *a: self.net.apply(variables, *a, method=method)
        # Only the branches guidance reads: w = 1 is the conditional network, w = 0 the
        # unconditional one; otherwise both run as one batch of twice the size.
        if w == 1.0:
            text = apply("encode", tokens)
        elif w == 0.0:
            text = apply("encode", empty_captions(tokens))
        else:
            text = apply("encode", jnp.concatenate([tokens, empty_captions(tokens)]))

        def velocity(x, t):
            if w in (0.0, 1.0):
                return apply("velocity", x, t, text)
            both = apply("velocity", jnp.concatenate([x, x]), jnp.concatenate([t, t]), text)
            v_cond, v_uncond = jnp.split(both, 2)
            return guided(v_cond, v_uncond, w)

        noise = base.example_normal(key, indices, (size, size, 3))
        images = integrate(velocity, noise, m.sample_steps, m.sampler)
        return jnp.clip(images, -1.0, 1.0)
