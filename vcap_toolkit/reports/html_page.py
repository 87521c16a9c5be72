"""What every HTML report shares: the page shell and where a page may be written.

A report is one self-contained file: thumbnails are ``data:`` URIs, CSS and JS are inline, plots are
inline SVG (``svg_plot``), and a Content-Security-Policy forbids the page to fetch anything, so a
report can be mailed or archived and opens the same anywhere. ``page`` wraps a body in that shell;
``check_report_path`` refuses a path a page must not be written to, before any work. The pages:
``report`` (a captioned split beside its frames) and ``run_curves`` (a training run's curves).
"""

from __future__ import annotations

import html
import os
from pathlib import Path
from typing import Any, Iterable

from retrieval_pretrain.foundation.errors import ConfigError
from retrieval_pretrain.foundation.ownership import FileKind, claim_file

_CSS = """
:root{--bad:#c62828;--bad-bg:#fdecea;--good:#2e7d32;--good-bg:#e8f5e9;--mid:#546e7a;--line:#dde1e6}
*{box-sizing:border-box}
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;color:#1c2330;
margin:0;padding:24px 28px;background:#f6f7f9}
h1{font-size:24px;margin:0 0 2px}h2{font-size:18px;margin:26px 0 8px}
.sub{color:#5b6472;margin:0 0 12px}code{font:13px ui-monospace,"DejaVu Sans Mono",monospace}
table{border-collapse:collapse;background:#fff;border:1px solid var(--line)}
.metrics th,.metrics td{padding:6px 16px;text-align:center;border-bottom:1px solid var(--line)}
.metrics th{font-size:13px;color:#5b6472;font-weight:600}.metrics td{font-size:20px;font-weight:600}
.metrics td.cider{color:#0d47a1}
.tools{display:flex;gap:16px;align-items:center;margin:10px 0}
.tools input{font:inherit;padding:5px 10px;border:1px solid #b8bec7;border-radius:6px;width:320px}
#videos{width:100%}
#videos th{position:sticky;top:0;background:#eef1f5;text-align:left;padding:8px 10px;font-size:13px;
border-bottom:2px solid #c9ced6;white-space:nowrap}
#videos th[data-key]{cursor:pointer;user-select:none}#videos th[data-key]:hover{background:#e1e6ee}
#videos th[aria-sort=ascending]::after{content:" \\25B2"}#videos th[aria-sort=descending]::after{content:" \\25BC"}
#videos td{padding:8px 10px;border-bottom:1px solid var(--line);vertical-align:top}
#videos tr{border-left:5px solid transparent}
#videos tr.worst{border-left-color:var(--bad);background:#fffafa}#videos tr.best{border-left-color:var(--good)}
td.rank{color:#8a929e;font-size:13px;width:36px}
td.score{width:110px;white-space:nowrap}td.vid{width:170px;word-break:break-all}
.badge{display:inline-block;padding:2px 9px;border-radius:11px;font-weight:700;font-size:14px;
background:#eceff1;color:var(--mid)}
tr.worst .badge{background:var(--bad-bg);color:var(--bad)}tr.best .badge{background:var(--good-bg);color:var(--good)}
.bar{height:4px;background:#e3e6ea;border-radius:2px;margin-top:6px;width:120px}
.bar i{display:block;height:4px;border-radius:2px;background:var(--mid)}
tr.worst .bar i{background:var(--bad)}tr.best .bar i{background:var(--good)}
td.frames{width:1%}.strip{display:grid;grid-template-columns:repeat(3,auto);gap:3px;justify-content:start}
.strip img{height:72px;border-radius:3px;display:block;transition:transform .1s}
.strip img:hover{transform:scale(2.4);transform-origin:left top;position:relative;z-index:5;
box-shadow:0 4px 16px rgba(0,0,0,.35)}
.gen{font-size:16px;font-weight:600;margin:0 0 4px;overflow-wrap:anywhere}.gen::before{content:"\\201C"}.gen::after{content:"\\201D"}
.missing{color:var(--bad);font-weight:600;margin:0 0 4px}
.refs{margin:0;padding-left:20px;color:#4a5260;font-size:13.5px;overflow-wrap:anywhere}.refs li{margin:1px 0}
details summary{cursor:pointer;color:#5b6472;font-size:13px}
.noframes{color:var(--bad);font-size:13px;width:300px}
.warn{color:var(--bad)}
.plots{display:flex;flex-wrap:wrap;gap:12px}
.plot{background:#fff;border:1px solid var(--line);border-radius:6px}
.plot .grid{stroke:#e6e9ed}.plot .axis{stroke:#7b8491}.plot .tick{font-size:11px;fill:#5b6472}
.plot .ptitle{font-size:14px;font-weight:700;fill:#1c2330}
.plot .series{fill:none;stroke:#1565c0;stroke-width:1.8}.plot .dot{fill:#1565c0}
.plot .best{stroke:var(--good);stroke-dasharray:4 3}.plot .best-label{fill:var(--good)}
.config td,.config th{padding:3px 12px;border-bottom:1px solid var(--line);text-align:left;font-size:13px}
"""

