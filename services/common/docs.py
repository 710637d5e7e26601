"""``/docs`` on every service: Swagger UI over the service's OpenAPI document, from files
vendored from npm (``swagger-ui-dist``; ``deploy/vendor-swagger-ui.sh``), so the page works
in networks that reach no CDN. FastAPI's own ``/docs`` and ``/redoc`` load theirs from one.
"""

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse

from services.common.problems import NotFound

ASSETS = Path(__file__).resolve().parent / "docs_assets"
_TYPES = {"swagger-ui-bundle.js": "text/javascript", "swagger-ui.css": "text/css"}
# An empty icon: the default one would be fetched from FastAPI's site.
_NO_ICON = "data:image/x-icon;base64,AA=="


def docs_router(app: FastAPI, openapi_url: str) -> APIRouter:
    router = APIRouter(include_in_schema=False)

    @router.get("/docs")
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=openapi_url,
            title=f"{app.title} API",
            swagger_js_url="/docs/assets/swagger-ui-bundle.js",
            swagger_css_url="/docs/assets/swagger-ui.css",
            swagger_favicon_url=_NO_ICON,
        )

    @router.get("/docs/assets/{name}")
    async def asset(name: str) -> FileResponse:
        if name not in _TYPES:
            raise NotFound(f"no asset {name!r}")
        return FileResponse(
            ASSETS / name, media_type=_TYPES[name], headers={"Cache-Control": "max-age=86400"}
        )

    return router
