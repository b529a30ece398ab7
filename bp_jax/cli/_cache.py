"""JAX's persistent compilation cache for the command: a second run of the same configuration loads its
compiled programs from disk instead of compiling them.

The directory is `--compile-cache DIR`, else $BP_JAX_COMPILE_CACHE, else `$XDG_CACHE_HOME/bp_jax/jax`
(`~/.cache/bp_jax/jax`); "off" (flag or variable) disables it.
"""

import os
from pathlib import Path

from bp_jax.cli._args import UsageError

ENVIRONMENT = "BP_JAX_COMPILE_CACHE"


def add_option(parser) -> None:
    parser.add_argument("--compile-cache", metavar="DIR|off",
                        help=f"where compiled programs are kept between runs, or 'off' (env {ENVIRONMENT}; "
                             "default ~/.cache/bp_jax/jax)")


def directory(setting: str | None) -> Path | None:
    """The cache directory for a flag value (None: not given), or None when the cache is off."""
    if setting == "":
        raise UsageError("--compile-cache: expected a folder or 'off', got an empty string")
    setting = setting if setting is not None else os.environ.get(ENVIRONMENT)
    if setting == "off":
        return None
    if setting:
        return Path(setting).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "bp_jax" / "jax"


def enable(setting: str | None) -> Path | None:
    """Point JAX at the cache directory for `setting`, caching every program however fast it compiled;
    returns the directory (None: off)."""
    import jax

    path = directory(setting)
    if path is not None:
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise UsageError(f"--compile-cache {path}: cannot create the folder ({err.strerror or err}); "
                             "give another or 'off'") from None
        jax.config.update("jax_compilation_cache_dir", str(path))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    return path
