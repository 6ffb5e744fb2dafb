"""A raw PostgreSQL extended-protocol client that fetches one portal in
batches (Execute with a row limit), as JDBC with a fetch size does.

argv: DSN ("host=.. port=.. user=.. dbname=.."), progress file, SQL, batch.
Prints "batch N rows" per batch, "notice" when loopgate pauses it,
"error SQLSTATE MESSAGE" on an error, and "done TOTAL" at the end; writes the
rows received so far to the progress file at every batch end and notice.
"""
import socket
import struct
import sys

dsn = dict(kv.split("=", 1) for kv in sys.argv[1].split())
progress, sql, batch = sys.argv[2], sys.argv[3], int(sys.argv[4])
sock = socket.create_connection((dsn["host"], int(dsn["port"])))
buf = b""
total = 0


def send(tag, body):
    sock.sendall(tag + struct.pack("!I", len(body) + 4) + body)


def cstr(s):
    return s.encode() + b"\0"


def read():
    global buf
    while True:
        if len(buf) >= 5:
            n = struct.unpack("!I", buf[1:5])[0]
            if len(buf) >= n + 1:
                tag, body, buf = buf[0:1], buf[5 : n + 1], buf[n + 1 :]
                return tag, body
        data = sock.recv(65536)
        if not data:
            raise SystemExit("connection closed")
        buf += data


def fields(body):
    return {f[0:1]: f[1:].decode() for f in body.split(b"\0") if f}


def mark():
    with open(progress, "w") as f:
        f.write(str(total))


def until_ready():
    """Reads to ReadyForQuery; returns (rows, error fields or None)."""
    global total
    rows, error = 0, None
    while True:
        tag, body = read()
        if tag == b"D":
            rows += 1
            total += 1
        elif tag == b"N":
            mark()
            print("notice", flush=True)
        elif tag == b"E":
            error = fields(body)
        elif tag == b"Z":
            mark()
            return rows, error


startup = cstr("user") + cstr(dsn["user"]) + cstr("database") + cstr(dsn["dbname"]) + b"\0"
sock.sendall(struct.pack("!II", len(startup) + 8, 196608) + startup)
until_ready()
send(b"Q", cstr("BEGIN"))
until_ready()
send(b"P", cstr("") + cstr(sql) + struct.pack("!H", 0))
send(b"B", cstr("p") + cstr("") + struct.pack("!HHH", 0, 0, 0))
while True:
    send(b"E", cstr("p") + struct.pack("!I", batch))
    send(b"S", b"")
    rows, error = until_ready()
    if error:
        print("error", error.get(b"C"), error.get(b"M"), flush=True)
        break
    print("batch", rows, "rows", flush=True)
    if rows < batch:
        break
print("done", total, flush=True)
