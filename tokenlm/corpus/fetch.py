"""Fetch Debian packages without installing them: ``apt-get download`` + ``dpkg-deb -x`` into the data root.

``<root>/debs/`` keeps the .deb files, ``<root>/pkgs/<name>/`` the extracted tree. A ``.done`` marker is
written after a complete extraction, so an interrupted build re-extracts and a finished one skips.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("tokenlm.corpus")


@dataclass
class FetchReport:
    """What a build could and could not get; printed at the end of ``tokenlm data build``."""

    fetched: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # name -> one-line reason

    def fail(self, name: str, reason: str) -> None:
        self.failed[name] = reason
        log.warning("could not fetch %s: %s", name, reason)


def _run(cmd: list[str], cwd: Path | None = None) -> str | None:
    """Run ``cmd``; None on success, else the last line of its error output."""
    try:
        r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=1800)
    except (OSError, subprocess.TimeoutExpired) as e:
        return str(e)
    if r.returncode == 0:
        return None
    lines = [ln for ln in (r.stderr or r.stdout).strip().splitlines() if ln.strip()]
    return lines[-1] if lines else f"exit code {r.returncode}"


def _find_deb(debs: Path, name: str) -> Path | None:
    found = sorted(debs.glob(f"{name}_*.deb"))
    return found[-1] if found else None


def fetch_deb(name: str, root: Path, report: FetchReport) -> Path | None:
    """Extracted tree of Debian package ``name`` under ``root/pkgs/name``, or None (reason in ``report``)."""
    target = root / "pkgs" / name
    if (target / ".done").is_file():
        return target
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        report.fail(name, "apt-get/dpkg-deb not found (a Debian-based system is needed for the package sources)")
        return None
    debs = root / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    deb = _find_deb(debs, name)
    if deb is None:
        log.info("downloading %s", name)
        err = _run(["apt-get", "download", name], cwd=debs)
        deb = _find_deb(debs, name)
        if deb is None:
            report.fail(name, err or "apt-get download produced no file (try `apt-get update`)")
            return None
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    err = _run(["dpkg-deb", "-x", str(deb), str(target)])
    if err is not None:
        deb.unlink(missing_ok=True)  # a corrupt download is fetched again next time
        report.fail(name, f"dpkg-deb -x failed: {err}")
        return None
    (target / ".done").write_text("ok\n")
    report.fetched.append(name)
    return target
