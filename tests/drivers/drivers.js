// node-postgres through loopgate: a named prepared statement run 7 times,
// a parameterised query, rows as arrays; every value printed.
// Run: node drivers.js HOST PORT (NODE_PATH points at target/node/node_modules)
const { Client } = require('pg');

async function main() {
  const client = new Client({ host: process.argv[2], port: Number(process.argv[3]), user: 'clinic-bot', database: 'postgres' });
  await client.connect();
  for (let run = 1; run <= 7; run++) {
    const res = await client.query({
      name: 'patients-by-id',
      text: 'SELECT id, ssn, email, mrn, phone, dob FROM patients WHERE id <= $1 ORDER BY id',
      values: [5],
      rowMode: 'array',
    });
    for (const row of res.rows) {
      const dob = row[5];
      if (!(dob instanceof Date) || isNaN(dob.getTime())) throw new Error('dob is not a date: ' + dob);
      console.log(`run ${run} | ${row.slice(0, 5).join(' | ')} | ${dob.toISOString().slice(0, 10)}`);
    }
    console.log(`run ${run} rows ${res.rows.length}`);
  }
  const agg = await client.query('SELECT array_agg(ssn ORDER BY id) AS ssns, array_agg(dob ORDER BY id) AS dob FROM patients WHERE id <= $1', [3]);
  console.log('agg | ' + JSON.stringify(agg.rows[0]));
  await client.end();
}

main().catch((e) => { console.error('node error: ' + e.message); process.exit(1); });
