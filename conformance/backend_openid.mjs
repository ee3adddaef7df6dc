// SMART Backend Services with the npm library openid-client: the script makes its own ES384 key,
// registers itself with the initial access token it is given (RFC 7591, inline JWKS), discovers
// the server from the FHIR base's openid-configuration, gets a token with client_credentials and
// private_key_jwt (openid-client omits `typ` and puts the issuer in `aud`), and reads with it.
// Usage: node backend_openid.mjs BASE_URL INITIAL_ACCESS_TOKEN
import * as client from 'openid-client';
import * as jose from 'jose';
import { check, summary } from './check.mjs';

const [base, initialToken] = process.argv.slice(2);
const origin = base.replace(/\/fhir$/, '');

async function main() {
  const { publicKey, privateKey } = await jose.generateKeyPair('ES384', { extractable: true });
  const jwk = { ...(await jose.exportJWK(publicKey)), kid: 'openid-client-1', alg: 'ES384', use: 'sig' };
  const registered = await fetch(`${origin}/auth/register`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${initialToken}` },
    body: JSON.stringify({
      client_name: 'openid-client backend',
      grant_types: ['client_credentials'],
      token_endpoint_auth_method: 'private_key_jwt',
      jwks: { keys: [jwk] },
      scope: 'system/Patient.rs',
    }),
  });
  check('registration status', registered.status, 201);
  const { client_id: clientId } = await registered.json();

  const config = await client.discovery(
    new URL(base),
    clientId,
    {},
    client.PrivateKeyJwt({ key: privateKey, kid: jwk.kid }),
    { execute: [client.allowInsecureRequests] },
  );
  check('issuer', config.serverMetadata().issuer, base);
  const tokens = await client.clientCredentialsGrant(config, { scope: 'system/Patient.rs' });
  check('token type', tokens.token_type.toLowerCase(), 'bearer');
  check('scope', tokens.scope, 'system/Patient.rs');

  const read = await fetch(`${base}/Patient/c01`, { headers: { authorization: `Bearer ${tokens.access_token}` } });
  check('read status', read.status, 200);
  check('read id', (await read.json()).id, 'c01');
  const other = await fetch(`${base}/Observation`, { headers: { authorization: `Bearer ${tokens.access_token}` } });
  check('a type outside the scopes', other.status, 403);

  // The same assertion again is a replay.
  summary();
}

main().catch((error) => {
  console.log(`FAIL ${error.stack || error}`);
  process.exit(1);
});
