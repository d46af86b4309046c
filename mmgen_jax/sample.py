"""Samples from a trained run: captions in, images out (any family); for the multimodal VAE
also images in, captions out; joint samples; reconstructions.

  python -m mmgen_jax.sample --workdir=runs/gan --captions_file=captions.txt --out_dir=out
      one PNG per caption line (UTF-8) and out/index.jsonl ({"file", "caption"} per image)
  python -m mmgen_jax.sample --workdir=runs/gan --num=16 --out=grid.png \
      --caption="a red handwritten seven on a blue background"
      a seed grid: --num samples of one caption, sample i drawn with noise index i
  --truncation=T (GAN runs): the truncation trick. Each noise component is drawn from the
      standard normal truncated to [-T, T] (as if redrawn until |z_i| <= T): smaller T, more
      typical and less varied images; 0 (default) = the untruncated normal of training.
  --mode=interpolate --caption=C [--caption2=C2] [--seed2=S2] [--num=8] --out=walk.png
      (GAN runs) row 1: C drawn from noise that walks from z(--seed) to z(--seed2) along the
      great circle (slerp: every point keeps the norm typical of a Gaussian z); row 2, with
      --caption2: z(--seed) fixed while G's pooled caption embedding moves linearly from C
      to C2 (embeddings are no Gaussian samples, so a straight line). --num columns.
  VAE runs only (--mode, default text2image as above):
  --mode=image2text --out_dir=out [--images_dir=DIR] [--temperature=0.7]
      a caption for every image of DIR (PNG/JPEG), or of the eval split (the first --num
      when --num is given); out/index.jsonl holds {"file", "caption"} (+ "reference", the
      true caption, for the split) and out/ a PNG copy of each image
  --mode=joint --num=16 --out_dir=out         z ~ prior -> image + caption pairs
      the run's model.joint_prior: "mixture" (configs/vae.py) draws z from a Gaussian
      mixture fitted to the codes of training pairs, "standard" (runs that predate the
      field) from N(0, I); --joint_prior, --mixture_components, --mixture_examples override
  --mode=reconstruct --num=16 --out_dir=out   eval-split pairs through the joint posterior

Sample i uses noise fold_in(PRNGKey(seed), i): the same seed gives the same samples,
whatever the batch size.
"""

import json
import os
import sys

import jax
import numpy as np
from absl import flags
from PIL import Image

from mmgen_jax import app, parallel, runs, writers
from mmgen_jax.data import pipeline, tokenizer
from mmgen_jax.families import base
from mmgen_jax.runs import generate_from_tokens, load_run

FLAGS = app.flag_values()
flags.DEFINE_string("workdir", None, "A training run's directory.", flag_values=FLAGS)
# --mode -> the capability a run's family must declare for it.
MODE_CAPABILITIES = {
    "text2image": base.TEXT_TO_IMAGE,
    "interpolate": base.TEXT_TO_IMAGE,
    "image2text": base.IMAGE_TO_TEXT,
    "joint": base.JOINT,
    "reconstruct": base.RECONSTRUCT,
}
MODES = tuple(MODE_CAPABILITIES)
flags.DEFINE_enum(
    "mode",
    "text2image",
    MODES,
    "What to sample (interpolate: GAN runs; image2text, joint, reconstruct: VAE runs).",
    flag_values=FLAGS,
)
flags.DEFINE_enum(
    "joint_prior",
    None,
    runs.JOINT_PRIORS,
    "joint: z from N(0, I) (standard), or from a Gaussian mixture fitted to the latent codes "
    "of training pairs (mixture; ex-post density estimation). Default: the run's "
    "model.joint_prior (standard for runs without one).",
    flag_values=FLAGS,
)
flags.DEFINE_integer(
    "mixture_components",
    None,
    "joint_prior=mixture: Gaussian components (default: model.joint_mixture_components).",
    flag_values=FLAGS,
)
flags.DEFINE_integer(
    "mixture_examples",
    None,
    "joint_prior=mixture: training pairs encoded, the first, at most all (default: "
    "model.joint_mixture_examples).",
    flag_values=FLAGS,
)
flags.DEFINE_string(
    "images_dir", None, "image2text: a folder of images (default: eval split).", flag_values=FLAGS
)
flags.DEFINE_float(
    "temperature", 0.0, "image2text: caption sampling temperature (0 = greedy).", flag_values=FLAGS
)
flags.DEFINE_string(
    "captions_file", None, "UTF-8 text file, one caption per line.", flag_values=FLAGS
)
flags.DEFINE_string("out_dir", None, "Where the PNGs and index.jsonl go.", flag_values=FLAGS)
flags.DEFINE_string(
    "caption", None, "One caption for a quick grid (with --out).", flag_values=FLAGS
)
flags.DEFINE_integer(
    "num",
    16,
    "Images in the quick grid (rounded up to rows of 8); joint/reconstruct samples.",
    flag_values=FLAGS,
)
flags.DEFINE_string("out", None, "Path of the quick grid PNG.", flag_values=FLAGS)
flags.DEFINE_integer("seed", 0, "Noise seed.", flag_values=FLAGS)
flags.DEFINE_float(
    "truncation", 0.0, "Truncate each noise component to [-T, T] (0 = off).", flag_values=FLAGS
)
flags.DEFINE_string(
    "caption2", None, "interpolate: walk the caption embedding to this one.", flag_values=FLAGS
)
flags.DEFINE_integer(
    "seed2", None, "interpolate: the noise walk's end seed (default --seed + 1).", flag_values=FLAGS
)
flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).", flag_values=FLAGS)
flags.DEFINE_integer(
    "batch_size",
    256,
    "Images generated per call, split over the devices (rounded up to a multiple).",
    flag_values=FLAGS,
)
app.define_sampling(FLAGS)
flags.mark_flag_as_required("workdir", flag_values=FLAGS)


