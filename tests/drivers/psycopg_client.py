"""psycopg 3 through loopgate: text and binary cursors, pipeline mode, a
named (server-side) cursor read two rows at a time, and COPY in text, CSV
(with header) and binary (decoded by type). Every value is printed.

argv: DSN.
"""
import sys

import psycopg

SQL = "SELECT id, ssn, email, mrn, phone, dob FROM patients WHERE id <= %s ORDER BY id"

with psycopg.connect(sys.argv[1]) as conn:
    for binary in (False, True):
        with conn.cursor(binary=binary) as cur:
            for run in range(1, 8):
                cur.execute(SQL, (5,), prepare=True)
                rows = cur.fetchall()
                for r in rows:
                    print("binary" if binary else "text", run, "|", " | ".join(str(v) for v in r))
                print("binary" if binary else "text", run, "rows", len(rows))
    with conn.pipeline():
        cursors = [
            conn.execute("SELECT id, ssn, dob FROM patients WHERE id <= %s ORDER BY id", (i,), binary=True)
            for i in (2, 3, 4)
        ]
    for cur in cursors:
        for r in cur.fetchall():
            print("pipeline |", " | ".join(str(v) for v in r))
    with conn.transaction():
        with conn.cursor(name="batches", binary=True) as cur:
            cur.itersize = 2
            cur.execute("SELECT id, ssn, mrn, phone, dob FROM patients WHERE id <= 9 ORDER BY id")
            n = 0
            for r in cur:
                n += 1
                print("named |", " | ".join(str(v) for v in r))
            print("named rows", n)
    with conn.cursor() as cur:
        with cur.copy("COPY (SELECT id, ssn, phone, dob FROM patients WHERE id <= 20 ORDER BY id) TO STDOUT") as copy:
            print("copy text |", b"".join(bytes(b) for b in copy).decode())
        with cur.copy("COPY patients TO STDOUT WITH (FORMAT csv, HEADER, DELIMITER ';', QUOTE '''')") as copy:
            print("copy csv |", b"".join(bytes(b) for b in copy).decode())
        with cur.copy("COPY (SELECT id, ssn, dob, mrn FROM patients WHERE id <= 20 ORDER BY id) TO STDOUT (FORMAT binary)") as copy:
            copy.set_types(["int4", "text", "date", "text"])
            n = 0
            for r in copy.rows():
                n += 1
                print("copy binary |", " | ".join(str(v) for v in r))
            print("copy binary rows", n)
