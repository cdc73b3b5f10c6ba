"""Local or remote paths (`gs://`, `s3://`, ...) for every file sslx reads or writes: user paths
become `etils.epath.Path`s here, and a scheme whose filesystem is not installed is named at once.
"""

import os

from etils import epath

# What epath needs to reach each remote scheme: fsspec's filesystem package, or TensorFlow's
# gfile, which epath prefers for every URL whenever TensorFlow is installed.
INSTALL_HINTS = {
    "gs": "gcsfs (`pip install gcsfs`) or TensorFlow (its tf.io.gfile)",
    "s3": "s3fs (`pip install s3fs`) or TensorFlow (its tf.io.gfile)",
    "az": "adlfs (`pip install adlfs`)",
    "hf": "huggingface_hub (`pip install huggingface_hub`)",
}


def is_remote(path) -> bool:
  """Whether `path` is a URL (`gs://bucket/run`) rather than a local path."""
  return "://" in os.fspath(path)


def scheme(path) -> str:
  """The URL scheme of `path` ("gs" for gs://bucket/run), "" for a local path."""
  return os.fspath(path).split("://", 1)[0] if is_remote(path) else ""


def absolute(path) -> str:
  """A local path made absolute (relative to the working directory), a URL unchanged."""
  return os.fspath(path) if is_remote(path) else os.path.abspath(os.fspath(path))


def checked(path, name: str) -> epath.Path:
  """`path` as an epath.Path, after checking that its filesystem is installed (one listing of
  the path for a URL). `name` (the flag or field, e.g. "--workdir") is named in the error."""
  try:
    result = epath.Path(path)
  except KeyError:  # epath knows no class for this URL scheme
    raise ValueError(
        f"{name}={os.fspath(path)!r}: no filesystem handles {scheme(path)}:// paths; use a local "
        f"path or one of {', '.join(f'{s}://' for s in INSTALL_HINTS)} (with its filesystem "
        "installed)") from None
  if is_remote(result):
    try:
      result.exists()
    except ImportError as e:  # raised by fsspec when e.g. gcsfs is missing
      hint = INSTALL_HINTS.get(scheme(path), "the fsspec filesystem of that scheme")
      raise ValueError(f"{name}={os.fspath(path)!r}: {scheme(path)}:// paths need {hint} "
                       f"installed ({e})") from e
  return result
