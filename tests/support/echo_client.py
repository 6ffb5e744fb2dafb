import json, socket, sys, threading

host, port = sys.argv[1], int(sys.argv[2])
count = int(sys.argv[3]) if len(sys.argv) > 3 else 1
size = int(sys.argv[4]) if len(sys.argv) > 4 else 32
family = socket.AF_INET6 if ":" in host else socket.AF_INET
results, errors = [], []
barrier = threading.Barrier(count)


def one(i):
    try:
        barrier.wait(timeout=30)
        s = socket.socket(family)
        s.settimeout(30)
        s.connect((host, port))
        seen = {"peer": s.getpeername()[:2], "local": s.getsockname()[:2]}
        payload = (f"{i}:" * size).encode()[:size]
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        got = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            got += chunk
        if got != payload:
            errors.append(f"connection {i}: echo mismatch ({len(got)} of {len(payload)} bytes)")
        results.append(seen)
        s.close()
    except Exception as e:
        errors.append(f"connection {i}: {type(e).__name__}: {e}")


threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(json.dumps({"ok": len(results), "errors": errors, "connections": results}))
sys.exit(1 if errors else 0)
