// Braid's patient portal: a SMART app that signs in through Braid's authorization server as the
// public client `braid-portal` (standalone launch, PKCE S256) and reads the person's unified
// record through the FHIR API with their token, as any third-party app would.
//
// What is kept where: the access token lives in sessionStorage (gone when the tab closes) and
// in memory; the PKCE verifier and state only between leaving for the sign-in and coming back.
// Nothing else is stored, and the authorization code is removed from the address bar at once.
// Every text from the record reaches the page through textContent, never as HTML.
'use strict';

(() => {
  const ORIGIN = location.origin;
  const BASE = ORIGIN + '/fhir';
  const CLIENT_ID = 'braid-portal';
  const REDIRECT_URI = ORIGIN + '/portal/';
  const SCOPE = 'launch/patient openid fhirUser patient/*.rs patient/QuestionnaireResponse.c patient/Observation.cu patient/Device.cu';
  const SESSION_KEY = 'braid.portal.session';
  const PENDING_KEY = 'braid.portal.pending';
  const SOURCE_PREFIX = 'urn:braid:source:';
  const REPORTED_BY = 'urn:braid:reported-by';
  const CONFLICTS_WITH = 'urn:braid:conflicts-with';
  const REMINDER_CATEGORY = 'http://terminology.hl7.org/CodeSystem/communication-category|reminder';
  const REMINDER_SYSTEM = 'urn:braid:reminder';
  const PAGE_SIZE = 20;

  // ---- Small helpers ------------------------------------------------------------------------

  /** An element with attributes and children (strings become text nodes, never HTML). */
  function el(tag, attributes, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attributes || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (name.startsWith('on')) node.addEventListener(name.slice(2), value);
      else node.setAttribute(name, value === true ? '' : value);
    }
    for (const child of children.flat()) {
      if (child === undefined || child === null || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  const main = () => document.getElementById('main');

  /** Replaces the page's content, moves focus to it and tells screen readers. */
  function show(title, ...content) {
    document.title = title + ' · Braid';
    const target = main();
    target.replaceChildren(el('h1', {}, title), ...content.flat().filter(Boolean));
    target.focus({ preventScroll: true });
    document.getElementById('announce').textContent = title;
  }

  /** Which navigation is current: a page that finishes loading after the person has moved
   *  on shows nothing. */
  let navigation = 0;

  function showFor(ticket, title, ...content) {
    if (ticket === navigation) show(title, ...content);
  }

  function base64url(bytes) {
    let text = '';
    for (const byte of bytes) text += String.fromCharCode(byte);
    return btoa(text).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
  }

  function randomText(bytes) {
    return base64url(crypto.getRandomValues(new Uint8Array(bytes)));
  }

  /** SHA-256 of an ASCII text: WebCrypto where the page is a secure context, else in script. */
  async function sha256(text) {
    const data = new TextEncoder().encode(text);
    if (window.crypto && crypto.subtle) return new Uint8Array(await crypto.subtle.digest('SHA-256', data));
    return sha256Script(data);
  }

  // FIPS 180-4 SHA-256, for pages served over plain HTTP on a name other than localhost, where
  // browsers withhold crypto.subtle.
  function sha256Script(data) {
    const k = new Uint32Array([
      0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
      0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
      0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
      0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
      0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
      0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
      0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
      0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2]);
    const h = new Uint32Array([0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19]);
    const length = data.length;
    const padded = new Uint8Array(Math.ceil((length + 9) / 64) * 64);
    padded.set(data);
    padded[length] = 0x80;
    const view = new DataView(padded.buffer);
    view.setUint32(padded.length - 4, length * 8);
    view.setUint32(padded.length - 8, Math.floor(length / 0x20000000));
    const w = new Uint32Array(64);
    const rotr = (x, n) => (x >>> n) | (x << (32 - n));
    for (let offset = 0; offset < padded.length; offset += 64) {
      for (let i = 0; i < 16; i++) w[i] = view.getUint32(offset + i * 4);
      for (let i = 16; i < 64; i++) {
        const s0 = rotr(w[i - 15], 7) ^ rotr(w[i - 15], 18) ^ (w[i - 15] >>> 3);
        const s1 = rotr(w[i - 2], 17) ^ rotr(w[i - 2], 19) ^ (w[i - 2] >>> 10);
        w[i] = (w[i - 16] + s0 + w[i - 7] + s1) | 0;
      }
      let [a, b, c, d, e, f, g, hh] = h;
      for (let i = 0; i < 64; i++) {
        const t1 = (hh + (rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25)) + ((e & f) ^ (~e & g)) + k[i] + w[i]) | 0;
        const t2 = ((rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22)) + ((a & b) ^ (a & c) ^ (b & c))) | 0;
        hh = g; g = f; f = e; e = (d + t1) | 0; d = c; c = b; b = a; a = (t1 + t2) | 0;
      }
      h[0] += a; h[1] += b; h[2] += c; h[3] += d; h[4] += e; h[5] += f; h[6] += g; h[7] += hh;
    }
    const out = new Uint8Array(32);
    const outView = new DataView(out.buffer);
    h.forEach((word, i) => outView.setUint32(i * 4, word));
    return out;
  }

  // ---- The session --------------------------------------------------------------------------

  let session = null;
  let expiryTimer = null;

  function loadSession() {
    try {
      const stored = JSON.parse(sessionStorage.getItem(SESSION_KEY) || 'null');
      if (stored && stored.token && stored.patient && stored.expires > Date.now()) return stored;
    } catch (_) { /* a damaged entry is no session */ }
    sessionStorage.removeItem(SESSION_KEY);
    return null;
  }

  function startSession(value) {
    session = value;
    sessionStorage.setItem(SESSION_KEY, JSON.stringify(value));
    clearTimeout(expiryTimer);
    expiryTimer = setTimeout(() => endSession('Your session has ended. Sign in again to go on.'),
      Math.max(0, value.expires - Date.now()));
    document.getElementById('nav').hidden = false;
    document.getElementById('sign-out').hidden = false;
  }

  function endSession(message) {
    session = null;
    clearTimeout(expiryTimer);
    sessionStorage.removeItem(SESSION_KEY);
    document.getElementById('nav').hidden = true;
    document.getElementById('sign-out').hidden = true;
    signInPage(message);
  }

  async function signIn() {
    const verifier = randomText(32);
    const state = randomText(16);
    sessionStorage.setItem(PENDING_KEY, JSON.stringify({ verifier, state }));
    const challenge = base64url(await sha256(verifier));
    const query = new URLSearchParams({
      response_type: 'code', client_id: CLIENT_ID, redirect_uri: REDIRECT_URI, scope: SCOPE,
      state, aud: BASE, code_challenge: challenge, code_challenge_method: 'S256',
    });
    location.assign(ORIGIN + '/auth/authorize?' + query.toString());
  }

  /** Back from the sign-in: trades the code for a token. */
  async function finishSignIn(params) {
    // The code must not stay in the address bar, the history or a bookmark.
    history.replaceState(null, '', REDIRECT_URI + '#/home');
    const pending = JSON.parse(sessionStorage.getItem(PENDING_KEY) || 'null');
    sessionStorage.removeItem(PENDING_KEY);
    if (params.get('error')) {
      return signInPage('Signing in did not finish: ' + (params.get('error_description') || params.get('error')));
    }
    if (!pending || pending.state !== params.get('state')) {
      return signInPage('That sign-in was not started here, or it was started too long ago. Please sign in again.');
    }
    const form = new URLSearchParams({
      grant_type: 'authorization_code', code: params.get('code'), redirect_uri: REDIRECT_URI,
      client_id: CLIENT_ID, code_verifier: pending.verifier,
    });
    const reply = await fetch(ORIGIN + '/auth/token', { method: 'POST', body: form });
    const body = await reply.json().catch(() => ({}));
    if (!reply.ok || !body.access_token) {
      return signInPage('Signing in failed: ' + (body.error_description || body.error || reply.status));
    }
    if (!body.patient) {
      return signInPage('This account is not a patient\'s: the portal shows a patient\'s own record.');
    }
    startSession({
      token: body.access_token,
      patient: body.patient,
      scope: body.scope || '',
      expires: Date.now() + 1000 * (body.expires_in || 3600),
    });
    route();
  }

  async function signOut() {
    const token = session && session.token;
    endSession('You have signed out.');
    if (token) {
      const form = new URLSearchParams({ token, client_id: CLIENT_ID });
      await fetch(ORIGIN + '/auth/revoke', { method: 'POST', body: form }).catch(() => {});
    }
  }

  function signInPage(message) {
    document.getElementById('nav').hidden = true;
    show('Your health record',
      message ? el('p', { class: 'notice', role: 'status' }, message) : null,
      el('div', { class: 'card centre' },
        el('p', {}, 'See your records from every provider in one place: visits, conditions, results, '
          + 'appointments and measurements, each marked with where it came from.'),
        el('button', { type: 'button', id: 'sign-in', onclick: () => signIn().catch(fail) }, 'Sign in')));
  }

  // ---- Reading the record -------------------------------------------------------------------

  class SessionEnded extends Error {}

  /**
   * Sends a request to this server with the session's token and returns the JSON answer. A 401
   * ends the session (SessionEnded); another error becomes an Error with the server's words
   * (an OperationOutcome's first issue, or an OAuth error's description).
   */
  async function call(url, options = {}) {
    if (!session) throw new SessionEnded();
    const headers = { Authorization: 'Bearer ' + session.token, Accept: 'application/fhir+json', ...(options.headers || {}) };
    const reply = await fetch(url, { ...options, headers });
    if (reply.status === 401) {
      endSession('Your session has ended. Sign in again to go on.');
      throw new SessionEnded();
    }
    const body = reply.status === 204 ? {} : await reply.json().catch(() => null);
    if (!reply.ok) {
      const issue = body && body.issue && body.issue[0];
      const said = issue ? issue.diagnostics || (issue.details && issue.details.text) : body && body.error_description;
      throw new Error(said || 'the server answered ' + reply.status);
    }
    return body;
  }

  /** GETs a FHIR path (below the base) or a full URL on this server. */
  async function fhir(pathOrUrl) {
    const url = pathOrUrl.startsWith(BASE) ? pathOrUrl : BASE + '/' + pathOrUrl.replace(/^\//, '');
    if (!url.startsWith(BASE + '/')) throw new Error('a link outside this server was refused');
    return call(url);
  }

  const entries = (bundle) => (bundle.entry || []).filter((e) => !e.search || e.search.mode !== 'include').map((e) => e.resource);
  const nextLink = (bundle) => ((bundle.link || []).find((l) => l.relation === 'next') || {}).url || null;

  /** What Braid's vitals ingest names in meta.source, by the format it read. */
  const INGESTED_PREFIX = 'urn:braid:ingest:';
  const INGESTED = { 'apple-health': 'Apple Health', fitbit: 'Fitbit', 'open-mhealth': 'Open mHealth', rppg: 'Camera scan' };

  /** Where a resource came from: the provider (source) its meta.source names, the person's own
   *  device or export for measurements from home, else Braid itself. */
  function sourceOf(resource) {
    const uri = resource && resource.meta && resource.meta.source;
    if (uri && uri.startsWith(SOURCE_PREFIX)) return uri.slice(SOURCE_PREFIX.length);
    if (uri && uri.startsWith(INGESTED_PREFIX)) return INGESTED[uri.slice(INGESTED_PREFIX.length)] || 'Home measurement';
    return 'Braid';
  }

  /** The providers that reported a resource: every one named when two or more reported the
   *  same fact (the unified record shows it once), else its own. */
  function reportersOf(resource) {
    const named = extensions(resource, REPORTED_BY).map((e) => e.valueReference && e.valueReference.display).filter(Boolean);
    return named.length ? [...new Set(named)].sort() : [sourceOf(resource)];
  }

  function extensions(resource, url) {
    return (resource.extension || []).filter((e) => e.url === url);
  }

  function sourceBadge(resource) {
    const names = reportersOf(resource);
    return el('span', { class: 'badges' }, names.map((name) => el('span', { class: 'source', title: 'From ' + name }, name)));
  }

  function concept(codeable) {
    if (!codeable) return '';
    if (codeable.text) return codeable.text;
    const coding = (codeable.coding || []).find((c) => c.display) || (codeable.coding || [])[0];
    return coding ? (coding.display || coding.code || '') : '';
  }

  function quantity(q) {
    if (!q || q.value === undefined) return '';
    return q.value + (q.unit || q.code ? ' ' + (q.unit || q.code) : '');
  }

  function observationValue(o) {
    if (o.valueQuantity) return quantity(o.valueQuantity);
    if (o.valueCodeableConcept) return concept(o.valueCodeableConcept);
    if (typeof o.valueString === 'string') return o.valueString;
    if (o.component && o.component.length) {
      const values = o.component.map((c) => quantity(c.valueQuantity)).filter(Boolean);
      if (values.length === 2 && o.component.every((c) => c.valueQuantity && c.valueQuantity.unit === o.component[0].valueQuantity.unit)) {
        return o.component[0].valueQuantity.value + '/' + quantity(o.component[1].valueQuantity);
      }
      return values.join(', ');
    }
    return '';
  }

  function humanName(patient) {
    const name = (patient.name || []).find((n) => n.use === 'official') || (patient.name || [])[0];
    if (!name) return 'Unnamed patient';
    if (name.text) return name.text;
    return [...(name.given || []), name.family].filter(Boolean).join(' ') || 'Unnamed patient';
  }

  /** A FHIR date or dateTime as the reader's locale writes it (dates without a time stay dates). */
  function formatDate(text) {
    if (!text) return 'date unknown';
    if (/^\d{4}$/.test(text)) return text;
    if (/^\d{4}-\d{2}$/.test(text)) return new Date(text + '-01T00:00:00Z').toLocaleDateString(undefined, { year: 'numeric', month: 'long', timeZone: 'UTC' });
    if (/^\d{4}-\d{2}-\d{2}$/.test(text)) return new Date(text + 'T00:00:00Z').toLocaleDateString(undefined, { dateStyle: 'medium', timeZone: 'UTC' });
    const date = new Date(text);
    return isNaN(date) ? text : date.toLocaleString(undefined, { dateStyle: 'medium', timeStyle: 'short' });
  }

  /** A date's instant for ordering: its start (a date alone is midnight UTC; a date-time without
   *  a zone, which FHIR instants never are, is read in the browser's zone); -Infinity when absent. */
  function instant(text) {
    if (!text) return -Infinity;
    const full = /^\d{4}$/.test(text) ? text + '-01-01' : /^\d{4}-\d{2}$/.test(text) ? text + '-01' : text;
    const value = Date.parse(full);
    return isNaN(value) ? -Infinity : value;
  }

  // The kinds of record the timeline shows: how each is searched newest first (a search
  // parameter whose value is the date shown, so that merging the kinds keeps one order) and
  // how an item reads.
  const KINDS = {
    Encounter: {
      label: 'Visits', one: 'Visit', sort: 'date',
      date: (r) => r.period && r.period.start,
      text: (r) => concept((r.type || [])[0]) || concept(r.serviceType) || (r.class && (r.class.display || r.class.code)) || 'Visit',
    },
    Condition: {
      label: 'Conditions', one: 'Condition', sort: 'onset-date',
      date: (r) => r.onsetDateTime || (r.onsetPeriod && r.onsetPeriod.start),
      text: (r) => concept(r.code) || 'Condition',
    },
    Observation: {
      label: 'Results and measurements', one: 'Result', sort: 'date',
      date: (r) => r.effectiveDateTime || (r.effectivePeriod && r.effectivePeriod.start) || r.effectiveInstant,
      text: (r) => [concept(r.code) || 'Observation', observationValue(r)].filter(Boolean).join(': '),
    },
    Appointment: {
      label: 'Appointments', one: 'Appointment', sort: 'date',
      date: (r) => r.start,
      text: (r) => [r.description || concept((r.serviceType || [])[0]) || concept(r.appointmentType) || 'Appointment',
        r.status === 'cancelled' ? '(cancelled)' : ''].filter(Boolean).join(' '),
    },
    MedicationRequest: {
      label: 'Medications', one: 'Medication', sort: 'authoredon',
      date: (r) => r.authoredOn,
      text: (r) => concept(r.medicationCodeableConcept) || (r.medicationReference && r.medicationReference.display) || 'Medication',
    },
    DocumentReference: {
      label: 'Documents', one: 'Document', sort: 'date',
      date: (r) => r.date,
      text: (r) => r.description || concept(r.type) || 'Document',
    },
  };

  function itemRow(resource) {
    const kind = KINDS[resource.resourceType];
    return el('li', { 'data-type': resource.resourceType, 'data-source': reportersOf(resource).join(' '), 'data-date': kind.date(resource) || '' },
      el('span', { class: 'what' }, el('span', { class: 'kind' }, kind.one), ' ', kind.text(resource)),
      el('span', { class: 'when' }, formatDate(kind.date(resource))),
      sourceBadge(resource));
  }

  /** The providers whose records make up the person's: their own Patient's and each linked one's. */
  async function providersOf(patient) {
    const names = new Set([sourceOf(patient)]);
    const linked = (patient.link || []).map((l) => l.other && l.other.reference).filter((r) => r && r.startsWith('Patient/'));
    const read = await Promise.all(linked.map((reference) => fhir(reference).catch(() => null)));
    for (const other of read) if (other) names.add(sourceOf(other));
    if (names.size > 1) names.delete('Braid');
    return [...names].sort();
  }

  let patientCache = null;

  async function thePatient() {
    if (!patientCache || patientCache.id !== session.patient) {
      const patient = await fhir('Patient/' + encodeURIComponent(session.patient));
      patientCache = { id: session.patient, patient, providers: await providersOf(patient) };
    }
    return patientCache;
  }

  function banner({ patient, providers }) {
    return el('section', { class: 'card banner', 'aria-label': 'Patient' },
      el('span', { class: 'name' }, humanName(patient)),
      el('span', { class: 'facts' }, [patient.birthDate ? 'Born ' + formatDate(patient.birthDate) : null, patient.gender || null].filter(Boolean).join(' · ')),
      el('span', { class: 'facts' }, 'Records from ' + providers.length + (providers.length === 1 ? ' provider' : ' providers') + ':'),
      el('ul', { class: 'providers', 'aria-label': 'Providers' }, providers.map((name) => el('li', { class: 'source' }, name))));
  }

  // ---- Pages --------------------------------------------------------------------------------

  async function homePage(ticket) {
    const person = await thePatient();
    const id = encodeURIComponent(session.patient);
    const now = new Date().toISOString().replace(/\.\d{3}Z$/, 'Z');
    const sections = [
      ['Upcoming appointments', `Appointment?patient=${id}&date=ge${now}&_sort=date&_count=5`],
      ['Latest results', `Observation?patient=${id}&_sort=-date&_count=5`],
      ['Conditions', `Condition?patient=${id}&_sort=-onset-date&_count=5`],
      ['Recent visits', `Encounter?patient=${id}&_sort=-date&_count=5`],
      ['Medications', `MedicationRequest?patient=${id}&_sort=-authoredon&_count=5`],
    ];
    const bundles = await Promise.all(sections.map(([, path]) => fhir(path).catch((error) => error)));
    const cards = sections.map(([title], i) => {
      const bundle = bundles[i];
      let body;
      if (bundle instanceof SessionEnded) throw bundle;
      if (bundle instanceof Error) body = el('p', { class: 'error' }, 'Could not load: ' + bundle.message);
      else if (!entries(bundle).length) body = el('p', { class: 'status' }, 'Nothing recorded.');
      else body = el('ul', { class: 'items' }, entries(bundle).map(itemRow));
      return el('section', { class: 'card', 'aria-labelledby': 'card-' + i }, el('h2', { id: 'card-' + i }, title), body);
    });
    showFor(ticket, 'Your record at a glance', banner(person),
      el('div', { class: 'grid' }, cards),
      el('p', {}, el('a', { href: '#/timeline' }, 'See everything, newest first, on the timeline')));
  }

  /**
   * The timeline: each kind of record is searched newest first, a page at a time, and the
   * heads of those searches are merged, so that a page of the timeline costs a page of each
   * kind at most, whatever the size of the record.
   */
  function timelineStreams(types, provider) {
    const id = encodeURIComponent(session.patient);
    return types.map((type) => ({
      type,
      url: `${type}?patient=${id}&_sort=-${KINDS[type].sort}&_count=${PAGE_SIZE}`
        + (provider ? '&_source=' + encodeURIComponent(SOURCE_PREFIX + provider) : ''),
      buffer: [],
      done: false,
    }));
  }

  async function nextItems(streams, count) {
    const out = [];
    while (out.length < count) {
      try {
        await Promise.all(streams.filter((s) => !s.buffer.length && !s.done).map(async (s) => {
          const bundle = await fhir(s.url);
          s.buffer = entries(bundle).filter((r) => r && r.resourceType === s.type);
          s.url = nextLink(bundle);
          s.done = !s.url;
        }));
      } catch (error) {
        // What was merged so far is shown; "Show older" tries the failed page again.
        if (out.length) return { items: out, more: true, error };
        throw error;
      }
      const live = streams.filter((s) => s.buffer.length);
      if (!live.length) break;
      let newest = live[0];
      for (const s of live) {
        if (instant(KINDS[s.type].date(s.buffer[0])) > instant(KINDS[newest.type].date(newest.buffer[0]))) newest = s;
      }
      out.push(newest.buffer.shift());
    }
    const more = streams.some((s) => s.buffer.length || !s.done);
    return { items: out, more };
  }

  async function timelinePage(ticket) {
    const person = await thePatient();
    const params = new URLSearchParams(location.hash.split('?')[1] || '');
    const chosen = (params.get('types') || Object.keys(KINDS).join(',')).split(',').filter((t) => KINDS[t]);
    const provider = person.providers.includes(params.get('provider')) ? params.get('provider') : '';
    const types = chosen.length ? chosen : Object.keys(KINDS);

    const typeBoxes = Object.entries(KINDS).map(([type, kind]) =>
      el('label', {}, el('input', { type: 'checkbox', name: 'type', value: type, checked: types.includes(type) }), ' ', kind.label));
    const providerSelect = el('select', { id: 'provider', name: 'provider' },
      el('option', { value: '' }, 'All providers'),
      person.providers.map((name) => el('option', { value: name, selected: name === provider }, name)));
    const form = el('form', { class: 'filters card', 'aria-label': 'Filter the timeline' },
      el('fieldset', {}, el('legend', {}, 'Show'), typeBoxes),
      el('div', {}, el('label', { for: 'provider' }, 'Provider '), providerSelect),
      el('button', { type: 'submit' }, 'Apply'));
    form.addEventListener('submit', (event) => {
      event.preventDefault();
      const picked = [...form.querySelectorAll('input[name=type]:checked')].map((box) => box.value);
      const query = new URLSearchParams();
      if (picked.length && picked.length < Object.keys(KINDS).length) query.set('types', picked.join(','));
      if (providerSelect.value) query.set('provider', providerSelect.value);
      location.hash = '#/timeline' + (query.toString() ? '?' + query.toString() : '');
    });

    const list = el('ul', { class: 'items', id: 'timeline', 'aria-label': 'Timeline' });
    const status = el('p', { class: 'status', role: 'status' }, 'Loading…');
    const more = el('button', { type: 'button', class: 'quiet more', hidden: true }, 'Show older');
    const streams = timelineStreams(types, provider);
    async function load() {
      more.disabled = true;
      status.textContent = 'Loading…';
      try {
        const page = await nextItems(streams, PAGE_SIZE);
        list.append(...page.items.map(itemRow));
        if (page.error) throw page.error;
        more.hidden = !page.more;
        const shown = list.children.length;
        status.textContent = shown ? `Showing ${shown} item${shown === 1 ? '' : 's'}${page.more ? '' : ': the whole record'}.` : 'Nothing recorded.';
      } catch (error) {
        if (error instanceof SessionEnded) return;
        status.textContent = '';
        status.className = 'error';
        status.textContent = 'Could not load the timeline: ' + error.message;
      } finally {
        more.disabled = false;
      }
    }
    more.addEventListener('click', load);
    showFor(ticket, 'Timeline', banner(person), form, el('section', { class: 'card' }, list, status, more));
    await load();
  }

  /** Every page of a search, up to `max` resources. */
  async function all(path, max) {
    const out = [];
    let url = path;
    while (url && out.length < max) {
      const bundle = await fhir(url);
      out.push(...entries(bundle));
      url = nextLink(bundle);
    }
    return out.slice(0, max);
  }

  /** A "Show older" button that appends the search's next pages to `list`, a row per resource;
   *  hidden once there is no next page. `first` is the page already shown. */
  function olderButton(first, list, row) {
    let older = nextLink(first);
    const more = el('button', { type: 'button', class: 'quiet more', hidden: !older }, 'Show older');
    more.addEventListener('click', async () => {
      more.disabled = true;
      try {
        const page = await fhir(older);
        list.append(...entries(page).map(row));
        older = nextLink(page);
        more.hidden = !older;
      } catch (error) { fail(error); } finally { more.disabled = false; }
    });
    return more;
  }

  /** What a reminder says of itself, for the appointment it is about. */
  function reminderLine(reminder) {
    const identifier = (reminder.identifier || []).find((i) => i.system === REMINDER_SYSTEM);
    const lead = identifier ? identifier.value.split('|')[2] : '';
    const before = lead ? lead.replace(/d$/, ' days').replace(/h$/, ' hours').replace(/m$/, ' minutes').replace(/^1 (day|hour|minute)s/, '1 $1') + ' before' : '';
    const emailed = (reminder.medium || []).some((m) => (m.coding || []).some((c) => c.code === 'EMAILWRIT'));
    let text;
    switch (reminder.status) {
      case 'completed': text = `Reminder ${before} sent ${formatDate(reminder.sent)}${emailed ? ' by email' : ''}`; break;
      case 'preparation': text = `Reminder ${before}: scheduled`; break;
      case 'in-progress': text = `Reminder ${before}: being sent`; break;
      case 'not-done': text = `Reminder ${before} withdrawn` + (reminder.statusReason && reminder.statusReason.text ? ': ' + reminder.statusReason.text : ''); break;
      default: text = `Reminder ${before}: ${reminder.status}`;
    }
    return el('li', { class: 'reminder', 'data-status': reminder.status, 'data-lead': lead }, text,
      (reminder.note || []).map((n) => el('span', { class: 'note' }, ' ' + n.text)));
  }

  function appointmentCard(appointment, reminders) {
    const conflicts = extensions(appointment, CONFLICTS_WITH).map((e) => (e.valueReference && e.valueReference.display) || 'another provider');
    const mine = reminders.filter((r) => (r.about || []).some((a) => a.reference === 'Appointment/' + appointment.id));
    // Longest lead first (3 days, then 1 day, then 2 hours).
    const leadSeconds = (r) => {
      const identifier = (r.identifier || []).find((i) => i.system === REMINDER_SYSTEM);
      const lead = identifier ? identifier.value.split('|')[2] || '' : '';
      return (parseInt(lead, 10) || 0) * ({ d: 86400, h: 3600, m: 60 }[lead.slice(-1)] || 0);
    };
    mine.sort((a, b) => leadSeconds(b) - leadSeconds(a));
    const status = appointment.status === 'booked' ? null : appointment.status;
    return el('li', { class: 'appointment', 'data-id': appointment.id, 'data-source': sourceOf(appointment), 'data-date': appointment.start || '' },
      el('span', { class: 'what' }, KINDS.Appointment.text(appointment)),
      el('span', { class: 'when' }, formatDate(appointment.start)),
      sourceBadge(appointment),
      status ? el('span', { class: 'kind' }, status) : null,
      conflicts.length ? el('p', { class: 'conflict', role: 'note' },
        'Overlaps an appointment from ' + [...new Set(conflicts)].join(' and ') + '. Check with both providers.') : null,
      mine.length ? el('ul', { class: 'reminders', 'aria-label': 'Reminders' }, mine.map(reminderLine)) : null);
  }

  async function appointmentsPage(ticket) {
    const person = await thePatient();
    const id = encodeURIComponent(session.patient);
    const now = new Date().toISOString().replace(/\.\d{3}Z$/, 'Z');
    const [upcoming, past, reminders] = await Promise.all([
      all(`Appointment?patient=${id}&date=ge${now}&_sort=date&_count=50`, 200),
      fhir(`Appointment?patient=${id}&date=lt${now}&_sort=-date&_count=20`),
      all(`Communication?patient=${id}&category=${encodeURIComponent(REMINDER_CATEGORY)}&_count=100`, 500),
    ]);
    const pastList = el('ul', { class: 'items', id: 'past' }, entries(past).map((a) => appointmentCard(a, reminders)));
    const more = olderButton(past, pastList, (a) => appointmentCard(a, reminders));
    showFor(ticket, 'Appointments', banner(person),
      el('section', { class: 'card', 'aria-labelledby': 'upcoming-title' },
        el('h2', { id: 'upcoming-title' }, 'Upcoming'),
        upcoming.length ? el('ul', { class: 'items', id: 'upcoming' }, upcoming.map((a) => appointmentCard(a, reminders)))
          : el('p', { class: 'status' }, 'No upcoming appointments.')),
      el('section', { class: 'card', 'aria-labelledby': 'past-title' },
        el('h2', { id: 'past-title' }, 'Past'),
        entries(past).length ? pastList : el('p', { class: 'status' }, 'No past appointments.'), more));
  }

  // ---- Lab results ----------------------------------------------------------------------------

  const LOINC = 'http://loinc.org';
  let labExplanations = null;

  /** The curated explanations of common lab tests (served with the portal), by LOINC code. */
  async function explanations() {
    if (!labExplanations) {
      const reply = await fetch('labs.json');
      labExplanations = reply.ok ? (await reply.json()).tests || {} : {};
    }
    return labExplanations;
  }

  function loincOf(resource) {
    const coding = ((resource.code || {}).coding || []).find((c) => c.system === LOINC && c.code);
    return coding ? coding.code : null;
  }

  function numericValue(o) {
    return o.valueQuantity && typeof o.valueQuantity.value === 'number' ? o.valueQuantity.value : null;
  }

  function rangeOf(o) {
    const range = (o.referenceRange || [])[0];
    if (!range) return null;
    const low = range.low && typeof range.low.value === 'number' ? range.low.value : null;
    const high = range.high && typeof range.high.value === 'number' ? range.high.value : null;
    const unit = (range.low && (range.low.unit || range.low.code)) || (range.high && (range.high.unit || range.high.code)) || '';
    let text = range.text || '';
    if (!text && low !== null && high !== null) text = `${low}–${high} ${unit}`;
    else if (!text && low !== null) text = `at least ${low} ${unit}`;
    else if (!text && high !== null) text = `up to ${high} ${unit}`;
    return { low, high, text: text.trim() };
  }

  const INTERPRETATIONS = {
    H: 'High', HH: 'Critically high', HU: 'Very high', L: 'Low', LL: 'Critically low', LU: 'Very low',
    N: 'Normal', A: 'Abnormal', AA: 'Critically abnormal', '>': 'Above the measurable range', '<': 'Below the measurable range',
  };

  /** The lab's own interpretation, or one computed from the reference range when it sent none. */
  function interpretationOf(o) {
    const coded = (o.interpretation || []).flatMap((i) => i.coding || []).find((c) => c.code);
    if (coded) {
      // v3 ObservationInterpretation: H*, L* and the range limits have a direction; N, NEG
      // (negative), ND (not detected) and S (susceptible) are normal; the others (POS, A, R,
      // IND...) are shown as flagged without a direction.
      const code = coded.code;
      const direction = /^(H|>)/.test(code) ? 'high' : /^(L|<)/.test(code) ? 'low'
        : ['N', 'NEG', 'ND', 'S', 'NR'].includes(code) ? 'normal' : 'abnormal';
      return { label: INTERPRETATIONS[coded.code] || coded.display || coded.code, direction, computed: false };
    }
    const value = numericValue(o);
    const range = rangeOf(o);
    if (value === null || !range || (range.low === null && range.high === null)) return null;
    if (range.low !== null && value < range.low) return { label: 'Low', direction: 'low', computed: true };
    if (range.high !== null && value > range.high) return { label: 'High', direction: 'high', computed: true };
    return { label: 'Normal', direction: 'normal', computed: true };
  }

  function valueText(o) {
    return observationValue(o) || (o.dataAbsentReason ? concept(o.dataAbsentReason) : 'no value');
  }

  function labCard(results, info, index) {
    const latest = results[0];
    const interpretation = interpretationOf(latest);
    const range = rangeOf(latest);
    const name = concept(latest.code) || (info && info.name) || 'Lab test';
    const earlier = results.slice(1);
    const titleId = 'lab-' + index;
    const explanation = info ? el('details', { class: 'explain' },
      el('summary', {}, 'What this test means'),
      el('p', {}, info.measures),
      interpretation && interpretation.direction === 'low' ? null : el('p', {}, el('strong', {}, 'High: '), info.high),
      interpretation && interpretation.direction === 'high' ? null : el('p', {}, el('strong', {}, 'Low: '), info.low),
      el('p', {}, el('a', { href: info.learnMore, rel: 'noopener noreferrer', target: '_blank' }, 'Learn more about this test at MedlinePlus'),
        ' (opens a new tab)')) : null;
    return el('section', { class: 'card lab', 'aria-labelledby': titleId, 'data-code': loincOf(latest) || '' },
      el('h2', { id: titleId }, name),
      el('p', { class: 'lab-value' },
        el('span', { class: 'value' }, valueText(latest)), ' ',
        interpretation ? el('span', { class: 'flag flag-' + interpretation.direction, 'data-computed': String(interpretation.computed) },
          interpretation.label + (interpretation.computed ? ' (from the reference range)' : '')) : null),
      el('p', { class: 'facts' }, formatDate(KINDS.Observation.date(latest)), ' ', sourceBadge(latest)),
      range && range.text ? el('p', { class: 'range' }, 'Reference range: ' + range.text) : null,
      earlier.length ? el('div', { class: 'trend' },
        el('h3', {}, 'Earlier results'),
        sparkline(results.slice().reverse(), name),
        el('ul', { class: 'earlier' }, earlier.map((o) =>
          el('li', { 'data-date': KINDS.Observation.date(o) || '' }, valueText(o), ' · ', formatDate(KINDS.Observation.date(o)), ' ', sourceBadge(o))))) : null,
      explanation);
  }

  /** A small line of a test's numeric results, oldest first (the list beside it has the values). */
  function sparkline(results, name) {
    const points = results.map((o) => [instant(KINDS.Observation.date(o)), numericValue(o)]).filter(([t, v]) => isFinite(t) && v !== null);
    if (points.length < 2) return null;
    const [w, h, pad] = [160, 40, 4];
    const ts = points.map((p) => p[0]);
    const vs = points.map((p) => p[1]);
    const [t0, t1, v0, v1] = [Math.min(...ts), Math.max(...ts), Math.min(...vs), Math.max(...vs)];
    const x = (t) => pad + (t1 === t0 ? (w - 2 * pad) / 2 : (t - t0) / (t1 - t0) * (w - 2 * pad));
    const y = (v) => h - pad - (v1 === v0 ? (h - 2 * pad) / 2 : (v - v0) / (v1 - v0) * (h - 2 * pad));
    const svg = svgEl('svg', { viewBox: `0 0 ${w} ${h}`, class: 'sparkline', role: 'img', 'aria-label': `Trend of ${name}: ${vs.join(', ')}` });
    svg.append(svgEl('polyline', { points: points.map(([t, v]) => `${x(t).toFixed(1)},${y(v).toFixed(1)}`).join(' '), fill: 'none', stroke: 'currentColor', 'stroke-width': 2 }));
    return svg;
  }

  function svgEl(tag, attributes, ...children) {
    const node = document.createElementNS('http://www.w3.org/2000/svg', tag);
    for (const [name, value] of Object.entries(attributes || {})) node.setAttribute(name, value);
    for (const child of children) node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    return node;
  }

  async function labsPage(ticket) {
    const person = await thePatient();
    const id = encodeURIComponent(session.patient);
    const [results, info] = await Promise.all([
      all(`Observation?patient=${id}&category=laboratory&_sort=-date&_count=100`, 300),
      explanations(),
    ]);
    // Results of one test together, newest first (the search's order).
    const groups = new Map();
    for (const o of results) {
      const key = loincOf(o) || concept(o.code) || o.id;
      if (!groups.has(key)) groups.set(key, []);
      groups.get(key).push(o);
    }
    const cards = [...groups.entries()].map(([key, group], i) => labCard(group, info[key], i));
    showFor(ticket, 'Lab results', banner(person),
      cards.length ? el('div', { class: 'labs' }, cards) : el('p', { class: 'status' }, 'No lab results yet.'),
      el('p', { class: 'facts' }, 'Explanations are general information, not advice about your own results: your clinician can tell you what they mean for you.'));
  }

  // ---- Vital signs ------------------------------------------------------------------------------

  // Each chart: its LOINC codes, its unit (values in other units are converted), and the range
  // usually called normal for adults at rest (shaded; none for weight).
  const VITALS = [
    { key: 'heart-rate', title: 'Heart rate', codes: ['8867-4'], unit: 'beats/min', series: [['Heart rate', null, [60, 100]]] },
    { key: 'blood-pressure', title: 'Blood pressure', codes: ['85354-9'], unit: 'mmHg',
      series: [['Systolic', '8480-6', [90, 120]], ['Diastolic', '8462-4', [60, 80]]] },
    { key: 'weight', title: 'Weight', codes: ['29463-7'], unit: 'kg', series: [['Weight', null, null]] },
    { key: 'oxygen', title: 'Oxygen saturation', codes: ['59408-5', '2708-6'], unit: '%', series: [['SpO2', null, [95, 100]]] },
    { key: 'breathing', title: 'Breathing rate', codes: ['9279-1'], unit: 'breaths/min', series: [['Breathing rate', null, [12, 20]]] },
    { key: 'temperature', title: 'Body temperature', codes: ['8310-5'], unit: '°C', series: [['Temperature', null, [36.1, 37.2]]] },
  ];
  const RANGES = { '7d': ['Last 7 days', 7], '30d': ['Last 30 days', 30], '1y': ['Last 12 months', 365], all: ['Everything', null] };
  const MAX_POINTS = 500;
  const SHAPES = ['circle', 'square', 'triangle', 'diamond', 'cross', 'star'];
  const COLOURS = ['#0b5cad', '#b3261e', '#1f6b34', '#7a3db8', '#8a5a00', '#006d77'];

  /** The units (UCUM codes and common spellings) each chart unit accepts as they are, and those
   *  it converts. */
  const UNITS = {
    'beats/min': { same: ['/min', 'beats/min', '{beats}/min', 'bpm'] },
    mmHg: { same: ['mm[Hg]', 'mmHg'] },
    kg: { same: ['kg'], convert: { '[lb_av]': (v) => v * 0.45359237, lb: (v) => v * 0.45359237, lbs: (v) => v * 0.45359237, g: (v) => v / 1000 } },
    '%': { same: ['%'] },
    'breaths/min': { same: ['/min', 'breaths/min', '{breaths}/min'] },
    '°C': { same: ['Cel', '°C', 'C'], convert: { '[degF]': (v) => (v - 32) * 5 / 9, '°F': (v) => (v - 32) * 5 / 9, degF: (v) => (v - 32) * 5 / 9 } },
  };

  /** A quantity in the chart's unit, or null when its unit is another one that cannot be
   *  converted (such a value is left off the chart rather than drawn on the wrong scale). */
  function inUnit(q, unit) {
    if (!q || typeof q.value !== 'number') return null;
    const rule = UNITS[unit] || { same: [unit] };
    const code = q.code || q.unit || '';
    if (!code || rule.same.includes(code) || rule.same.includes(q.unit)) return q.value;
    const convert = (rule.convert || {})[code] || (rule.convert || {})[q.unit];
    return convert ? convert(q.value) : null;
  }

  /** Where a measurement came from: its provider, or the home device or export it was read
   *  from (see sourceOf); a device of unknown origin otherwise. */
  function originOf(o) {
    const source = sourceOf(o);
    if (source !== 'Braid') return source;
    return o.device ? 'Home device' : 'Recorded in Braid';
  }

  function chartPoints(vital, observations) {
    const points = [];
    for (const o of observations) {
      const at = instant(KINDS.Observation.date(o));
      if (!isFinite(at)) continue;
      vital.series.forEach(([name, component], index) => {
        const quantity = component
          ? ((o.component || []).find((c) => ((c.code || {}).coding || []).some((k) => k.code === component)) || {}).valueQuantity
          : o.valueQuantity;
        const value = inUnit(quantity, vital.unit);
        if (value !== null) points.push({ at, value, series: index, name, origin: originOf(o), date: KINDS.Observation.date(o) });
      });
    }
    return points.sort((a, b) => a.at - b.at);
  }

  function shape(kind, x, y, fill) {
    const r = 4.5;
    switch (kind) {
      case 'square': return svgEl('rect', { x: x - r, y: y - r, width: 2 * r, height: 2 * r, fill });
      case 'triangle': return svgEl('polygon', { points: `${x},${y - r - 1} ${x - r - 1},${y + r} ${x + r + 1},${y + r}`, fill });
      case 'diamond': return svgEl('polygon', { points: `${x},${y - r - 1} ${x + r + 1},${y} ${x},${y + r + 1} ${x - r - 1},${y}`, fill });
      case 'cross': return svgEl('path', { d: `M${x - r},${y - r}L${x + r},${y + r}M${x + r},${y - r}L${x - r},${y + r}`, stroke: fill, 'stroke-width': 2.5 });
      case 'star': return svgEl('polygon', { points: `${x},${y - r - 1} ${x + 2},${y - 1} ${x + r + 1},${y - 1} ${x + 3},${y + 2} ${x + 4},${y + r + 1} ${x},${y + 3} ${x - 4},${y + r + 1} ${x - 3},${y + 2} ${x - r - 1},${y - 1} ${x - 2},${y - 1}`, fill });
      default: return svgEl('circle', { cx: x, cy: y, r, fill });
    }
  }

  function vitalChart(vital, points, from, truncated) {
    const titleId = 'vital-' + vital.key;
    const origins = [...new Set(points.map((p) => p.origin))].sort();
    const style = (origin) => ({ shape: SHAPES[origins.indexOf(origin) % SHAPES.length], colour: COLOURS[origins.indexOf(origin) % COLOURS.length] });
    const section = el('section', { class: 'card vital', 'aria-labelledby': titleId, 'data-vital': vital.key },
      el('h2', { id: titleId }, vital.title + ' (' + vital.unit + ')'));
    if (!points.length) {
      section.append(el('p', { class: 'status' }, 'No measurements in this time range.'));
      return section;
    }
    const [w, h, left, right, top, bottom] = [640, 220, 48, 12, 12, 28];
    const t0 = from !== null ? from : points[0].at;
    const t1 = Math.max(Date.now(), points[points.length - 1].at);
    const bands = vital.series.map((s) => s[2]).filter(Boolean);
    const values = points.map((p) => p.value).concat(...bands);
    let [v0, v1] = [Math.min(...values), Math.max(...values)];
    const padding = (v1 - v0) * 0.1 || 1;
    [v0, v1] = [v0 - padding, v1 + padding];
    const x = (t) => left + (t1 === t0 ? 0.5 : (t - t0) / (t1 - t0)) * (w - left - right);
    const y = (v) => top + (1 - (v - v0) / (v1 - v0)) * (h - top - bottom);
    const svg = svgEl('svg', { viewBox: `0 0 ${w} ${h}`, class: 'chart', role: 'img', 'aria-labelledby': titleId + '-desc' },
      svgEl('desc', { id: titleId + '-desc' }, `${vital.title}: ${points.length} measurements from ${formatDate(new Date(t0).toISOString())} to ${formatDate(new Date(t1).toISOString())}; the table below lists them.`));
    for (const [low, high] of bands) {
      svg.append(svgEl('rect', { class: 'normal', x: left, y: y(high), width: w - left - right, height: y(low) - y(high) },
        svgEl('title', {}, `Usual range ${low}–${high} ${vital.unit}`)));
    }
    for (const v of [v0 + padding, v1 - padding]) {
      svg.append(svgEl('text', { x: left - 6, y: y(v) + 4, 'text-anchor': 'end', class: 'axis' }, (Math.round(v * 10) / 10).toString()));
    }
    svg.append(svgEl('text', { x: left, y: h - 8, class: 'axis' }, new Date(t0).toLocaleDateString()));
    svg.append(svgEl('text', { x: w - right, y: h - 8, 'text-anchor': 'end', class: 'axis' }, new Date(t1).toLocaleDateString()));
    vital.series.forEach((_, index) => {
      const line = points.filter((p) => p.series === index);
      if (line.length > 1) {
        svg.append(svgEl('polyline', { class: 'line', points: line.map((p) => `${x(p.at).toFixed(1)},${y(p.value).toFixed(1)}`).join(' ') }));
      }
    });
    for (const p of points) {
      const { shape: kind, colour } = style(p.origin);
      const mark = svgEl('g', { class: 'point', 'data-origin': p.origin, 'data-series': p.name },
        shape(kind, x(p.at), y(p.value), colour),
        svgEl('title', {}, `${p.name} ${Math.round(p.value * 10) / 10} ${vital.unit}, ${formatDate(p.date)}, from ${p.origin}`));
      svg.append(mark);
    }
    const legend = el('ul', { class: 'legend', 'aria-label': 'Sources' }, origins.map((origin) => {
      const { shape: kind, colour } = style(origin);
      return el('li', {}, svgEl('svg', { viewBox: '0 0 12 12', width: 12, height: 12, 'aria-hidden': 'true' }, shape(kind, 6, 6, colour)), ' ', origin);
    }));
    const table = el('details', { class: 'values' }, el('summary', {}, 'Show the measurements as a table'),
      el('table', {}, el('thead', {}, el('tr', {}, el('th', { scope: 'col' }, 'When'), el('th', { scope: 'col' }, 'Measurement'), el('th', { scope: 'col' }, 'Value'), el('th', { scope: 'col' }, 'From'))),
        el('tbody', {}, points.slice().reverse().map((p) => el('tr', {}, el('td', {}, formatDate(p.date)), el('td', {}, p.name),
          el('td', {}, `${Math.round(p.value * 10) / 10} ${vital.unit}`), el('td', {}, p.origin))))));
    section.append(svg, legend);
    if (truncated) section.append(el('p', { class: 'facts' }, `Showing the latest ${MAX_POINTS} measurements of this range.`));
    section.append(table);
    return section;
  }

  async function vitalsPage(ticket) {
    const person = await thePatient();
    const id = encodeURIComponent(session.patient);
    const params = new URLSearchParams(location.hash.split('?')[1] || '');
    const range = RANGES[params.get('range')] ? params.get('range') : '1y';
    const days = RANGES[range][1];
    const from = days === null ? null : Date.now() - days * 86400000;
    const since = from === null ? '' : '&date=ge' + new Date(from).toISOString().replace(/\.\d{3}Z$/, 'Z');
    const bundles = await Promise.all(VITALS.map((vital) => fhir(`Observation?patient=${id}&code=${vital.codes.map((c) => encodeURIComponent(LOINC + '|' + c)).join(',')}${since}&_sort=-date&_count=${MAX_POINTS}`)));
    const picker = el('nav', { class: 'ranges', 'aria-label': 'Time range' },
      Object.entries(RANGES).map(([key, [label]]) => el('a', { href: '#/vitals?range=' + key, 'aria-current': key === range ? 'true' : null }, label)));
    showFor(ticket, 'Vital signs', banner(person), picker,
      el('div', { class: 'vitals' }, VITALS.map((vital, i) => vitalChart(vital, chartPoints(vital, entries(bundles[i])), from, !!nextLink(bundles[i])))));
  }

  // ---- Privacy: who looked, which apps may, and the whole record --------------------------------

  /** A call to the authorization server's account endpoints, with the portal's token. */
  async function account(method, path) {
    return call(ORIGIN + path, { method });
  }

  /** What a grant's scopes let an app do, in words (the scopes themselves are listed too). */
  function scopeWords(scope) {
    // SMART v1 (read, write, *) and v2 (letters of cruds) permissions, patient/ and user/.
    const resources = scope.split(' ').map((s) => /^(patient|user)\/([A-Za-z*]+)\.([a-z*]+)(\?.*)?$/.exec(s)).filter(Boolean)
      .map(([, , type, permission, query]) => {
        const v1 = { read: [true, false], write: [false, true], '*': [true, true] }[permission];
        const [read, write] = v1 || [/[rs]/.test(permission), /[cud]/.test(permission)];
        return { whole: type === '*' && !query, read, write };
      });
    const words = [];
    if (resources.some((r) => r.read && r.whole)) words.push('read your whole record');
    else if (resources.some((r) => r.read)) words.push('read parts of your record');
    if (resources.some((r) => r.write)) words.push('add to or change your record');
    const scopes = scope.split(' ');
    if (scopes.includes('offline_access')) words.push('keep access until you revoke it');
    if (scopes.includes('openid') || scopes.includes('fhirUser')) words.push('know who you are');
    return words.length ? words.join(', ') : 'no access to your record';
  }

  const INTERACTIONS = {
    read: 'read', vread: 'read a version of', 'search-type': 'searched', 'search-system': 'searched',
    'history-instance': 'read the history of', 'history-type': 'read the history of', create: 'added', update: 'changed',
    patch: 'changed', delete: 'deleted', operation: 'ran an operation on',
  };

  /** One AuditEvent in words: when, which app and person, what they did, and to what. */
  function auditRow(event, appNames) {
    const who = (system) => (event.agent || []).map((a) => a.who).find((w) => w && w.identifier && w.identifier.system === system);
    const client = who('urn:braid:client');
    const app = client && client.identifier;
    const user = (who('urn:braid:user') || {}).identifier;
    const appName = app ? (appNames.get(app.value) || client.display || 'the app ' + app.value) + (user ? '' : ' (a service, not a person)') : 'Braid';
    const interaction = ((event.subtype || [])[0] || {}).code || '';
    const kinds = new Map();
    for (const entity of event.entity || []) {
      const type = entity.what && entity.what.reference ? entity.what.reference.split('/')[0] : null;
      if (type) kinds.set(type, (kinds.get(type) || 0) + 1);
    }
    const what = [...kinds.entries()].map(([type, count]) => `${count} ${type}${count === 1 ? '' : 's'}`).join(', ');
    const failed = event.outcome && event.outcome !== '0';
    return el('li', { class: 'audit', 'data-app': app ? app.value : '', 'data-user': user ? user.value : '' },
      el('span', { class: 'what' },
        el('strong', {}, appName), user ? ` (signed in as ${user.value})` : '', ' ',
        INTERACTIONS[interaction] || interaction || 'accessed', what ? ' ' + what : ' your record',
        failed ? ' — refused' : ''),
      el('span', { class: 'when' }, formatDate(event.recorded || (event.period && event.period.end))));
  }

  async function downloadRecord(status) {
    status.textContent = 'Gathering your record…';
    const resources = [];
    let url = `Patient/${encodeURIComponent(session.patient)}/$everything?_count=500`;
    for (let pages = 0; url && pages < 200; pages++) {
      const bundle = await fhir(url);
      resources.push(...(bundle.entry || []).map((e) => e.resource).filter(Boolean));
      url = nextLink(bundle);
      status.textContent = `Gathering your record… ${resources.length} items so far`;
    }
    const record = { resourceType: 'Bundle', type: 'collection', timestamp: new Date().toISOString(), entry: resources.map((resource) => ({ resource })) };
    const blob = new Blob([JSON.stringify(record, null, 2)], { type: 'application/fhir+json' });
    const link = el('a', { href: URL.createObjectURL(blob), download: `my-health-record-${new Date().toISOString().slice(0, 10)}.json` }, 'download');
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(link.href), 60000);
    status.dataset.resources = String(resources.length);
    status.textContent = `Your record is downloaded: ${resources.length} items (${Math.ceil(blob.size / 1024)} KB of FHIR JSON).`;
  }

  async function privacyPage(ticket) {
    const person = await thePatient();
    const id = encodeURIComponent(session.patient);
    const [{ grants }, audits] = await Promise.all([
      account('GET', '/auth/grants'),
      fhir(`AuditEvent?patient=${id}&_sort=-date&_count=20`),
    ]);
    const appNames = new Map(grants.map((g) => [g.client_id, g.client_name]));
    const appsList = el('ul', { class: 'items', id: 'apps' }, grants.map((grant) => {
      const button = grant.current
        ? el('button', { type: 'button', class: 'quiet', onclick: () => signOut().catch(fail) }, 'Sign out')
        : el('button', { type: 'button', class: 'quiet', 'data-revoke': grant.id }, 'Revoke access');
      if (!grant.current) {
        button.addEventListener('click', async () => {
          button.disabled = true;
          try {
            await account('DELETE', '/auth/grants/' + encodeURIComponent(grant.id));
            button.closest('li').remove();
            document.getElementById('announce').textContent = grant.client_name + ' can no longer reach your record.';
          } catch (error) { button.disabled = false; fail(error); }
        });
      }
      return el('li', { class: 'app', 'data-client': grant.client_id },
        el('span', { class: 'what' }, el('strong', {}, grant.current ? grant.client_name + ' (this session)' : grant.client_name),
          el('br'), 'May ' + scopeWords(grant.scope) + '.',
          el('br'), el('span', { class: 'facts' }, 'Scopes: ' + grant.scope)),
        el('span', { class: 'when' }, 'since ' + formatDate(new Date(grant.created * 1000).toISOString()),
          grant.lasting ? '' : ', until ' + formatDate(new Date(grant.expires * 1000).toISOString())),
        button);
    }));
    const auditList = el('ul', { class: 'items', id: 'audit' }, entries(audits).map((e) => auditRow(e, appNames)));
    const more = olderButton(audits, auditList, (e) => auditRow(e, appNames));
    const downloadStatus = el('p', { class: 'status', role: 'status', id: 'download-status' });
    showFor(ticket, 'Privacy', banner(person),
      el('section', { class: 'card', 'aria-labelledby': 'apps-title' }, el('h2', { id: 'apps-title' }, 'Apps you have let in'),
        grants.length ? appsList : el('p', { class: 'status' }, 'No app has access.')),
      el('section', { class: 'card', 'aria-labelledby': 'audit-title' }, el('h2', { id: 'audit-title' }, 'Who has looked at your record'),
        entries(audits).length ? auditList : el('p', { class: 'status' }, 'Nobody yet.'), more),
      el('section', { class: 'card', 'aria-labelledby': 'download-title' }, el('h2', { id: 'download-title' }, 'Your whole record'),
        el('p', {}, 'Download everything Braid holds about you, from every provider, as one FHIR JSON file.'),
        el('button', { type: 'button', id: 'download', onclick: () => downloadRecord(downloadStatus).catch(fail) }, 'Download my record'),
        downloadStatus));
  }

  // ---- Feedback after a visit ---------------------------------------------------------------

  const FEEDBACK_SYSTEM = 'urn:braid:feedback';
  const FEEDBACK_FOR = 'urn:braid:feedback-for';
  let questionnaire = null;

  async function feedbackQuestionnaire() {
    if (!questionnaire) {
      const reply = await fetch('feedback.json');
      if (!reply.ok) throw new Error('the feedback questionnaire could not be loaded');
      questionnaire = await reply.json();
    }
    return questionnaire;
  }

  /** The form for one questionnaire item; its answer is read back by `answerOf`. */
  function questionField(item, index) {
    const id = 'q-' + index;
    const label = item.text + (item.required ? ' (required)' : '');
    switch (item.type) {
      case 'choice':
        return el('fieldset', { class: 'question', 'data-link': item.linkId },
          el('legend', {}, label),
          (item.answerOption || []).map((option, i) => el('label', { class: 'option' },
            el('input', { type: 'radio', name: id, value: String(i), required: item.required || null }), ' ', option.valueCoding.display)));
      case 'integer': {
        const bounds = Object.fromEntries((item.extension || []).map((e) => [e.url.split('/').pop(), e.valueInteger]));
        return el('div', { class: 'question', 'data-link': item.linkId },
          el('label', { for: id }, label), el('br'),
          el('input', { type: 'number', id, name: id, min: bounds.minValue, max: bounds.maxValue, step: 1, inputmode: 'numeric', required: item.required || null }));
      }
      default:
        return el('div', { class: 'question', 'data-link': item.linkId },
          el('label', { for: id }, label), el('br'),
          el('textarea', { id, name: id, rows: 4, maxlength: item.maxLength || 2000, required: item.required || null }));
    }
  }

  function answerOf(item, index, form) {
    const id = 'q-' + index;
    if (item.type === 'choice') {
      const picked = form.querySelector(`input[name="${id}"]:checked`);
      return picked ? [{ valueCoding: item.answerOption[Number(picked.value)].valueCoding }] : [];
    }
    const field = form.elements[id];
    const text = field.value.trim();
    if (!text) return [];
    if (item.type === 'integer') return [{ valueInteger: Number(text) }];
    return [{ valueString: text.slice(0, item.maxLength || 2000) }];
  }

  /** The visit a feedback is about, as the identifier names it. */
  const visitKey = (visit) => visit.resourceType + '/' + visit.id;

  function feedbackForm(visit, q, done) {
    const form = el('form', { class: 'feedback', 'aria-label': 'Feedback on this visit' },
      q.item.map(questionField),
      el('button', { type: 'submit' }, 'Send feedback'),
      el('button', { type: 'button', class: 'quiet', onclick: () => done(false) }, 'Cancel'));
    form.addEventListener('submit', async (event) => {
      event.preventDefault();
      if (!form.reportValidity()) return;
      const provider = sourceOf(visit);
      const response = {
        resourceType: 'QuestionnaireResponse',
        identifier: { system: FEEDBACK_SYSTEM, value: visitKey(visit) },
        extension: [{ url: FEEDBACK_FOR, valueReference: { reference: visitKey(visit), display: provider } }],
        questionnaire: q.url,
        status: 'completed',
        subject: { reference: 'Patient/' + session.patient },
        authored: new Date().toISOString(),
        author: { reference: 'Patient/' + session.patient },
        item: q.item.map((item, i) => ({ linkId: item.linkId, text: item.text, answer: answerOf(item, i, form) }))
          .filter((item) => item.answer.length),
      };
      if (visit.resourceType === 'Encounter') response.encounter = { reference: visitKey(visit) };
      const button = form.querySelector('button[type=submit]');
      button.disabled = true;
      try {
        await call(BASE + '/QuestionnaireResponse', {
          method: 'POST',
          headers: {
            'Content-Type': 'application/fhir+json',
            'If-None-Exist': 'identifier=' + encodeURIComponent(FEEDBACK_SYSTEM + '|' + visitKey(visit)),
          },
          body: JSON.stringify(response),
        });
        done(true);
      } catch (error) {
        if (error instanceof SessionEnded) return;
        button.disabled = false;
        form.append(el('p', { class: 'error', role: 'alert' }, 'Your feedback could not be sent: ' + error.message));
      }
    });
    return form;
  }

  async function feedbackPage(ticket) {
    const person = await thePatient();
    const id = encodeURIComponent(session.patient);
    const now = new Date().toISOString().replace(/\.\d{3}Z$/, 'Z');
    const [q, encounters, appointments, given] = await Promise.all([
      feedbackQuestionnaire(),
      fhir(`Encounter?patient=${id}&status=finished&_sort=-date&_count=20`),
      fhir(`Appointment?patient=${id}&date=lt${now}&status=booked,arrived,fulfilled,checked-in&_sort=-date&_count=20`),
      all(`QuestionnaireResponse?patient=${id}&_count=100`, 500),
    ]);
    const answered = new Set(given.flatMap((r) => r.identifier && r.identifier.system === FEEDBACK_SYSTEM ? [r.identifier.value] : []));
    const visits = entries(encounters).concat(entries(appointments))
      .map((visit) => ({ visit, at: instant(KINDS[visit.resourceType].date(visit)) }))
      .sort((a, b) => b.at - a.at).map((v) => v.visit);
    const rows = visits.map((visit) => {
      const row = el('li', { class: 'visit', 'data-visit': visitKey(visit), 'data-source': sourceOf(visit) },
        el('span', { class: 'what' }, el('span', { class: 'kind' }, KINDS[visit.resourceType].one), ' ', KINDS[visit.resourceType].text(visit)),
        el('span', { class: 'when' }, formatDate(KINDS[visit.resourceType].date(visit))), sourceBadge(visit));
      const mark = () => row.append(el('span', { class: 'sent' }, 'Feedback sent, thank you'));
      if (answered.has(visitKey(visit))) {
        mark();
      } else {
        const open = el('button', { type: 'button', class: 'quiet give' }, 'Give feedback');
        open.addEventListener('click', () => {
          open.hidden = true;
          const form = feedbackForm(visit, q, (sent) => {
            form.remove();
            if (sent) {
              mark();
              document.getElementById('announce').textContent = 'Your feedback was sent to ' + sourceOf(visit) + '.';
            } else {
              open.hidden = false;
              open.focus();
            }
          });
          row.append(form);
          const first = form.querySelector('input, textarea');
          if (first) first.focus();
        });
        row.append(open);
      }
      return row;
    });
    showFor(ticket, q.title || 'Feedback', banner(person),
      el('p', {}, 'Tell a provider how a visit went. Your answers go into your record and to them; they are not shared with anyone else.'),
      el('section', { class: 'card', 'aria-label': 'Recent visits' },
        rows.length ? el('ul', { class: 'items', id: 'visits' }, rows) : el('p', { class: 'status' }, 'No past visits yet.')));
  }

  // ---- Measurements from home: a wearable's export, and a camera scan --------------------------

  const SCAN_SECONDS = 30;
  const SIGNAL_QUALITY = 'urn:braid:signal-quality';

  /** The Patient home measurements are written to: the person's own registration with the
   *  provider the master patient index ranks first (a golden Patient is Braid's, read-only),
   *  else the patient in context. */
  async function homePatient() {
    const { patient } = await thePatient();
    const member = (patient.link || []).find((l) => l.type === 'seealso' && l.other && (l.other.reference || '').startsWith('Patient/'));
    return member ? member.other.reference.slice('Patient/'.length) : session.patient;
  }

  /** Sends a file (or a trace) to $ingest-vitals and returns Braid's Parameters answer. */
  async function ingest(body, format, contentType) {
    const patient = await homePatient();
    const url = `${BASE}/Patient/${encodeURIComponent(patient)}/$ingest-vitals?format=${encodeURIComponent(format)}`;
    return call(url, { method: 'POST', headers: { 'Content-Type': contentType }, body });
  }

  const parameter = (answer, name) => (answer.parameter || []).filter((p) => p.name === name);
  const countOf = (answer, name) => (parameter(answer, name)[0] || {}).valueInteger || 0;

  function uploadCard() {
    const status = el('p', { class: 'status', role: 'status', id: 'upload-status' });
    const file = el('input', { type: 'file', id: 'upload-file', accept: '.zip,.xml,.json,.csv' });
    const format = el('select', { id: 'upload-format' },
      el('option', { value: 'apple' }, 'Apple Health export (export.zip or export.xml)'),
      el('option', { value: 'fitbit' }, 'Fitbit or Google Takeout export (zip)'),
      el('option', { value: 'mhealth' }, 'Open mHealth data points (JSON)'));
    const form = el('form', { class: 'upload' },
      el('p', {}, el('label', { for: 'upload-format' }, 'What is it? '), format),
      el('p', {}, el('label', { for: 'upload-file' }, 'The file '), file),
      el('button', { type: 'submit' }, 'Upload'), status);
    form.addEventListener('submit', async (event) => {
      event.preventDefault();
      if (!file.files.length) { status.textContent = 'Choose a file first.'; return; }
      const button = form.querySelector('button');
      button.disabled = true;
      status.className = 'status';
      status.textContent = 'Uploading and reading your measurements…';
      try {
        const answer = await ingest(file.files[0], format.value, file.files[0].type || 'application/octet-stream');
        const created = countOf(answer, 'created');
        const unchanged = countOf(answer, 'unchanged');
        const refused = parameter(answer, 'problem').length;
        status.dataset.created = String(created);
        status.textContent = `${created} new measurement${created === 1 ? '' : 's'} added to your record`
          + (unchanged ? `, ${unchanged} already there` : '') + (refused ? `, ${refused} could not be read` : '') + '.';
        patientCache = null;
      } catch (error) {
        if (error instanceof SessionEnded) return;
        status.className = 'error';
        status.textContent = 'The file could not be added: ' + error.message;
      } finally {
        button.disabled = false;
      }
    });
    return el('section', { class: 'card', 'aria-labelledby': 'upload-title' },
      el('h2', { id: 'upload-title' }, 'Upload a wearable\'s export'),
      el('p', {}, 'Heart rate, blood pressure, weight, oxygen, breathing and temperature are added to your record; other data (steps, sleep) is left out. Measurements already in your record are not added twice.'),
      form);
  }

  /** The camera stream of a scan under way: stopped when the scan ends, fails, or the person
   *  leaves the page. */
  let activeStream = null;

  function stopCamera() {
    if (activeStream) activeStream.getTracks().forEach((track) => track.stop());
    activeStream = null;
  }

  /**
   * The camera scan: for 30 seconds, the mean colour of the skin inside the face guide, frame by
   * frame, computed here; only that trace (four numbers a frame) is sent, never the video.
   */
  function scanCard() {
    const video = el('video', { autoplay: true, playsinline: true, muted: true, 'aria-hidden': 'true' });
    const guide = el('div', { class: 'face-guide', 'aria-hidden': 'true' });
    const stage = el('div', { class: 'stage', hidden: true }, video, guide);
    const progress = el('progress', { max: SCAN_SECONDS, value: 0, 'aria-label': 'Scan progress' });
    const status = el('p', { class: 'status', role: 'status', id: 'scan-status' });
    const result = el('div', { id: 'scan-result', 'aria-live': 'polite' });
    const start = el('button', { type: 'button', id: 'scan-start' }, 'Start a 30-second scan');
    start.addEventListener('click', () => scan().catch((error) => {
      stopCamera();
      if (error instanceof SessionEnded) return;
      stage.hidden = true;
      start.disabled = false;
      status.className = 'error';
      status.textContent = error.name === 'NotAllowedError'
        ? 'The camera was not allowed. Allow it in your browser to scan.'
        : 'The scan did not work: ' + (error.message || error);
    }));

    async function scan() {
      start.disabled = true;
      result.replaceChildren();
      status.className = 'status';
      if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) throw new Error('this browser cannot use a camera here');
      const stream = await navigator.mediaDevices.getUserMedia({ video: { facingMode: 'user' }, audio: false });
      activeStream = stream;
      video.srcObject = stream;
      stage.hidden = false;
      await video.play();
      status.textContent = 'Keep your face inside the oval and stay still, in steady light…';
      const canvas = document.createElement('canvas');
      const context = canvas.getContext('2d', { willReadFrequently: true });
      const frames = [];
      const began = performance.now();
      const startedAt = new Date().toISOString();
      await new Promise((resolve, reject) => {
        const sample = (now) => {
          const elapsed = (now - began) / 1000;
          if (activeStream !== stream) { reject(new Error('the scan was stopped')); return; }
          if (elapsed >= SCAN_SECONDS) { resolve(); return; }
          const colour = faceColour(video, canvas, context);
          if (colour) frames.push({ t: Math.round(elapsed * 1000) / 1000, r: colour[0], g: colour[1], b: colour[2] });
          progress.value = elapsed;
          next(sample);
        };
        const next = (callback) => (video.requestVideoFrameCallback
          ? video.requestVideoFrameCallback((now) => callback(now))
          : requestAnimationFrame(callback));
        next(sample);
      });
      stopCamera();
      video.srcObject = null;
      stage.hidden = true;
      progress.value = SCAN_SECONDS;
      status.textContent = 'Reading your pulse and breathing…';
      const trace = JSON.stringify({ start: startedAt, device: 'Braid portal camera scan (' + navigator.userAgent.slice(0, 80) + ')', frames });
      const answer = await ingest(trace, 'rppg', 'application/json');
      showScan(answer, frames.length);
      start.disabled = false;
    }

    function showScan(answer, frameCount) {
      const observations = parameter(answer, 'observation').map((p) => p.resource);
      const reading = (code) => observations.find((o) => loincOf(o) === code);
      const heart = reading('8867-4');
      const breathing = reading('9279-1');
      const quality = heart && extensions(heart, SIGNAL_QUALITY)[0];
      status.textContent = `${frameCount} frames analysed.`;
      if (!heart) {
        const problem = parameter(answer, 'problem').map((p) => ((p.part || []).find((q) => q.name === 'reason') || {}).valueString)[0];
        result.replaceChildren(el('p', { class: 'notice', id: 'scan-none' },
          'No reliable reading, try better light: face a window or a lamp, keep still and try again.'
          + (problem ? ' (' + problem + ')' : '')));
        return;
      }
      result.replaceChildren(el('dl', { class: 'readings' },
        el('dt', {}, 'Heart rate'), el('dd', { id: 'scan-heart-rate', 'data-value': String(heart.valueQuantity.value) }, Math.round(heart.valueQuantity.value) + ' beats a minute'),
        el('dt', {}, 'Breathing rate'), el('dd', { id: 'scan-breathing' },
          breathing ? Math.round(breathing.valueQuantity.value) + ' breaths a minute' : 'not clear enough to read'),
        el('dt', {}, 'Signal quality'), el('dd', { id: 'scan-quality' },
          quality && quality.valueQuantity ? `${quality.valueQuantity.value.toFixed(1)} dB (${quality.valueQuantity.value >= 3 ? 'good' : 'fair'})` : 'not given')),
        el('p', { class: 'facts' }, 'Saved in your record with your other measurements. A camera reading is a guide, not a medical measurement.'));
    }

    return el('section', { class: 'card', 'aria-labelledby': 'scan-title' },
      el('h2', { id: 'scan-title' }, 'Camera scan'),
      el('p', {}, 'Your camera can read your pulse and breathing from tiny changes in your skin\'s colour. The video stays on this device: only the average colour of your face, frame by frame, is sent.'),
      stage, progress, start, status, result);
  }

  /**
   * The mean colour of the skin inside the face guide (the central oval the page draws), from a
   * small copy of the frame (shrinking averages neighbouring pixels); pixels that are not
   * skin-coloured (hair, eyes, background) are left out. `null` before the camera gives frames.
   */
  function faceColour(video, canvas, context) {
    const [w, h] = [video.videoWidth, video.videoHeight];
    if (!w || !h) return null;
    const scale = Math.min(1, 160 / w);
    canvas.width = Math.round(w * scale);
    canvas.height = Math.round(h * scale);
    context.drawImage(video, 0, 0, canvas.width, canvas.height);
    const { data, width, height } = context.getImageData(0, 0, canvas.width, canvas.height);
    // The guide: centred, its height half the frame's, its width 0.7 of its height.
    const [cx, cy, ry] = [width / 2, height * 0.52, height * 0.25];
    const rx = ry * 0.7;
    let [r, g, b, n] = [0, 0, 0, 0];
    for (let y = Math.floor(cy - ry); y < cy + ry; y++) {
      for (let x = Math.floor(cx - rx); x < cx + rx; x++) {
        if (x < 0 || y < 0 || x >= width || y >= height) continue;
        if (((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 > 1) continue;
        const i = (y * width + x) * 4;
        const [pr, pg, pb] = [data[i], data[i + 1], data[i + 2]];
        if (pr > 60 && pg > 30 && pb > 15 && pr > pg && pg > pb * 0.9 && pr - pb > 15) {
          r += pr; g += pg; b += pb; n += 1;
        }
      }
    }
    return n ? [r / n, g / n, b / n].map((v) => Math.round(v * 1000) / 1000) : null;
  }

  async function measurePage(ticket) {
    const person = await thePatient();
    showFor(ticket, 'Measure at home', banner(person), scanCard(), uploadCard(),
      el('p', {}, el('a', { href: '#/vitals' }, 'See your measurements on the vital-sign charts')));
  }

  // ---- Routing ------------------------------------------------------------------------------

  const PAGES = { home: homePage, timeline: timelinePage, appointments: appointmentsPage, labs: labsPage, vitals: vitalsPage, measure: measurePage, feedback: feedbackPage, privacy: privacyPage };

  function fail(error) {
    if (error instanceof SessionEnded) return;
    show('Something went wrong', el('p', { class: 'error', role: 'alert' }, error.message || String(error)));
  }

  async function route() {
    if (!session) return signInPage();
    const asked = (location.hash.replace(/^#\//, '').split('?')[0]) || 'home';
    const name = Object.hasOwn(PAGES, asked) ? asked : 'home';
    const ticket = ++navigation;
    stopCamera();
    for (const link of document.querySelectorAll('#nav a')) {
      if (link.dataset.page === name) link.setAttribute('aria-current', 'page');
      else link.removeAttribute('aria-current');
    }
    main().replaceChildren(el('p', { class: 'status' }, 'Loading…'));
    await PAGES[name](ticket).catch((error) => { if (ticket === navigation) fail(error); });
  }

  function start() {
    document.getElementById('sign-out').addEventListener('click', () => signOut().catch(fail));
    window.addEventListener('hashchange', () => route());
    const params = new URLSearchParams(location.search);
    if (params.has('code') || params.has('error')) return finishSignIn(params).catch(fail);
    const stored = loadSession();
    if (stored) startSession(stored);
    return route();
  }

  start();
})();