def _tokenizer(family):
    """The tokenizer the run's captions were encoded with (data.tokenizer)."""
    return tokenizer.by_name(family.config.data.get("tokenizer", "bytes"))


def generate(family, variables, captions, max_text_len, seed=0, batch_size=256, truncation=0.0):
    """uint8 images (N, H, W, 3) for N captions; image i uses noise index i, truncated to
    [-truncation, truncation] per component when it is > 0."""
    tokens = _tokenizer(family).encode_batch(captions, max_text_len)
    if not truncation:
        images = generate_from_tokens(family, variables, tokens, seed, batch_size)
    else:
        images = batched(
            lambda s, t, i: family.generate(s[0], t, s[1], i, truncation=truncation),
            (variables, jax.random.PRNGKey(seed)),
            [tokens],
            len(tokens),
            batch_size,
        )
    return writers.to_uint8(images)


def slerp(a, b, t):
    """Points at fractions `t` (T,) of the great-circle arc from vector a to vector b (T, D),
    the norm interpolated linearly; a straight line where a and b are (anti)parallel."""
    a, b, t = np.asarray(a, np.float64), np.asarray(b, np.float64), np.asarray(t)[:, None]
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    cos = np.clip(a @ b / max(na * nb, 1e-12), -1.0, 1.0)
    omega = np.arccos(cos)
    if np.sin(omega) < 1e-6:
        return ((1 - t) * a + t * b).astype(np.float32)
    ua, ub = a / na, b / nb
    direction = (np.sin((1 - t) * omega) * ua + np.sin(t * omega) * ub) / np.sin(omega)
    return (direction * ((1 - t) * na + t * nb)).astype(np.float32)


def interpolation_rows(family, variables, captions, max_text_len, seeds, steps, truncation=0.0):
    """Images (rows, steps, H, W, 3) in [-1, 1]: row 0 walks z from noise index 0 of
    seeds[0] to that of seeds[1] (slerp) for captions[0]; with a second caption, row 1 keeps
    z(seeds[0]) and moves G's caption embedding linearly from captions[0] to captions[1]."""
    t = np.linspace(0.0, 1.0, steps)
    index = np.zeros(1, np.uint32)
    z_a, z_b = (family.noise(jax.random.PRNGKey(s), index, truncation)[0] for s in seeds)
    tokens = _tokenizer(family).encode_batch(captions, max_text_len)
    embedded = np.asarray(family.embed(variables, tokens))
    z_walk = slerp(z_a, z_b, t)
    rows = [family.draw(variables, z_walk, np.repeat(embedded[:1], steps, axis=0))]
    if len(captions) > 1:
        e_walk = (1 - t[:, None]) * embedded[0] + t[:, None] * embedded[1]
        rows.append(family.draw(variables, np.repeat(z_a[None], steps, axis=0), e_walk))
    return np.stack([np.asarray(r) for r in rows])


def batched(fn, shared, arrays, num, batch_size):
    """`fn(shared, *rows, indices)` over `num` rows in data-parallel batches; row i is passed
    index i (its noise and sampling key)."""
    indices = np.arange(num, dtype=np.uint32)
    return parallel.BatchedMap(fn)(shared, *arrays, indices, batch_size=batch_size)


def describe(family, variables, images, seed=0, batch_size=256, temperature=0.0):
    """Captions (N strings) for float images (N, H, W, 3) in [-1, 1]; image i uses noise
    index i."""
    tokens = batched(
        lambda s, x, i: family.describe(s[0], x, s[1], i, temperature),
        (variables, jax.random.PRNGKey(seed)),
        [images],
        len(images),
        batch_size,
    )
    decode = _tokenizer(family).decode
    return [decode(t) for t in tokens]


