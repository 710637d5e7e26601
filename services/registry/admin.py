"""Bootstrapping: the first admin and the platform services' own accounts are created by a
command, never by a default password."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlmodel.ext.asyncio.session import AsyncSession

from services.common.database import create_engine, session_factory
from services.common.migrations import upgrade
from services.registry.accounts.models import ServiceRole
from services.registry.accounts.service import (
    create_user,
    find_token_owner,
    get_user_by_name,
    issue_token,
    revoke_every_token,
)
from services.registry.main import MIGRATIONS
from services.registry.settings import RegistrySettings


async def create_admin_user(settings: RegistrySettings, name: str) -> str:
    """Create admin ``name`` (migrating the database first) and return a fresh token."""
    async with _transaction(settings) as session:
        user = await create_user(session=session, name=name, is_admin=True)
        issued = await issue_token(session=session, user=user, name="admin")
    return issued.token


async def create_service_account(settings: RegistrySettings, name: str, role: ServiceRole) -> str:
    """A fresh token for service account ``name`` with ``role``, creating the account if it
    is new. A user of that name that is not such an account is refused (it would give the
    service a person's rights): ``ValueError``."""
    async with _transaction(settings) as session:
        user = await get_user_by_name(session=session, name=name)
        if user is None:
            user = await create_user(session=session, name=name, service_role=role)
        elif user.service_role != role or user.is_admin:
            raise ValueError(f"user {name!r} exists and is not the {role} service account")
        # One live token per service: a new one (its file was lost or deleted, perhaps
        # because it leaked) ends the earlier ones.
        await revoke_every_token(session=session, user=user)
        issued = await issue_token(session=session, user=user, name=f"{role} service")
    return issued.token


async def retire_token_owner(settings: RegistrySettings, token: str) -> bool:
    """Revoke every token of the user ``token`` was issued to and take away its admin
    rights (the old all-admin ``platform`` account); False if no user holds that token, or
    if it belongs to anyone but that account (an operator who put the admin's own token in
    that file keeps the admin)."""
    async with _transaction(settings) as session:
        user = await find_token_owner(session=session, token=token)
        if user is None or user.name != "platform" or user.service_role is not None:
            return False
        await revoke_every_token(session=session, user=user)
        user.is_admin = False
    return True


@asynccontextmanager
async def _transaction(settings: RegistrySettings) -> AsyncIterator[AsyncSession]:
    """One committed transaction on the registry's database, migrated first."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = create_engine(settings.sqlalchemy_url())
    try:
        await upgrade(engine, MIGRATIONS)
        async with session_factory(engine)() as session, session.begin():
            yield session
    finally:
        await engine.dispose()
