"""The static files of the viewer's page, shipped inside the package (no CDN, works offline).

``static/niivue.umd.js`` is NiiVue's own UMD build (``dist/niivue.umd.js`` of the npm package
``@niivue/niivue``, BSD-2-Clause; version, checksum and licences in ``static/README.md``).
``static/viewer.js`` is the page's code, shared by ``tumorseg view`` and ``tumorseg report``.
"""

from __future__ import annotations

from importlib import resources

__all__ = ["ASSETS", "NIIVUE_VERSION", "asset"]

#: The version of the vendored NiiVue build.
NIIVUE_VERSION = "0.69.0"
#: Served names and their content types; nothing else of the package is ever served.
ASSETS: dict[str, str] = {
    "niivue.umd.js": "text/javascript; charset=utf-8",
    "viewer.js": "text/javascript; charset=utf-8",
    "viewer.css": "text/css; charset=utf-8",
}


def asset(name: str) -> bytes:
    """The bytes of a static file of the page.

    Raises:
        KeyError: for a name that is not one of :data:`ASSETS`.
        FileNotFoundError: when the package was installed without its data files
            (reinstall it; ``setup.cfg``'s ``package_data`` lists them).
    """
    if name not in ASSETS:
        raise KeyError(name)
    path = resources.files("tumorseg.viewer").joinpath("static", name)
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(
            f"the viewer's file static/{name} is missing from the installed package; "
            "reinstall tumorseg (pip install -e .) so that its package data is included"
        ) from None
