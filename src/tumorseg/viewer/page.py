"""The viewer's page: HTML around NiiVue (``static/niivue.umd.js``) and ``static/viewer.js``.

The same page serves ``tumorseg view`` (scripts under ``static/``, data from the JSON API,
uploads with the session token) and ``tumorseg report`` (scripts beside ``index.html``, the
data in ``cases.js`` and ``volumes/*.js``, so that it opens from disk with no server). Nothing
is loaded from another origin (works offline).
"""

# The page is one string of HTML; wrapping its lines at 100 columns would only hurt reading.
# ruff: noqa: E501

from __future__ import annotations

import html

__all__ = ["PAGE", "TOKEN_PLACEHOLDER", "render_page"]

#: Replaced by the session's token when the page is served; uploads send it back.
TOKEN_PLACEHOLDER = "@@TUMORSEG_TOKEN@@"

_UPLOAD = """ <fieldset id="upload-box"><legend>Segment a new study</legend>
  <form id="upload">
   <div>Model <select name="model" id="model"></select></div>
   <div>FLAIR <input type="file" name="flair" id="up-flair" accept=".nii,.gz"></div>
   <div>T1 <input type="file" name="t1" id="up-t1" accept=".nii,.gz"></div>
   <div>T1ce <input type="file" name="t1ce" id="up-t1ce" accept=".nii,.gz"></div>
   <div>T2 <input type="file" name="t2" id="up-t2" accept=".nii,.gz"></div>
   <div>or a zip <input type="file" name="archive" id="up-archive" accept=".zip"></div>
   <button type="submit" id="up-submit">Upload and segment</button>
  </form>
  <progress id="job-progress" max="1" value="0"></progress>
  <div id="job-status"></div>
 </fieldset>
"""

_BODY = """<div id="side">
 <h3>Cases</h3>
 <div id="pager"><input id="filter" type="search" placeholder="filter case id">
  <button id="prev" type="button">&lt;</button><span id="range"></span><button id="next" type="button">&gt;</button></div>
 <table><thead><tr><th><button data-sort="case_id">case</button></th>
  <th><button data-sort="WT">WT</button> mL</th><th><button data-sort="TC">TC</button> mL</th><th><button data-sort="ET">ET</button> mL</th>
  <th>Dice <button data-sort="dice_WT">WT</button>/<button data-sort="dice_TC">TC</button>/<button data-sort="dice_ET">ET</button></th></tr>
 </thead><tbody id="cases"></tbody></table>
 <div id="list-status" class="hint"></div>
@@UPLOAD@@</div>
<div id="main">
 <h3 id="title">Select a case</h3>
 <div id="controls" hidden>
  <label>Modality <select id="modality"></select></label>
  <label>Level <input type="number" id="win-level" step="any"></label>
  <label>Width <input type="number" id="win-width" step="any" min="0"></label>
  <button type="button" id="win-auto">auto window</button>
  <label>Opacity <input type="range" id="opacity" min="0" max="1" step="0.05" value="0.6"></label>
  <span id="legend"></span>
  <label>Reference <select id="compare"><option value="side">side by side</option><option value="outline">fill + prediction outline</option><option value="none">hidden</option></select></label>
  <span>Zoom <button type="button" id="zoom-in">+</button><button type="button" id="zoom-out">&minus;</button><button type="button" id="zoom-reset">reset</button></span>
  <a id="download" href="#" download>Download mask</a>
 </div>
 <div id="voxel"></div>
 <div class="panes" id="panes">
  <div class="pane" id="pane-pred"><div class="box"><canvas id="nv-pred"></canvas></div><div class="cap" id="cap-pred">prediction</div></div>
  <div class="pane" id="pane-ref" hidden><div class="box"><canvas id="nv-ref"></canvas></div><div class="cap">reference</div></div>
  <div class="pane render" id="pane-3d"><div class="box"><canvas id="nv-3d"></canvas></div><div class="cap">3D: segmentation (drag to rotate)</div></div>
 </div>
 <p class="hint">Click or drag: crosshair (linked across views and panes). Right drag or Ctrl+drag: window/level.
  Middle drag or Shift+drag: pan. Scroll: next slice. Arrow keys and Page Up/Down: move the crosshair.</p>
</div>"""


def render_page(
    *, token: str | None, prefix: str = "static/", data_script: str | None = None
) -> str:
    """The page's HTML.

    Args:
        token: the session token uploads send back; None for a page without uploads (a report).
        prefix: where ``niivue.umd.js``, ``viewer.js`` and ``viewer.css`` are, relative to the page.
        data_script: a script with the cases (``window.TUMORSEG_STATIC``), for a report.
    """
    upload = _UPLOAD if token is not None else ""
    meta = f'<meta name="tumorseg-token" content="{html.escape(token)}">' if token else ""
    data = f'<script src="{html.escape(data_script)}"></script>' if data_script else ""
    p = html.escape(prefix)
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>tumorseg viewer</title>\n'
        f'<link rel="icon" href="data:,">{meta}<link rel="stylesheet" href="{p}viewer.css">\n</head><body>\n'
        + _BODY.replace("@@UPLOAD@@", upload)
        + f'\n{data}<script src="{p}niivue.umd.js"></script>\n<script src="{p}viewer.js"></script>\n'
        "</body></html>\n"
    )


#: The page ``tumorseg view`` serves (its token placeholder replaced per session).
PAGE = render_page(token=TOKEN_PLACEHOLDER)
