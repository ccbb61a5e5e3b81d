"""Where the environments' data lives: one root, ``$SPA_DATA``, with one folder per environment.

    $SPA_DATA/
        alfworld/      json_2.1.1/<split>/<task>/<trial>/{game.tw-pddl, traj_data.json}
        webshop/       items_shuffle_1000.json, items_ins_v2_1000.json (or the full set), human goals
        virtualhome/   optional: a programs_processed_precond_nograb_morepreconds folder (default: the one
                       inside the installed virtualhome-eval package)

:func:`data_root` is ``$SPA_DATA``; without it the ``shared/data`` folder beside the checkout
(``<repo>/../shared/data``, this project's CI layout) when it exists, else ``$XDG_DATA_HOME/spa_rl``
(``~/.local/share/spa_rl``). :func:`env_data_dir` is the folder of one environment, or None when there is none.

Older variables still work for now and print a deprecation message naming ``SPA_DATA``: ``SPA_SHARED_DATA`` and
``SHARED_DATA`` (the root), ``SPA_ALFWORLD_DATA``/``ALFWORLD_DATA``, ``SPA_WEBSHOP_DATA``/``WEBSHOP_DATA`` and
``SPA_VIRTUALHOME_DATA`` (one environment's folder, taking precedence over the root). ``import alfworld`` sets
``ALFWORLD_DATA=~/.cache/alfworld`` as a side effect when it is unset; that value is ignored unless the folder
really holds games (``alfworld-download`` puts them there).

Every environment adapter uses this when its ``data_dir`` is None, and so do ``envs.prepare``, ``envs.expert``,
``envs.webshop.index`` and the benchmarks. This module imports nothing heavy.
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

DATA_ENV = "SPA_DATA"
REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DEFAULT = Path(__file__).resolve().parents[2] / "shared" / "data"  # <repo>/../shared/data

DEPRECATED_ROOT_VARS = ("SPA_SHARED_DATA", "SHARED_DATA")
DEPRECATED_ENV_VARS: dict[str, tuple[str, ...]] = {
    "alfworld": ("SPA_ALFWORLD_DATA", "ALFWORLD_DATA"),
    "webshop": ("SPA_WEBSHOP_DATA", "WEBSHOP_DATA"),
    "virtualhome": ("SPA_VIRTUALHOME_DATA",),
}
_ALFWORLD_IMPORT_DEFAULT = "~/.cache/alfworld"  # what `import alfworld` writes into $ALFWORLD_DATA when unset

_warned: set[str] = set()

__all__ = ["DATA_ENV", "DEPRECATED_ENV_VARS", "DEPRECATED_ROOT_VARS", "data_root", "describe", "env_data_dir"]


def _deprecated(var: str, instead: str) -> None:
    """Warn once per process (DeprecationWarning and a stderr line, which survives warning filters)."""
    if var in _warned:
        return
    _warned.add(var)
    message = f"${var} is deprecated: set ${DATA_ENV} instead ({instead})"
    warnings.warn(message, DeprecationWarning, stacklevel=3)
    print(f"[spa-rl] {message}", file=sys.stderr)


def _path(value: str) -> Path:
    return Path(os.path.expandvars(os.path.expanduser(value)))


def _user_default() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "spa_rl"


def data_root() -> Path:
    """The data root: ``$SPA_DATA``, else a deprecated root variable, else ``<repo>/../shared/data`` when it
    exists, else ``$XDG_DATA_HOME/spa_rl``. The folder may not exist (``env_data_dir`` checks)."""
    value = os.environ.get(DATA_ENV)
    if value:
        return _path(value)
    for var in DEPRECATED_ROOT_VARS:
        value = os.environ.get(var)
        if value:
            _deprecated(var, f"export {DATA_ENV}={value}")
            return _path(value)
    return SHARED_DEFAULT if SHARED_DEFAULT.is_dir() else _user_default()


def _override(name: str) -> Path | None:
    for var in DEPRECATED_ENV_VARS.get(name, ()):
        value = os.environ.get(var)
        if not value:
            continue
        if var == "ALFWORLD_DATA" and _path(value) == _path(_ALFWORLD_IMPORT_DEFAULT) \
                and not (_path(value) / "json_2.1.1").is_dir():
            continue  # set by `import alfworld`, not by the user, and holds no games
        _deprecated(var, f"put the {name} data in ${DATA_ENV}/{name}/, or pass data_dir=")
        return _path(value)
    return None


def env_data_dir(name: str) -> Path | None:
    """The data folder of environment ``name``: a deprecated per-env variable, else ``data_root()/name`` when
    that folder exists, else None (the adapter then says what it needs)."""
    override = _override(name)
    if override is not None:
        return override
    folder = data_root() / name
    return folder if folder.is_dir() else None


def describe(name: str) -> str:
    """Where ``name``'s data is looked for, for error messages."""
    return (f"pass data_dir=, or put it in ${DATA_ENV}/{name}/ (${DATA_ENV} is now "
            f"{os.environ.get(DATA_ENV) or 'unset'}; the data root in use is {data_root()})")
