"""Write `.dvc/plots/offline.html`: DVC's plots page with vega, vega-lite and vega-embed inlined.

Usage: python -m scripts.offline_template [--js-dir DIR] [--out .dvc/plots/offline.html]

`.dvc/config` names the file as `plots.html_template`, so `dvc plots show` / `dvc plots diff`
write pages that draw from disk with no network. DVC's own page loads
the three libraries from cdn.jsdelivr.net (dvc_render's `VegaRenderer.SCRIPTS`); this inlines the
same versions, read from there, and each package's LICENSE (BSD-3-Clause) above its script.
Only a maintainer runs it, after a dvc-render upgrade changes those versions (tests/test_plots.py
then fails): it fetches `<name>@<version>` with `npm pack` (npm registry), or takes
`<name>-<version>.min.js` and `<name>-<version>.LICENSE` from --js-dir.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import tarfile
import tempfile
from pathlib import Path

OUT = Path(".dvc/plots/offline.html")
# dvc_render fills these by plain text replacement: a library holding one would be corrupted.
PLACEHOLDERS = ("{plot_divs}", "{scripts}", "{refresh_tag}")
PAGE = """<!DOCTYPE html>
<html>
<head>
<meta charset="utf-8">
{refresh_tag}
<title>DVC Plot</title>
<!-- DVC's page (dvc_render PAGE_HTML) with the scripts it loads from a CDN inlined instead:
     made by `python -m scripts.offline_template`, named in .dvc/config as plots.html_template. -->
%s
<style>
table {
    border-spacing: 15px;
}
</style>
</head>
<body>
{plot_divs}
</body>
</html>
"""


def vega_versions() -> dict[str, str]:
    """{name: version} of vega, vega-lite, vega-embed as DVC's pages load them (in load order)."""
    from dvc_render import VegaRenderer

    found = dict(re.findall(r"npm/(vega(?:-lite|-embed)?)@([0-9][0-9.]*)", VegaRenderer.SCRIPTS))
    if list(found) != ["vega", "vega-lite", "vega-embed"]:
        raise SystemExit(f"error: unexpected dvc_render scripts: {VegaRenderer.SCRIPTS}")
    return found


def npm_pack(name: str, version: str) -> tuple[str, str]:
    """(build/<name>.min.js, LICENSE) of the npm package `name@version`."""
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(["npm", "pack", "--silent", f"{name}@{version}"], cwd=tmp, check=True,
                       stdout=subprocess.DEVNULL)
        with tarfile.open(next(Path(tmp).glob("*.tgz"))) as tar:
            return tuple(tar.extractfile(f"package/{member}").read().decode("utf-8")
                         for member in (f"build/{name}.min.js", "LICENSE"))


def script(name: str, version: str, js: str, licence: str) -> str:
    """One inline <script>: the licence in a leading comment, then the library as published."""
    for bad in (*PLACEHOLDERS, "</script"):
        if bad in js or bad in licence:
            raise SystemExit(f"error: {name}@{version} contains {bad!r}: it cannot be inlined as is")
    if "*/" in licence:
        raise SystemExit(f"error: {name}@{version}'s LICENSE contains '*/'")
    return f"<script>\n/*! {name}@{version} (npm: build/{name}.min.js). LICENSE:\n\n{licence.strip()}\n*/\n{js.strip()}\n</script>"


def template(libraries: dict[str, tuple[str, str, str]]) -> str:
    """The page for {name: (version, js, licence)}, in load order."""
    return PAGE % "\n".join(script(name, *lib) for name, lib in libraries.items())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--js-dir", type=Path, help="<name>-<version>.min.js and .LICENSE here (default: npm pack)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    libraries = {}
    for name, version in vega_versions().items():
        if args.js_dir:
            js, licence = ((args.js_dir / f"{name}-{version}{ext}").read_text(encoding="utf-8")
                           for ext in (".min.js", ".LICENSE"))
        else:
            js, licence = npm_pack(name, version)
        libraries[name] = (version, js, licence)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(args.out.name + ".tmp")
    tmp.write_text(template(libraries), encoding="utf-8")
    tmp.replace(args.out)
    print(f"{args.out}: {', '.join(f'{n}@{v}' for n, (v, _, _) in libraries.items())} "
          f"({args.out.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
