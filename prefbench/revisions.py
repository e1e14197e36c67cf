"""Files of an experiment, a git revision or the workspace, as `dvc exp show` names them, through
DVC's API: what `prefbench.blend` and a blend's bundle read from other runs than the workspace's.

A name is an experiment (`gemma2`, or a queued one's `nf-...`), anything git resolves (`HEAD`,
`main`, a short hash) or `workspace`. DVC's file system reads both kinds of file at a revision:
git-tracked ones (metrics/predictions.csv, an uncached plot; params.yaml) from the commit, and
DVC-cached outputs (data/submission.csv, models/adapter) from the local cache by the hash
dvc.lock records at that commit. A cached output that this cache lacks (the run was made on another
machine) needs `dvc pull` / `dvc exp pull` first.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from prefbench.data import DataError

WORKSPACE = "workspace"  # `dvc exp show`'s name for the files on disk


@dataclass(frozen=True)
class Revision:
    name: str  # as given: an experiment, a git revision or `workspace`
    rev: str  # the full commit hash (the workspace: HEAD's, which its files may differ from)
    workspace: bool

    @property
    def dvc_rev(self) -> str | None:
        """What DVC's API takes: None reads the workspace (files on disk, the cache for outputs)."""
        return None if self.workspace else self.rev


def resolve(name: str, repo: str | Path = ".") -> Revision:
    """The commit of an experiment name or git revision (DVC resolves experiment names, which
    git alone does not); exits naming `name` when neither knows it."""
    from dvc.repo import Repo
    from dvc.scm import RevError, resolve_rev

    with Repo(str(repo)) as r:
        if name == WORKSPACE:
            return Revision(name, r.scm.get_rev(), True)
        try:
            return Revision(name, resolve_rev(r.scm, name), False)
        except RevError as err:
            raise DataError(f"{name}: neither an experiment nor a git revision of {Path(repo).resolve()} "
                            f"({err}); `dvc exp show` lists them") from None


def read_text(rev: Revision, path: str, repo: str | Path = ".") -> str | None:
    """`path` at `rev` as text, or None where it is not there: not a file of that revision, or a
    DVC output this cache does not hold (see `missing_reason`)."""
    fs = _fs(rev, repo)
    try:
        return fs.read_text(path)
    except (FileNotFoundError, IsADirectoryError):
        return None
    except Exception as err:  # DVC's errors for an output missing from the cache have no common base
        if _is_missing(err):
            return None
        raise


def missing_reason(rev: Revision, path: str, repo: str | Path = ".") -> str:
    """Why `read_text` found nothing: not in that revision, or an output the cache lacks."""
    fs = _fs(rev, repo)
    if not fs.exists(path):
        return f"{path} is not a file of {rev.name}"
    return f"{path} of {rev.name} is not in this DVC cache (dvc pull, or dvc exp pull for an experiment)"


def get_dir(rev: Revision, path: str, dest: Path, repo: str | Path = ".") -> Path:
    """A folder (`models/adapter`) at `rev` copied to `dest`; exits naming the revision and path
    where it is missing."""
    fs = _fs(rev, repo)
    if not fs.isdir(path):
        raise DataError(f"{rev.name} ({rev.rev[:7]}): no folder {path} (not trained there?)")
    try:
        fs.get(path, str(dest), recursive=True)
    except Exception as err:
        if _is_missing(err):
            raise DataError(f"{rev.name} ({rev.rev[:7]}): {path} is not in this DVC cache "
                            "(dvc pull, or dvc exp pull for an experiment)") from None
        raise
    return dest


def _fs(rev: Revision, repo: str | Path):
    from dvc.api import DVCFileSystem

    return DVCFileSystem(str(repo), rev=rev.dvc_rev)


def _is_missing(err: Exception) -> bool:
    # DVC 3: a cached output whose object is absent raises FileNotFoundError from the object store,
    # or dvc's own FileMissingError / PathMissingError (not OSErrors)
    return isinstance(err, FileNotFoundError) or type(err).__name__ in ("FileMissingError", "PathMissingError",
                                                                        "CheckoutError")