def image_names(images_dir):
    """The PNG/JPEG file names of a folder, sorted; a clear error if there are none."""
    if not os.path.isdir(images_dir):
        raise FileNotFoundError(f"--images_dir={images_dir} is not a folder of images")
    names = sorted(
        n for n in os.listdir(images_dir) if n.lower().endswith((".png", ".jpg", ".jpeg"))
    )
    if not names:
        raise ValueError(f"{images_dir} holds no .png/.jpg/.jpeg files")
    return names


def read_images(images_dir, image_size):
    """(file names, float images (N, S, S, 3) in [-1, 1]) of the PNG/JPEG files in a folder,
    converted to RGB and centre-cropped/resized as training data are. Files that do not
    decode (truncated, not an image, over PIL's decompression-bomb limit) are skipped with a
    warning each and a count."""
    names, images, skipped = [], [], 0
    for name in image_names(images_dir):
        try:
            with Image.open(os.path.join(images_dir, name)) as im:
                array = np.asarray(im.convert("RGB"))
        # DecompressionBombError is not an OSError; broken PNG chunks raise SyntaxError.
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
            print(
                f"warning: skipped {images_dir}/{name}: not a readable image ({e})", file=sys.stderr
            )
            skipped += 1
            continue
        names.append(name)
        images.append(pipeline.preprocess({"image": array}, image_size, 1)["image"])
    if skipped:
        print(
            f"warning: skipped {skipped} of {skipped + len(names)} files in {images_dir}",
            file=sys.stderr,
        )
    if not names:
        raise ValueError(f"no file in {images_dir} is a readable image (all {skipped} skipped)")
    return names, np.stack(images)


def write_folder(out_dir, images, rows):
    """PNGs 000000.png, ... and index.jsonl: one {"file", **row} line per image."""
    os.makedirs(out_dir, exist_ok=True)
    images = writers.to_uint8(images)
    with open(os.path.join(out_dir, "index.jsonl"), "w", encoding="utf-8") as index:
        for i, (image, row) in enumerate(zip(images, rows, strict=True)):
            name = f"{i:06d}.png"
            Image.fromarray(image).save(os.path.join(out_dir, name))
            index.write(json.dumps({"file": name, **row}, ensure_ascii=False) + "\n")
    print(f"wrote {len(rows)} images and index.jsonl to {out_dir}")


def read_captions(path):
    try:
        with open(path, encoding="utf-8") as f:
            captions = [line.strip() for line in f]
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not UTF-8 ({e}); save the captions file as UTF-8") from e
    captions = [c for c in captions if c]
    if not captions:
        raise ValueError(f"{path} holds no captions: write one caption per line")
    return captions


