// A SMART standalone patient launch with the npm library fhirclient (SMART Health IT's client-js,
// its Node.js entry point), the way a server-side app would do it. The script plays three parts:
// the app (a small HTTP server on loopback that calls fhirclient's `authorize` and `ready`), the
// patient's browser (it follows the redirects, keeps Braid's flow cookie, signs in, answers the
// second factor with a code computed from the key shown at enrolment, and consents with one
// scope unticked), and the checker.
//
// The app registers itself anonymously (RFC 7591; a patient-facing public client needs no
// initial access token), then fhirclient discovers Braid from the FHIR base, sends the patient
// through authorize with PKCE S256, exchanges the code and reads the patient's record.
//
// Usage: node launch_fhirclient.mjs BASE_URL USERNAME PASSWORD PATIENT_ID OTHER_PATIENT_ID OBSERVATION_COUNT
// (the user signs in as the patient PATIENT_ID, who has OBSERVATION_COUNT Observations)
import http from 'node:http';
import crypto from 'node:crypto';
import smart from 'fhirclient';
import { check, summary } from './check.mjs';

const [base, username, password, patientId, otherPatientId, observationCount] = process.argv.slice(2);
const origin = new URL(base).origin;

// ---- The app: fhirclient behind a Node HTTP server, its state in one in-memory session. ----

const session = {};
const storage = {
  async get(key) { return session[key]; },
  async set(key, value) { session[key] = value; return value; },
  async unset(key) {
    const had = Object.prototype.hasOwnProperty.call(session, key);
    delete session[key];
    return had;
  },
};
let clientId;
let resolveClient;
let rejectClient;
const appClient = new Promise((resolve, reject) => { resolveClient = resolve; rejectClient = reject; });

const app = http.createServer((req, res) => {
  const path = new URL(req.url, 'http://app').pathname;
  if (path === '/launch') {
    smart(req, res, storage)
      .authorize({
        clientId,
        iss: base,
        redirectUri: '/callback',
        // offline_access is asked for and then unticked by the patient at consent.
        scope: 'launch/patient openid fhirUser offline_access patient/*.rs',
        pkceMode: 'required',
      })
      .catch((error) => { res.writeHead(500); res.end(String(error)); rejectClient(error); });
  } else if (path === '/callback') {
    smart(req, res, storage)
      .ready()
      .then((client) => { res.writeHead(200); res.end('ready'); resolveClient(client); })
      .catch((error) => { res.writeHead(500); res.end(String(error)); rejectClient(error); });
  } else {
    res.writeHead(404);
    res.end();
  }
});
await new Promise((resolve) => app.listen(0, '127.0.0.1', resolve));
const appOrigin = `http://127.0.0.1:${app.address().port}`;

// ---- The browser: one request at a time, redirects looked at, Braid's flow cookie kept. ----

let flowCookie = null;

async function visit(url, form) {
  const headers = {};
  if (flowCookie && url.startsWith(origin)) headers.cookie = flowCookie;
  const init = { redirect: 'manual', headers };
  if (form) {
    init.method = 'POST';
    headers['content-type'] = 'application/x-www-form-urlencoded';
    init.body = form.toString();
  }
  const response = await fetch(url, init);
  for (const line of response.headers.getSetCookie()) {
    if (line.startsWith('braid_flow=')) flowCookie = line.split(';')[0];
  }
  const location = response.headers.get('location');
  return {
    status: response.status,
    location: location && new URL(location, url).href,
    html: await response.text(),
  };
}

function attribute(html, marker) {
  const start = html.indexOf(marker);
  if (start < 0) throw new Error(`no ${marker} in the page:\n${html}`);
  return html.slice(start + marker.length).split('"')[0];
}

