"""`patchrank report`: one self-contained HTML file (images embedded, no server) from a result dataset.

Scans are listed by rank (scan score, highest first) with their flagged state; for each, the most
suspicious slices (those of its top patches) are drawn in radiological orientation (patient's right on the
viewer's left, anterior up), with the anomaly map overlaid in colour when `--maps` wrote one (colourbar in
the map's units) and the top patch boxes; 2D images are drawn in colour. Columns sort on click.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import numpy as np

_STYLE = """body{font-family:sans-serif;margin:1em;background:#fafafa}table{border-collapse:collapse}
th,td{border:1px solid #ccc;padding:4px 8px;vertical-align:top}th{cursor:pointer;background:#eee}
td.flag{color:#b00;font-weight:bold}img{height:220px;margin-right:4px}"""
_SORT = """document.querySelectorAll('th').forEach((th,i)=>th.onclick=()=>{const b=th.closest('table').tBodies[0];
const r=[...b.rows],num=th.dataset.num==='1',d=th.dataset.dir=th.dataset.dir==='a'?'d':'a';
r.sort((x,y)=>{let p=x.cells[i].dataset.v??x.cells[i].innerText,q=y.cells[i].dataset.v??y.cells[i].innerText;
if(num){p=+p;q=+q}return (p>q?1:p<q?-1:0)*(d==='a'?1:-1)});r.forEach(e=>b.appendChild(e))});"""


def _radiological(a: np.ndarray) -> np.ndarray:
    """A canonical (RAS) axial slice a[x, y] -> display rows (anterior up), columns (patient's right left)."""
    return a[::-1, ::-1].T


def _map_scale(overlay: np.ndarray) -> tuple[float, float]:
    """A scan's anomaly map (X, Y, Z) -> its colour scale (lo, hi): the 90th and 99.8th percentiles of its
    scored voxels (those above their slice's minimum, which marks the slice's background; unscored slices hold
    one value), so that every slice of a scan is drawn on the same scale."""
    scored = overlay[overlay > overlay.min(axis=(0, 1), keepdims=True)]
    lo, hi = np.percentile(scored if scored.size else overlay, [90, 99.8])
    return float(lo), float(max(hi, lo + 1e-6))


def _slice_png(
    image: np.ndarray, overlay: np.ndarray | None, boxes: list[tuple], rgb: bool, scale: tuple[float, float] | None
) -> str:
    """One slice as a PNG (base64); overlay (with its scan's colour `scale`) and boxes drawn over it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    fig, ax = plt.subplots(figsize=(4.2 if overlay is not None else 3.4, 3.4), dpi=80)
    ax.imshow(image, cmap=None if rgb else "gray", interpolation="nearest")
    if overlay is not None:
        lo, hi = scale  # the scan's scale: colour only its top 10 %
        shown = np.ma.masked_less(overlay, lo)
        im = ax.imshow(shown, cmap="inferno", alpha=0.55, vmin=lo, vmax=hi, interpolation="nearest")
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="anomaly")
    for rank, (r0, c0, h, w) in boxes:
        ax.add_patch(Rectangle((c0 - 0.5, r0 - 0.5), w, h, fill=False, edgecolor="cyan", linewidth=1.2))
        ax.text(c0, r0 - 1, str(rank), color="cyan", fontsize=7)
    ax.set_axis_off()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _scan_images(row: dict, root: Path, slices: int) -> list[str]:
    """PNG (base64) of the scan's most suspicious slices, or [] when the scan cannot be read any more."""
    import nibabel as nib

    from patchrank.pipeline.data.loaders import ScanError, load_scan

    tops = row["top_patches"] or []
    try:
        scan = load_scan(row["uri"], series_uid=row["series_uid"], channels=3 if _is_image(row["uri"]) else 1)
    except (ScanError, OSError):
        return []
    overlay = None
    if row.get("map_uri") and (root / row["map_uri"]).is_file():
        overlay = np.asarray(nib.as_closest_canonical(nib.load(str(root / row["map_uri"]))).dataobj, np.float32)
    scale = None if overlay is None else _map_scale(overlay)
    order = list(dict.fromkeys(int(t["slice_index"]) for t in tops))[:slices]
    out = []
    for k in order:
        boxes = [t for t in tops if int(t["slice_index"]) == k]
        if scan.kind == "image":
            img = np.clip(scan.array[..., 0].transpose(1, 2, 0), 0, 1)
            spec = [(t["rank"], (t["y0"], t["x0"], t["y1"] - t["y0"], t["x1"] - t["x0"])) for t in boxes]
            out.append(_slice_png(img, None, spec, rgb=True, scale=None))
            continue
        vol = scan.array[0]
        nx, ny = vol.shape[:2]
        spec = [(t["rank"], (ny - t["x1"], nx - t["y1"], t["x1"] - t["x0"], t["y1"] - t["y0"])) for t in boxes]
        ov = None if overlay is None or overlay.shape != vol.shape else _radiological(overlay[..., k])
        out.append(_slice_png(_radiological(vol[..., k]), ov, spec, rgb=False, scale=scale))
    return out


def _common_folder(uris: list[str]) -> str:
    """The folder (or s3:// prefix) that holds all these scans ("" when they share none)."""
    import os

    s3 = [u.startswith("s3://") for u in uris]
    if not uris or any(s3) != all(s3) or any("/" not in u for u in uris):
        return ""
    head = "s3://" if s3[0] else ""
    try:
        common = os.path.commonpath([u[len(head) :].rsplit("/", 1)[0] for u in uris])
    except ValueError:  # relative and absolute paths mixed
        return ""
    return head + common if common not in ("", "/") else ""


def _relative(uri: str, common: str) -> str:
    """A scan's location below the report's common folder (the hover text: where it lies in the archive,
    without the machine's absolute path)."""
    return uri[len(common) :].lstrip("/") if common and uri.startswith(common + "/") else Path(uri).name


def _is_image(uri: str) -> bool:
    from patchrank.pipeline.data.loaders import IMAGE_SUFFIXES

    return uri.lower().endswith(IMAGE_SUFFIXES)


def build_report(results: str | Path, out: str | Path, *, top: int = 50, slices: int = 3) -> Path:
    """Write the HTML report of the `top` highest-scoring scans of the latest model in `results`."""
    from patchrank.pipeline.service.results import ResultStore, display_name, no_results

    root = Path(results)
    store = ResultStore(root)
    cols = "scan_id, uri, series_uid, scan_score, flagged, map_uri, top_patches, model_version"
    names, rows = store.sql(f"SELECT {cols} FROM scans WHERE status = 'ok' ORDER BY scan_score DESC LIMIT {int(top)}")
    rows = [dict(zip(names, r)) for r in rows]
    failed = store.sql("SELECT uri, series_uid, error FROM scans WHERE status = 'failed' ORDER BY uri")[1]
    n_failed = len(failed)
    if not rows and not n_failed:
        raise ValueError(f"{no_results(root)}; no report written")
    body, common = [], _common_folder([r["uri"] for r in rows])
    for rank, r in enumerate(rows, 1):
        imgs = "".join(f'<img alt="slice" src="data:image/png;base64,{b}">' for b in _scan_images(r, root, slices))
        flag = {True: "flagged", False: "", None: "n/a"}[r["flagged"]]
        name = display_name(r)
        where = html.escape(_relative(r["uri"], common))
        body.append(
            f"<tr><td data-v='{rank}'>{rank}</td><td data-v='{r['scan_score']:.6f}'>{r['scan_score']:.3f}</td>"
            f"<td class='flag'>{flag}</td><td title='{where}'>{html.escape(name)}</td>"
            f"<td>{imgs or 'scan not readable here'}</td></tr>"
        )
    models = sorted({r["model_version"] for r in rows})
    page = (
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>PatchRank report</title>"
        f"<style>{_STYLE}</style></head><body><h1>PatchRank screening report</h1>"
        f"<p>{len(rows)} scans by rank (model {html.escape(', '.join(m[:12] for m in models))}); {n_failed} failed "
        "(listed below). Score: how unlike the model's normal scans the scan's most unusual patches are, in z "
        "units of normal scans' scores; the higher, the more suspicious. Flagged: at or over the checkpoint's "
        "operating point (n/a: it has none; `patchrank evaluate` on held-out scans sets one). "
        + (
            "Slices in radiological orientation (patient's right on the left, anterior up). "
            if any(not _is_image(r["uri"]) for r in rows)
            else ""
        )
        + "Cyan boxes: top patches with their rank; colour: anomaly map (when written with --maps), one scale per "
        "scan: its top 10 % of scored voxels. Hover over a scan's name for its place in the archive.</p>"
        "<table><thead><tr><th data-num='1'>rank</th><th data-num='1'>score</th><th>flagged</th><th>scan</th>"
        f"<th>most suspicious slices</th></tr></thead><tbody>{''.join(body)}</tbody></table>"
        + _failed_table(failed)
        + f"<script>{_SORT}</script></body></html>"
    )
    out = Path(out)
    out.write_text(page, encoding="utf-8")
    return out


def _failed_table(failed: list[tuple]) -> str:
    """The scans that could not be scored, with the reason (file names and reasons, never header text)."""
    from patchrank.pipeline.service.results import display_name

    if not failed:
        return ""
    names = [display_name({"uri": uri, "series_uid": uid}) for uri, uid, _ in failed]
    rows = "".join(
        f"<tr><td>{html.escape(name)}</td><td>{html.escape(error or '')}</td></tr>"
        for name, (_, _, error) in zip(names, failed)
    )
    head = "<thead><tr><th>scan</th><th>reason</th></tr></thead>"
    return f"<h2>Not scored ({len(failed)})</h2><table>{head}<tbody>{rows}</tbody></table>"
