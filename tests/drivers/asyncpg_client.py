"""asyncpg through loopgate: a prepared statement fetched 7 times, a cursor
read with prefetch=2 (the portal's later Execute batches), binary arrays and
records, and COPY to CSV and binary. Every value is printed.

argv: DSN ("host=.. port=.. user=.. dbname=..").
"""
import asyncio
import io
import sys

import asyncpg


async def main():
    dsn = dict(kv.split("=", 1) for kv in sys.argv[1].split())
    conn = await asyncpg.connect(host=dsn["host"], port=int(dsn["port"]), user=dsn["user"],
                                 database=dsn["dbname"], ssl=False)
    stmt = await conn.prepare("SELECT id, ssn, email, mrn, phone, dob FROM patients WHERE id <= $1 ORDER BY id")
    for run in range(1, 8):
        rows = await stmt.fetch(5)
        for r in rows:
            print("run", run, "|", " | ".join(str(v) for v in r))
        print("run", run, "rows", len(rows))
    async with conn.transaction():
        n = 0
        async for r in conn.cursor("SELECT id, ssn, mrn, phone, dob FROM patients WHERE id <= 9 ORDER BY id",
                                   prefetch=2):
            n += 1
            print("cursor |", " | ".join(str(v) for v in r))
        print("cursor rows", n)
    r = await conn.fetchrow("SELECT array_agg(ssn ORDER BY id) AS ssns, array_agg(dob ORDER BY id) AS dob, "
                            "array_agg(email) AS emails, (array_agg(row(ssn, email)))[1] AS rec FROM patients WHERE id <= 3")
    print("binary |", r["ssns"], r["dob"], r["emails"], r["rec"])
    csv = io.BytesIO()
    await conn.copy_from_table("patients", output=csv, format="csv", header=True)
    print("csv |", csv.getvalue().decode())
    binary = io.BytesIO()
    await conn.copy_from_query("SELECT id, ssn, dob FROM patients ORDER BY id", output=binary, format="binary")
    data = binary.getvalue()
    print("binary copy bytes", len(data), "starts", data[:11], "|", data.decode("latin-1"))
    await conn.close()


asyncio.run(main())
