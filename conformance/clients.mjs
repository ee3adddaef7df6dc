// Drives a running Braid with the npm client fhir-kit-client and checks every result against
// the ids the caller seeded (see clients.py for the data). Usage: node clients.mjs BASE_URL
import { Client } from 'fhir-kit-client';
import { check, summary } from './check.mjs';

const base = process.argv[2];
const client = new Client({ baseUrl: base });
const patients = Array.from({ length: 12 }, (_, n) => `c${String(n).padStart(2, '0')}`).sort();

async function main() {
  // Search and follow `next` to the last page.
  let bundle = await client.search({ resourceType: 'Patient', searchParams: { family: 'Conformance', _count: 5 } });
  const found = [];
  let pages = 0;
  while (bundle) {
    pages += 1;
    for (const entry of bundle.entry || []) found.push(entry.resource.id);
    bundle = await client.nextPage({ bundle });
  }
  check('fhir-kit-client: search across pages', found.slice().sort(), patients);
  check('fhir-kit-client: page count', pages, 3);

  // _summary=count
  const count = await client.search({ resourceType: 'Patient', searchParams: { family: 'Conformance', _summary: 'count' } });
  check('fhir-kit-client: _summary=count', count.total, 12);

  // _include
  const included = await client.search({
    resourceType: 'Observation',
    searchParams: { subject: 'Patient/c01', _include: 'Observation:subject' },
  });
  const ids = included.entry.map((e) => `${e.resource.resourceType}/${e.resource.id}`).sort();
  check('fhir-kit-client: _include', ids, ['Observation/obs-c01-0', 'Observation/obs-c01-1', 'Observation/obs-c01-2', 'Patient/c01']);

  // A transaction, then read back what it created.
  const response = await client.transaction({
    body: {
      resourceType: 'Bundle',
      type: 'transaction',
      entry: [
        {
          fullUrl: 'urn:uuid:8f0a7f8e-0000-4000-8000-000000000002',
          resource: { resourceType: 'Patient', name: [{ family: 'Kitclient' }] },
          request: { method: 'POST', url: 'Patient' },
        },
      ],
    },
  });
  check('fhir-kit-client: transaction answered', response.entry.map((e) => e.response.status), ['201 Created']);
  const location = response.entry[0].response.location.split('/_history')[0];
  const [type, id] = location.split('/');
  const read = await client.read({ resourceType: type, id });
  check('fhir-kit-client: read back', read.name[0].family, 'Kitclient');

  summary();
}

main().catch((error) => {
  console.log(`FAIL ${error.stack || error}`);
  process.exit(1);
});
