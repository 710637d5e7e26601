"""Creating users, issuing and revoking tokens, and telling who a bearer token belongs to."""

import hashlib
import secrets
from datetime import UTC, datetime, timedelta
from uuid import UUID

from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from services.common.problems import Conflict, InvalidInput, NotFound, Unauthorized
from services.registry.accounts.models import ApiToken, ServiceRole, TokenIssued, TokenRead, User

TOKEN_PREFIX = "mc_"  # noqa: S105 - a public marker, not a secret


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


async def create_user(
    *,
    session: AsyncSession,
    name: str,
    is_admin: bool = False,
    service_role: ServiceRole | None = None,
) -> User:
    """Add a user (the caller commits); a taken name is a 409."""
    if is_admin and service_role is not None:
        # A service account holds exactly its role's reads; an admin flag would undo that.
        raise InvalidInput("service_role", "a service account cannot be an admin")
    if (await get_user_by_name(session=session, name=name)) is not None:
        raise Conflict(f"user {name!r} exists already")
    user = User(
        name=name, is_admin=is_admin, service_role=service_role, created_at=datetime.now(UTC)
    )
    session.add(user)
    try:
        await session.flush()
    except IntegrityError:
        raise Conflict(f"user {name!r} exists already") from None
    return user


async def get_user_by_name(*, session: AsyncSession, name: str) -> User | None:
    return (await session.exec(select(User).where(User.name == name))).first()


async def get_user_by_name_or_raise(*, session: AsyncSession, name: str) -> User:
    user = await get_user_by_name(session=session, name=name)
    if user is None:
        raise NotFound(f"no user {name!r}")
    return user


async def issue_token(
    *, session: AsyncSession, user: User, name: str, expires_in_days: int | None = None
) -> TokenIssued:
    """A new random token for ``user``; only its digest is stored."""
    secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
    now = datetime.now(UTC)
    token = ApiToken(
        user_id=user.id,
        name=name,
        digest=digest(secret),
        prefix=secret[:11],
        created_at=now,
        expires_at=now + timedelta(days=expires_in_days) if expires_in_days else None,
    )
    session.add(token)
    await session.flush()
    return TokenIssued(**_read(token).model_dump(), token=secret)


async def list_tokens(*, session: AsyncSession, user: User) -> list[TokenRead]:
    query = select(ApiToken).where(ApiToken.user_id == user.id).order_by(col(ApiToken.created_at))
    return [_read(token) for token in (await session.exec(query)).all()]


async def revoke_token(*, session: AsyncSession, user: User, token_id: UUID) -> TokenRead:
    token = await session.get(ApiToken, token_id)
    if token is None or (token.user_id != user.id and not user.is_admin):
        raise NotFound(f"no token {token_id}")
    if token.revoked_at is None:
        token.revoked_at = datetime.now(UTC)
    return _read(token)


async def revoke_every_token(*, session: AsyncSession, user: User) -> int:
    """Revoke every live token of ``user``; returns how many were live."""
    query = select(ApiToken).where(ApiToken.user_id == user.id, col(ApiToken.revoked_at).is_(None))
    now = datetime.now(UTC)
    tokens = (await session.exec(query)).all()
    for token in tokens:
        token.revoked_at = now
    return len(tokens)


async def find_token_owner(*, session: AsyncSession, token: str) -> User | None:
    """The user a token was issued to, whether or not it is still valid."""
    query = select(User).join(ApiToken).where(ApiToken.digest == digest(token.strip()))
    return (await session.exec(query)).first()


async def authenticate(*, session: AsyncSession, authorization: str | None) -> User:
    """The user behind an ``Authorization: Bearer mc_...`` header, or a 401."""
    if not authorization:
        raise Unauthorized("send an API token: Authorization: Bearer <token>")
    scheme, _, secret = authorization.partition(" ")
    if scheme.lower() != "bearer" or not secret.startswith(TOKEN_PREFIX):
        raise Unauthorized("send an API token: Authorization: Bearer <token>")
    query = select(ApiToken, User).join(User).where(ApiToken.digest == digest(secret.strip()))
    row = (await session.exec(query)).first()
    if row is None:
        raise Unauthorized("the token is not valid")
    token, user = row
    now = datetime.now(UTC)
    if token.revoked_at is not None:
        raise Unauthorized("the token was revoked")
    if token.expires_at is not None and _aware(token.expires_at) <= now:
        raise Unauthorized("the token has expired")
    return user


def _aware(moment: datetime) -> datetime:
    # SQLite hands back naive datetimes; everything is stored in UTC.
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _read(token: ApiToken) -> TokenRead:
    return TokenRead(
        id=token.id,
        name=token.name,
        prefix=token.prefix,
        created_at=token.created_at,
        expires_at=token.expires_at,
        revoked_at=token.revoked_at,
    )
