"""The runs page: ``/v1/projects/{project}/runs/dashboard``, with ECharts vendored from npm
(``deploy/vendor-echarts.sh``), nothing fetched from elsewhere at run time.

The page and its assets carry no data and need no token; the page reads its token from the
URL's fragment (``#token=...``: never sent to a server, kept in the tab's session storage)
and calls the runs API with it, so each user sees their own runs and those shared with them.
"""

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, HTMLResponse

from services.common.problems import NotFound
from services.metrics.deps import Name

router = APIRouter(prefix="/v1/projects/{project}/runs", include_in_schema=False)
STATIC = Path(__file__).resolve().parent / "static"
ASSETS = {
    "echarts.min.js": "text/javascript",
    "dashboard.js": "text/javascript",
    "dashboard.css": "text/css",
}


@router.get("/dashboard")
async def dashboard(project: Name) -> HTMLResponse:
    return HTMLResponse((STATIC / "dashboard.html").read_text())


@router.get("/assets/{name}")
async def asset(project: Name, name: str) -> FileResponse:
    if name not in ASSETS:
        raise NotFound(f"no asset {name!r}")
    return FileResponse(
        STATIC / name, media_type=ASSETS[name], headers={"Cache-Control": "max-age=3600"}
    )
