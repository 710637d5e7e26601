"""Bootstrapping: the first admin is created by a command, never by a default password."""

from services.common.database import create_engine, session_factory
from services.common.migrations import upgrade
from services.registry.accounts.service import create_user, issue_token
from services.registry.main import MIGRATIONS
from services.registry.settings import RegistrySettings


async def create_admin_user(settings: RegistrySettings, name: str) -> str:
    """Create admin ``name`` (migrating the database first) and return a fresh token."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = create_engine(settings.sqlalchemy_url())
    try:
        await upgrade(engine, MIGRATIONS)
        async with session_factory(engine)() as session, session.begin():
            user = await create_user(session=session, name=name, is_admin=True)
            issued = await issue_token(session=session, user=user, name="admin")
        return issued.token
    finally:
        await engine.dispose()