def main(argv):
    del argv
    app.start(FLAGS)
    if FLAGS.truncation < 0:
        raise app.UsageError(f"--truncation={FLAGS.truncation}: use T > 0, or 0 for no truncation")
    if FLAGS.mode == "interpolate":
        return sample_interpolation()
    if FLAGS.mode != "text2image":
        return sample_vae(FLAGS.mode)
    if bool(FLAGS.captions_file) == bool(FLAGS.caption):
        raise app.UsageError(
            "give either --captions_file (with --out_dir) or --caption (with --out)"
        )
    if FLAGS.captions_file and not FLAGS.out_dir:
        raise app.UsageError("--captions_file needs --out_dir")
    if FLAGS.caption and not FLAGS.out:
        raise app.UsageError("--caption needs --out")
    # The captions are checked before the checkpoint loads: a bad file fails at once.
    captions = read_captions(FLAGS.captions_file) if FLAGS.captions_file else None
    config, family, variables = load_run(FLAGS.workdir, FLAGS.step, sampling=app.sampling(FLAGS))
    _require(family, config, "text2image")
    if FLAGS.truncation:
        _require_control(family, config, "truncation")
    max_len = config.data.max_text_len
    options = {"seed": FLAGS.seed, "batch_size": FLAGS.batch_size, "truncation": FLAGS.truncation}
    if FLAGS.captions_file:
        images = generate(family, variables, captions, max_len, **options)
        write_folder(FLAGS.out_dir, images, [{"caption": c} for c in captions])
    else:
        cols = 8
        rows = -(-FLAGS.num // cols)
        images = generate(
            family,
            variables,
            [FLAGS.caption] * (rows * cols),
            max_len,
            **options,
        )
        grid = writers.caption_grid(
            [FLAGS.caption] * rows, None, images.reshape(rows, cols, *images.shape[1:])
        )
        os.makedirs(os.path.dirname(os.path.abspath(FLAGS.out)), exist_ok=True)
        grid.save(FLAGS.out)
        print(f"wrote {FLAGS.out}")


def _require(family, config, mode):
    """A clear error when the run's family cannot do `mode`."""
    if not family.can(MODE_CAPABILITIES[mode]):
        modes = [m for m, c in MODE_CAPABILITIES.items() if family.can(c)]
        raise app.UsageError(
            f"--mode={mode} needs a model with the {MODE_CAPABILITIES[mode]} capability; {FLAGS.workdir} "
            f"holds a {config.model.family!r} run, whose modes are {modes or 'none'}"
        )


def _require_control(family, config, control):
    """A clear error when the run's family offers no such control over its noise."""
    if control not in family.noise_controls:
        flag = "--truncation" if control == "truncation" else f"--mode={control}"
        raise app.UsageError(
            f"{flag} needs a model that draws images from a noise vector z (a GAN run); "
            f"{FLAGS.workdir} holds a {config.model.family!r} run"
        )


def sample_interpolation():
    """--mode=interpolate: a noise walk for one caption, and a caption walk for one noise."""
    if not FLAGS.caption or not FLAGS.out:
        raise app.UsageError(
            "--mode=interpolate needs --caption (and optionally --caption2) and --out"
        )
    if FLAGS.num < 2:
        raise app.UsageError(f"--num={FLAGS.num}: an interpolation needs at least 2 steps")
    config, family, variables = load_run(FLAGS.workdir, FLAGS.step, sampling=app.sampling(FLAGS))
    _require(family, config, "interpolate")
    _require_control(family, config, "interpolate")
    captions = [FLAGS.caption] + ([FLAGS.caption2] if FLAGS.caption2 else [])
    seeds = (FLAGS.seed, FLAGS.seed + 1 if FLAGS.seed2 is None else FLAGS.seed2)
    images = writers.to_uint8(
        interpolation_rows(
            family,
            variables,
            captions,
            config.data.max_text_len,
            seeds,
            FLAGS.num,
            FLAGS.truncation,
        )
    )
    labels = [f"{FLAGS.caption} (seed {seeds[0]} -> {seeds[1]})"]
    if FLAGS.caption2:
        labels.append(f"{FLAGS.caption} -> {FLAGS.caption2} (seed {seeds[0]})")
    steps = np.linspace(0.0, 1.0, FLAGS.num)
    columns = [(f"t={t:.2f}", images[:, j], None) for j, t in enumerate(steps)]
    grid = writers.image_table(labels, columns)
    os.makedirs(os.path.dirname(os.path.abspath(FLAGS.out)), exist_ok=True)
    grid.save(FLAGS.out)
    print(f"wrote {FLAGS.out}")


def sample_vae(mode):
    """image2text, joint and reconstruct: the modes of models that read and write both
    images and captions."""
    if not FLAGS.out_dir:
        raise app.UsageError(f"--mode={mode} needs --out_dir")
    if mode == "image2text" and FLAGS.images_dir:
        image_names(FLAGS.images_dir)  # a wrong folder fails before the checkpoint loads
    config, family, variables = load_run(FLAGS.workdir, FLAGS.step, sampling=app.sampling(FLAGS))
    _require(family, config, mode)
    if FLAGS.truncation:
        _require_control(family, config, "truncation")
    key, size = jax.random.PRNGKey(FLAGS.seed), FLAGS.batch_size
    decode = tokenizer.by_name(config.data.get("tokenizer", "bytes")).decode
    if mode == "image2text":
        if FLAGS.images_dir:
            names, images = read_images(FLAGS.images_dir, config.data.image_size)
            rows = [{"source": n} for n in names]
        else:
            examples = runs.examples(config, FLAGS.num if FLAGS["num"].present else None)
            images = examples["image"]
            rows = [{"reference": c} for c in examples["caption"]]
        captions = describe(family, variables, images, FLAGS.seed, size, FLAGS.temperature)
        write_folder(FLAGS.out_dir, images, [{"caption": c, **r} for c, r in zip(captions, rows)])
    elif mode == "joint":
        variables = runs.with_joint_prior(
            config,
            family,
            variables,
            runs.joint_prior(config, FLAGS.joint_prior),
            FLAGS.seed,
            size,
            components=FLAGS.mixture_components,
            num_examples=FLAGS.mixture_examples,
        )
        images, tokens = batched(
            lambda s, i: family.joint(s[0], s[1], i), (variables, key), [], FLAGS.num, size
        )
        write_folder(FLAGS.out_dir, images, [{"caption": decode(t)} for t in tokens])
    else:  # reconstruct
        examples = runs.examples(config, FLAGS.num)
        images, tokens = batched(
            lambda s, x, t, i: family.reconstruct(s[0], x, t, s[1], i),
            (variables, key),
            [examples["image"], examples["text"]],
            len(examples["image"]),
            size,
        )
        rows = [{"caption": decode(t), "reference": c} for t, c in zip(tokens, examples["caption"])]
        write_folder(FLAGS.out_dir, images, rows)


if __name__ == "__main__":
    app.run(main, FLAGS)
