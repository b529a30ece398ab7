"""JAX's persistent compilation cache for the command: a second run of the same configuration loads its
compiled programs from disk instead of compiling them.

The directory is `--compile-cache DIR`, else $BP_JAX_COMPILE_CACHE, else `$XDG_CACHE_HOME/bp_jax/jax`
(`~/.cache/bp_jax/jax`); "off" (flag or variable) disables it. The cache is optional: a folder that cannot be
created or written is an error when --compile-cache named it, else one warning on stderr and the run goes on
without a cache.
"""

import os
import sys
import tempfile
from pathlib import Path

from bp_jax.cli._args import UsageError

ENVIRONMENT = "BP_JAX_COMPILE_CACHE"


def directory(setting: str | None) -> tuple[Path | None, str]:
    """The cache directory for a flag value (None: not given), or None when the cache is off; and where it
    came from: "--compile-cache", "$BP_JAX_COMPILE_CACHE", "$XDG_CACHE_HOME" or "the default"."""
    if setting == "":
        raise UsageError("--compile-cache: expected a folder or 'off', got an empty string")
    origin = "--compile-cache" if setting is not None else f"${ENVIRONMENT}"
    setting = setting if setting is not None else os.environ.get(ENVIRONMENT)
    if setting == "off":
        return None, origin
    if setting:
        return Path(setting).expanduser(), origin
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]) / "bp_jax" / "jax", "$XDG_CACHE_HOME"
    return Path.home() / ".cache" / "bp_jax" / "jax", "the default"


def _unusable(path: Path) -> str | None:
    """Why `path` cannot hold the cache (created if missing, then written to once), or None when it can."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        return f"cannot create the folder ({err.strerror or err})"
    try:
        with tempfile.TemporaryFile(dir=path):
            return None
    except OSError as err:
        return f"cannot write in the folder ({err.strerror or err})"


def enable(setting: str | None) -> Path | None:
    """Point JAX at the cache directory for `setting`, caching every program however fast it compiled;
    returns the directory (None: off, or unusable and not named by --compile-cache)."""
    import jax

    path, origin = directory(setting)
    problem = None if path is None else _unusable(path)
    if problem and origin == "--compile-cache":
        raise UsageError(f"--compile-cache {path}: {problem}; give another or 'off'")
    if problem:
        print(
            f"bp-jax: warning: the compile cache {path} (from {origin}): {problem}; running without it", file=sys.stderr
        )
        return None
    if path is not None:
        jax.config.update("jax_compilation_cache_dir", str(path))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    return path
