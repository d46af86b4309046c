"""Differentiable augmentation (Zhao et al., 2020, "DiffAugment"): the discriminator sees
real and generated images through the same random transforms, and the generator's gradient
flows back through them. A discriminator trained on a small set of handwritings then cannot
win by memorising them, which otherwise drives the generator towards the few it can copy.

Only transforms that keep what the captions state: shifts and cutout keep the digit and
both colours (edge padding continues the plain background; cutout paints a patch of
background colour, read from the image's corner). No colour transforms: colour is content.
"""

import jax
import jax.numpy as jnp

POLICIES = ("translation", "cutout")


def parse(policy: str) -> tuple[str, ...]:
    """'translation,cutout' -> ('translation', 'cutout'); '' -> (). Unknown names: error."""
    names = tuple(p.strip() for p in policy.split(",") if p.strip())
    unknown = sorted(set(names) - set(POLICIES))
    if unknown:
        raise ValueError(
            f"train.augment={policy!r}: unknown {unknown}; use a comma-separated subset of "
            f"{POLICIES}, or '' for none"
        )
    return names


def diff_augment(images, keys, policy: str, *, shift_ratio=0.125, cutout_ratio=0.5):
    """`images` (B, H, W, C), one PRNG key per image (B,) -> the augmented images.

    translation: a shift of up to shift_ratio * size pixels each way, edge padded;
    cutout: a square of side cutout_ratio * size, at a random place (clipped at the
    border), filled with the image's top-left pixel (the background on captioned digits).
    """
    names = parse(policy)
    if not names:
        return images

    def one(image, key):
        k_shift, k_cut = jax.random.split(key)
        h, w, _ = image.shape
        if "translation" in names:
            pad = round(shift_ratio * h)
            padded = jnp.pad(image, ((pad, pad), (pad, pad), (0, 0)), mode="edge")
            dy, dx = jax.random.randint(k_shift, (2,), 0, 2 * pad + 1)
            image = jax.lax.dynamic_slice(padded, (dy, dx, 0), image.shape)
        if "cutout" in names:
            side = round(cutout_ratio * h)
            cy, cx = jax.random.randint(k_cut, (2,), 0, jnp.array([h, w]))
            rows = jnp.abs(jnp.arange(h) - cy) <= side // 2
            cols = jnp.abs(jnp.arange(w) - cx) <= side // 2
            inside = (rows[:, None] & cols[None, :])[..., None]
            image = jnp.where(inside, image[:1, :1], image)
        return image

    return jax.vmap(one)(images, keys)
