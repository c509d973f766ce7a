"""The outside resolver of the mesh_resilience scenario: answers one test name, over UDP and TCP.

    python3 outside_dns.py ADDRESS [PORT]

outside.test has A 192.0.2.123 (and no AAAA); every other name is NXDOMAIN.
Standard library only; one thread per transport.
"""

import socket
import struct
import sys
import threading

NAME = "outside.test"
ANSWER = socket.inet_aton("192.0.2.123")


def _question(packet):
    labels, offset = [], 12
    while packet[offset]:
        length = packet[offset]
        labels.append(packet[offset + 1 : offset + 1 + length].decode("ascii", "replace").lower())
        offset += 1 + length
    qtype, _qclass = struct.unpack("!HH", packet[offset + 1 : offset + 5])
    return ".".join(labels), qtype, packet[12 : offset + 5]


def answer(packet):
    ident, flags = struct.unpack("!HH", packet[:4])
    name, qtype, question = _question(packet)
    rcode, answers = 0, b""
    if name != NAME:
        rcode = 3
    elif qtype == 1:
        answers = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 30, 4) + ANSWER
    reply_flags = 0x8400 | (flags & 0x0100) | 0x0080 | rcode
    return struct.pack("!HHHHHH", ident, reply_flags, 1, 1 if answers else 0, 0, 0) + question + answers


def serve_udp(sock):
    while True:
        packet, peer = sock.recvfrom(4096)
        try:
            sock.sendto(answer(packet), peer)
        except (IndexError, struct.error):
            print("malformed query from %s" % (peer,), flush=True)


def serve_tcp(sock):
    while True:
        conn, _peer = sock.accept()
        with conn:
            try:
                conn.settimeout(5)
                length = struct.unpack("!H", conn.recv(2))[0]
                packet = b""
                while len(packet) < length:
                    packet += conn.recv(length - len(packet))
                reply = answer(packet)
                conn.sendall(struct.pack("!H", len(reply)) + reply)
            except (OSError, IndexError, struct.error):
                pass


def main():
    address, port = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 53
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind((address, port))
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    tcp.bind((address, port))
    tcp.listen(16)
    threading.Thread(target=serve_tcp, args=(tcp,), daemon=True).start()
    serve_udp(udp)


if __name__ == "__main__":
    main()