function unescapeHtml(text) {
  return text.replace(/&#39;/g, "'").replace(/&quot;/g, '"').replace(/&lt;/g, '<').replace(/&gt;/g, '>')
    .replace(/&amp;/g, '&');
}

function base32Decode(text) {
  const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ234567';
  let [buffer, bits] = [0, 0];
  const out = [];
  for (const c of text.replace(/=+$/, '')) {
    buffer = ((buffer << 5) | alphabet.indexOf(c)) & 0xffff;
    bits += 5;
    if (bits >= 8) {
      bits -= 8;
      out.push((buffer >> bits) & 0xff);
    }
  }
  return Buffer.from(out);
}

// RFC 6238 with the parameters of the enrolment's otpauth URI: SHA-1, 6 digits, 30 s steps.
function totp(secret, when = Date.now()) {
  const counter = Buffer.alloc(8);
  counter.writeBigUInt64BE(BigInt(Math.floor(when / 1000 / 30)));
  const mac = crypto.createHmac('sha1', secret).update(counter).digest();
  const offset = mac[mac.length - 1] & 0x0f;
  const binary = mac.readUInt32BE(offset) & 0x7fffffff;
  return String(binary % 1_000_000).padStart(6, '0');
}

async function main() {
  // The app registers itself: a public client (PKCE, no secret) for its redirect URI.
  const registered = await fetch(`${origin}/auth/register`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({
      client_name: 'fhirclient standalone app',
      redirect_uris: [`${appOrigin}/callback`],
      grant_types: ['authorization_code', 'refresh_token'],
      response_types: ['code'],
      token_endpoint_auth_method: 'none',
      scope: 'launch/patient openid fhirUser offline_access patient/*.rs',
    }),
  });
  check('anonymous registration of a patient-facing app', registered.status, 201);
  clientId = (await registered.json()).client_id;

  // The patient opens the app; fhirclient sends the browser to Braid's authorize endpoint.
  const launch = await visit(`${appOrigin}/launch`);
  check('the app redirects to authorize', launch.status, 302);
  const authorizeUrl = new URL(launch.location);
  check('authorize endpoint from discovery', authorizeUrl.origin + authorizeUrl.pathname, `${origin}/auth/authorize`);
  check('PKCE method', authorizeUrl.searchParams.get('code_challenge_method'), 'S256');
  check('aud', authorizeUrl.searchParams.get('aud'), base);

  const toLogin = await visit(launch.location);
  check('authorize asks for a login', [toLogin.status, toLogin.location], [302, `${origin}/auth/login`]);
  const loginPage = await visit(toLogin.location);
  const csrf = attribute(loginPage.html, 'name="csrf" value="');

  const wrong = await visit(`${origin}/auth/login`, new URLSearchParams({ csrf, username, password: `${password}x` }));
  check('a wrong password is refused on the page', [wrong.status, wrong.location], [401, null]);

  const signedIn = await visit(`${origin}/auth/login`, new URLSearchParams({ csrf, username, password }));
  check('the password leads to the second factor', [signedIn.status, signedIn.location], [302, `${origin}/auth/totp`]);
  const enrolment = await visit(signedIn.location);
  check('enrolment shows a QR code', enrolment.html.includes('<svg'), true);
  const secret = base32Decode(attribute(enrolment.html, 'data-secret="'));

  const badCode = String((Number(totp(secret)) + 1) % 1_000_000).padStart(6, '0');
  const refused = await visit(`${origin}/auth/totp`, new URLSearchParams({ csrf, code: badCode }));
  check('a wrong code is refused on the page', [refused.status, refused.location], [401, null]);
  const passedFactor = await visit(`${origin}/auth/totp`, new URLSearchParams({ csrf, code: totp(secret) }));
  check('the code leads to consent', [passedFactor.status, passedFactor.location], [302, `${origin}/auth/consent`]);

  const consentPage = await visit(passedFactor.location);
  const offered = consentPage.html.split('name="scope" value="').slice(1).map((rest) => unescapeHtml(rest.split('"')[0]));
  check('every asked scope is offered', [...offered].sort(),
    ['fhirUser', 'launch/patient', 'offline_access', 'openid', 'patient/*.rs']);
  const consentCsrf = attribute(consentPage.html, 'name="csrf" value="');
  const decision = new URLSearchParams({ csrf: consentCsrf, decision: 'allow' });
  for (const scope of offered.filter((s) => s !== 'offline_access')) decision.append('scope', scope);
  const consented = await visit(`${origin}/auth/consent`, decision);
  check('consent redirects to the app', consented.status, 302);
  const callback = new URL(consented.location);
  check('the redirect goes to the registered URI', callback.origin + callback.pathname, `${appOrigin}/callback`);

  // The app's callback: fhirclient checks the state and exchanges the code (with the verifier).
  const done = await visit(consented.location);
  check('the app completes the launch', [done.status, done.html], [200, 'ready']);
  const client = await appClient;

  check('patient in the launch context', client.patient.id, patientId);
  check('fhirUser', client.user.fhirUser, `Patient/${patientId}`);
  const granted = client.state.tokenResponse.scope.split(' ').sort();
  check('the unticked scope is not granted', granted, ['fhirUser', 'launch/patient', 'openid', 'patient/*.rs']);
  check('no refresh token without offline_access', client.state.tokenResponse.refresh_token, undefined);
  check('need_patient_banner', client.state.tokenResponse.need_patient_banner, true);
  const idToken = client.getIdToken();
  check('the id_token names the user', idToken && idToken.fhirUser, `${base}/Patient/${patientId}`);

  const patient = await client.patient.read();
  check('the patient reads their record', [patient.resourceType, patient.id], ['Patient', patientId]);
  const user = await client.user.read();
  check('fhirUser resolves', user.id, patientId);
  const observations = await client.patient.request('Observation', { flat: true });
  check('the patient reads their Observations', observations.length, Number(observationCount));
  check('every Observation is theirs',
    observations.every((o) => o.subject.reference === `Patient/${patientId}`), true);
  const all = await client.request('Observation', { flat: true, pageLimit: 0 });
  check('an unfiltered search shows only their Observations', all.map((o) => o.id).sort(), observations.map((o) => o.id).sort());
  let otherStatus = null;
  try {
    await client.request(`Patient/${otherPatientId}`);
  } catch (error) {
    otherStatus = error.status ?? error.statusCode;
  }
  check("another patient's record is not found", otherStatus, 404);
  let writeStatus = null;
  try {
    await client.create({ resourceType: 'Observation', status: 'final', code: { text: 'x' },
      subject: { reference: `Patient/${patientId}` } });
  } catch (error) {
    writeStatus = error.status ?? error.statusCode;
  }
  check('a read-only grant cannot write', writeStatus, 403);
  summary();
}

main()
  .catch((error) => {
    console.log(`FAIL ${error.stack || error}`);
    process.exitCode = 1;
  })
  .finally(() => app.close());
