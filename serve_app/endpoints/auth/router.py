"""``/v1/auth/*``: sign up, log in, log out. The verifier pool does the work (it holds the
material that signs session tokens); failed log-ins count against the source address."""

# No "from __future__ import annotations": FastAPI must see the real Request type here.
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from core.errors import GatewayError, invalid_session
from serve_app.callers.guard import too_many_signups
from serve_app.endpoints.auth.schema import AccountCreated, Credentials, LoggedOut, SessionToken
from serve_app.endpoints.parsing import parse_body
from serve_app.gateway import Gateway
from serve_app.http import presented_key, raise_if_error, read_body
from serve_app.openapi import documented


def auth_router(gateway: Gateway) -> APIRouter:
    router = APIRouter()
    callers, verifier = gateway.callers, gateway.verifier

    @router.post("/v1/auth/signup", status_code=201, **documented(
            "Create an account", request=Credentials, response=AccountCreated, status=201, tags=["account"],
            errors=[400, 408, 409, 413, 429, 503]))
    async def signup(request: Request) -> JSONResponse:
        address = callers.address(request)
        credentials = parse_body(Credentials, await read_body(request, *gateway.body_limits))
        admitted = await gateway.signups.admit(address)  # every sign-up counts, whatever its outcome
        if not admitted.counted:
            raise too_many_signups(admitted.retry_after)
        account = raise_if_error(await verifier.signup.remote(credentials.email, credentials.password))
        if gateway.billing is not None:  # Stripe away: the customer is made when first needed
            await gateway.billing.customer_at_signup(account.id)
        return JSONResponse({"object": "account", "id": account.id, "email": account.email,
                             "created_at": account.created_at}, status_code=201)

    @router.post("/v1/auth/login", **documented(
            "Log in: a session token for the account endpoints", request=Credentials, response=SessionToken,
            tags=["account"], errors=[400, 401, 408, 413, 429, 503]))
    async def login(request: Request) -> JSONResponse:
        address = callers.source(request)
        credentials = parse_body(Credentials, await read_body(request, *gateway.body_limits))
        issued = raise_if_error(await verifier.login.remote(credentials.email, credentials.password))
        if issued is None:
            raise await callers.failed(address, GatewayError(401, "Wrong email or password.",
                                                             code="invalid_credentials"))
        token, session = issued
        return JSONResponse({"token": token, "token_type": "bearer", "expires_at": session.expires_at})

    @router.post("/v1/auth/logout", **documented("End this session", response=LoggedOut, auth="session",
                                                tags=["account"]))
    async def logout(request: Request) -> JSONResponse:
        address = callers.source(request)
        if not await verifier.logout.remote(presented_key(request) or ""):  # checks the session too
            raise await callers.failed(address, invalid_session())
        return JSONResponse({"logged_out": True})

    return router
