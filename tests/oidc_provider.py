"""The OpenID Connect provider of the people tests: oidc-provider-mock (tests/requirements.txt)
as its command line runs it (`--port`, `--require-nonce`, ...), made to insist on PKCE.

The mock ignores code_challenge; here an authorization request without an S256 challenge is
refused, and a code is exchanged only with the verifier of its challenge (RFC 7636, section
4.6), so a sign-in through it proves that the verifier was sent and was the right one.
"""

from authlib.oauth2.rfc6749 import InvalidRequestError
from authlib.oauth2.rfc7636 import CodeChallenge

import oidc_provider_mock._app as mock
from oidc_provider_mock.__main__ import run

# The challenge of each code issued, by code: the mock's stored codes have no place for it.
_challenges: dict[str, tuple[str, str]] = {}


class RequiredS256(CodeChallenge):
    SUPPORTED_CODE_CHALLENGE_METHOD = ["S256"]

    def validate_code_challenge(self, grant, redirect_uri):
        data = grant.request.payload.data
        if not data.get("code_challenge") or data.get("code_challenge_method") != "S256":
            raise InvalidRequestError("this provider requires PKCE with S256")
        super().validate_code_challenge(grant, redirect_uri)

    def get_authorization_code_challenge(self, authorization_code):
        return _challenges.get(authorization_code.code, (None, None))[0]

    def get_authorization_code_challenge_method(self, authorization_code):
        return _challenges.get(authorization_code.code, (None, None))[1]


class PkceAuthorizationCodeGrant(mock.AuthorizationCodeGrant):
    def __init__(self, request, server):
        super().__init__(request, server)
        RequiredS256()(self)

    def save_authorization_code(self, code, request):
        super().save_authorization_code(code, request)
        data = request.payload.data
        _challenges[code] = (data["code_challenge"], data["code_challenge_method"])


# The mock registers its grant by this module-level name when its app is made.
mock.AuthorizationCodeGrant = PkceAuthorizationCodeGrant

if __name__ == "__main__":
    run()