_JS = """
(function(){
var table=document.getElementById('videos');if(!table)return;
var body=table.tBodies[0],heads=table.querySelectorAll('th[data-key]');
function val(tr,k){var v=tr.getAttribute('data-'+k);
 if(k==='cider'||k==='order')return v===''?-Infinity:parseFloat(v);return v;}
function sortBy(k,desc){
 var rows=Array.prototype.slice.call(body.rows);
 rows.sort(function(a,b){var x=val(a,k),y=val(b,k),c=x<y?-1:(x>y?1:0);if(desc)c=-c;
  return c||(val(a,'order')-val(b,'order'));});
 rows.forEach(function(r){body.appendChild(r);});
 heads.forEach(function(th){th.setAttribute('aria-sort',th.getAttribute('data-key')===k?(desc?'descending':'ascending'):'none');});}
heads.forEach(function(th){th.addEventListener('click',function(){
 sortBy(th.getAttribute('data-key'),th.getAttribute('aria-sort')==='ascending');});});
var box=document.getElementById('filter');
if(box)box.addEventListener('input',function(){var q=box.value.toLowerCase();
 Array.prototype.forEach.call(body.rows,function(r){r.style.display=r.textContent.toLowerCase().indexOf(q)<0?'none':'';});});
var m=/sort=(-?)(\\w+)/.exec(location.hash);if(m)sortBy(m[2],m[1]==='-');
document.documentElement.setAttribute('data-js','ready');
})();
"""

# The page may load nothing: every image is a data: URI, style and script are inline.
_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"


def page(title: str, subtitle: str | None, body: str) -> str:
    """The whole HTML document: ``title`` as heading, ``subtitle`` under it, then ``body`` (already
    HTML), with the shared style, script and Content-Security-Policy."""
    e = html.escape
    sub = f'<p class="sub">{e(subtitle)}</p>' if subtitle else ""
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<title>{e(title)}</title><style>{_CSS}</style></head>\n<body><h1>{e(title)}</h1>{sub}\n{body}\n'
            f'<script>{_JS}</script></body></html>\n')


def is_number(value: Any) -> bool:
    """A plotted or tabulated number: an int or a float, not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_report(path: Path) -> bool:
    """Whether ``path`` begins as every page ``page`` writes (and wrote since the first release)."""
    try:
        with path.open("rb") as f:
            return f.read(len(_HEAD)) == _HEAD
    except OSError:
        return False


_HEAD = ('<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><meta http-equiv="Content-Security-Policy" '
         'content="default-src \'none\'').encode()
REPORT = FileKind("report page", _is_report)


def check_report_path(path: str | Path, inputs: Iterable[str | Path] = ()) -> Path:
    """Refuse a report path before any work: it must end in ``.html`` (``vcap caption --report
    v1.mp4 v2.mp4`` would otherwise replace the first video with the page), must not be one of the
    ``inputs``, and, where something already stands there, it must be a regular file - not a folder,
    a device such as ``/dev/null`` or a symbolic link, which the atomic rename would replace - and a
    page vcap wrote (``REPORT``, ``ownership.claim_file``): a user's own page is never replaced."""
    path = Path(path)
    if path.suffix.lower() not in (".html", ".htm"):
        raise ConfigError(f"report path {path}: give a file name ending in .html (the page is HTML)")
    if os.path.lexists(path):
        if path.is_symlink():
            raise ConfigError(f"report path {path} is a symbolic link; give the file itself "
                              "(writing would replace the link, not its target)")
        if not path.is_file():
            raise ConfigError(f"report path {path} exists and is not a regular file; give a new .html file name")
        claim_file(path, REPORT, "report path")
    resolved = path.resolve()
    for given in inputs:
        if Path(given).resolve() == resolved:
            raise ConfigError(f"report path {path} is one of the videos to caption; give another file name")
    for parent in path.parents:
        if os.path.lexists(parent):
            if not parent.is_dir():
                raise ConfigError(f"report path {path}: {parent} is a file, not a folder")
            break
    return path
