-- One-time sign-in codes (CreateSignInCode): a code signs its person in once. Only the SHA-256
-- of each is kept; a used one is deleted, and so are the person's codes when they are
-- deactivated.
CREATE TABLE sign_in_codes (
    code_hash  bytea       PRIMARY KEY,
    org_id     text        NOT NULL,
    email      text        NOT NULL,
    -- Who asked for it: an admin's or a service's token subject.
    created_by text        NOT NULL,
    expires_at timestamptz NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    FOREIGN KEY (org_id, email) REFERENCES people (org_id, email) ON DELETE CASCADE
);
CREATE INDEX sign_in_codes_by_person ON sign_in_codes (org_id, email);
CREATE INDEX sign_in_codes_by_expiry ON sign_in_codes (expires_at);

-- Each organisation's OpenID Connect provider, when it has one.
CREATE TABLE oidc_providers (
    org_id        text        PRIMARY KEY,
    issuer        text        NOT NULL,
    client_id     text        NOT NULL,
    -- Sent to the provider's token endpoint, never answered by an RPC; none for a public
    -- client.
    client_secret text        CHECK (client_secret <> ''),
    redirect_uri  text        NOT NULL,
    email_claim   text        NOT NULL DEFAULT 'email',
    updated_by    text        NOT NULL,
    updated_at    timestamptz NOT NULL DEFAULT now()
);

-- OpenID Connect sign-ins begun and not yet completed: what CompleteOidcSignIn needs of the
-- request BeginOidcSignIn sent, found by the SHA-256 of its state, and deleted when used.
CREATE TABLE oidc_sign_ins (
    state_hash    bytea       PRIMARY KEY,
    org_id        text        NOT NULL,
    -- The provider as it was when the sign-in began: a sign-in begun with another is refused.
    issuer        text        NOT NULL,
    client_id     text        NOT NULL,
    redirect_uri  text        NOT NULL,
    -- The PKCE code_verifier sent with the code, and the nonce the ID token must carry.
    code_verifier text        NOT NULL,
    nonce         text        NOT NULL,
    expires_at    timestamptz NOT NULL
);
CREATE INDEX oidc_sign_ins_by_expiry ON oidc_sign_ins (expires_at);

-- The audit also records sign-in codes made and used, OpenID Connect sign-ins and provider
-- changes; a provider change is about the organisation, not a person (no email).
ALTER TABLE audit ALTER COLUMN email DROP NOT NULL;
ALTER TABLE audit DROP CONSTRAINT audit_action_check;
ALTER TABLE audit ADD CONSTRAINT audit_action_check CHECK (action IN (
    'added', 'updated', 'deactivated', 'password_reset', 'password_set', 'locked',
    'sign_in_code_created', 'signed_in_with_code', 'signed_in_with_oidc', 'oidc_provider_set'
));
