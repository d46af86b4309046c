"""Captions in, images out, from a trained run.

  python -m mmgen_jax.sample --workdir=runs/gan --captions_file=captions.txt --out_dir=out
      one PNG per caption line (UTF-8) and out/index.jsonl ({"file", "caption"} per image)
  python -m mmgen_jax.sample --workdir=runs/gan --num=16 --out=grid.png \
      --caption="a red handwritten seven on a blue background"

Image i uses noise fold_in(PRNGKey(seed), i): the same seed gives the same images,
whatever the batch size.
"""

import json
import os

from absl import app, flags
from PIL import Image

from mmgen_jax import writers
from mmgen_jax.data import tokenizer
from mmgen_jax.runs import generate_from_tokens, load_run

flags.DEFINE_string("workdir", None, "A training run's directory.")
flags.DEFINE_string("captions_file", None, "UTF-8 text file, one caption per line.")
flags.DEFINE_string("out_dir", None, "Where the PNGs and index.jsonl go (with --captions_file).")
flags.DEFINE_string("caption", None, "One caption for a quick grid (with --out).")
flags.DEFINE_integer("num", 16, "Images in the quick grid (rounded up to rows of 8).")
flags.DEFINE_string("out", None, "Path of the quick grid PNG.")
flags.DEFINE_integer("seed", 0, "Noise seed.")
flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
flags.DEFINE_integer(
    "batch_size",
    256,
    "Images generated per call, split over the devices (rounded up to a multiple).",
)
flags.mark_flag_as_required("workdir")
FLAGS = flags.FLAGS


def generate(family, variables, captions, max_text_len, seed=0, batch_size=256):
    """uint8 images (N, H, W, 3) for N captions; image i uses noise index i."""
    tokens = tokenizer.encode_batch(captions, max_text_len)
    return writers.to_uint8(generate_from_tokens(family, variables, tokens, seed, batch_size))


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
    if bool(FLAGS.captions_file) == bool(FLAGS.caption):
        raise app.UsageError(
            "give either --captions_file (with --out_dir) or --caption (with --out)"
        )
    if FLAGS.captions_file and not FLAGS.out_dir:
        raise app.UsageError("--captions_file needs --out_dir")
    if FLAGS.caption and not FLAGS.out:
        raise app.UsageError("--caption needs --out")
    config, family, variables = load_run(FLAGS.workdir, FLAGS.step)
    max_len = config.data.max_text_len
    if FLAGS.captions_file:
        captions = read_captions(FLAGS.captions_file)
        images = generate(family, variables, captions, max_len, FLAGS.seed, FLAGS.batch_size)
        os.makedirs(FLAGS.out_dir, exist_ok=True)
        with open(os.path.join(FLAGS.out_dir, "index.jsonl"), "w", encoding="utf-8") as index:
            for i, (caption, image) in enumerate(zip(captions, images)):
                name = f"{i:06d}.png"
                Image.fromarray(image).save(os.path.join(FLAGS.out_dir, name))
                index.write(
                    json.dumps({"file": name, "caption": caption}, ensure_ascii=False) + "\n"
                )
        print(f"wrote {len(captions)} images and index.jsonl to {FLAGS.out_dir}")
    else:
        cols = 8
        rows = -(-FLAGS.num // cols)
        images = generate(
            family,
            variables,
            [FLAGS.caption] * (rows * cols),
            max_len,
            FLAGS.seed,
            FLAGS.batch_size,
        )
        grid = writers.caption_grid(
            [FLAGS.caption] * rows, None, images.reshape(rows, cols, *images.shape[1:])
        )
        os.makedirs(os.path.dirname(os.path.abspath(FLAGS.out)), exist_ok=True)
        grid.save(FLAGS.out)
        print(f"wrote {FLAGS.out}")


if __name__ == "__main__":
    app.run(main)
