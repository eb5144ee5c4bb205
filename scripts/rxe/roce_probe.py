#!/usr/bin/env python3
"""Sends RoCEv2 probe packets that a Soft-RoCE (rdma_rxe) device accepts, stdlib only.

Each probe is a UD SEND Only to QP1 (the GSI QP, which every RoCE port has) with the GSI Q_Key
0x80010000, P_Key 0xffff and a 256-byte zero MAD (which the MAD layer discards after rxe has
counted the packet), carrying a valid ICRC. rxe counts it in `rdma statistic` as rcvd_pkts: its
receive path only counts a packet whose destination GID is its own, whose QP exists and matches
the opcode and keys, and whose ICRC is right, so the counter proves the whole path. With
--bad-icrc one more IPv4 probe goes first with its ICRC inverted: rxe must not count it.

IPv4 goes out through a raw socket with the IP header built here, because the ICRC covers the
IPv4 Identification field, which the kernel would choose for an ordinary UDP socket. IPv6 uses
an ordinary UDP socket: every IPv6 field the kernel chooses (traffic class, flow label, hop
limit) is masked out of the ICRC.

Run it inside the harness' netns, e.g.
    ip netns exec uroce-rxe scripts/rxe/roce_probe.py --src4 10.77.0.1 --dst4 10.77.0.2 \
        --src6 fd77::1 --dst6 fd77::2
"""

import argparse
import socket
import struct
import zlib

ROCE_PORT = 4791
SRC_PORT = 49152
GSI_QKEY = 0x80010000


def bth_deth_payload(psn):
    # BTH: opcode UD SEND Only (0x64), SE/M/pad/TVer 0, P_Key 0xffff, resv8 0, dest QP 1,
    # AckReq 0, PSN; DETH: Q_Key, resv8 0, source QP 1; then a 256-byte MAD of zeros.
    bth = struct.pack("!BBHII", 0x64, 0, 0xFFFF, 1, psn & 0xFFFFFF)
    deth = struct.pack("!II", GSI_QKEY, 1)
    return bth, deth + bytes(256)


def icrc(masked_ip, udp, bth, rest):
    """ICRC as rxe computes it: CRC32 over 8 bytes of 1s, the IP header with its variant
    fields set to 1s, the UDP header with the checksum set to 1s, the BTH with its resv8a byte
    (FECN, BECN, reserved) set to 1s, and the rest of the packet; stored little-endian."""
    udp_masked = udp[:6] + b"\xff\xff"
    bth_masked = bth[:4] + b"\xff" + bth[5:]
    crc = zlib.crc32(b"\xff" * 8 + masked_ip + udp_masked + bth_masked + rest)
    return struct.pack("<I", crc)


def csum16(data):
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def probe4(src, dst, psn, bad_icrc=False):
    bth, rest = bth_deth_payload(psn)
    udp_len = 8 + len(bth) + len(rest) + 4
    total = 20 + udp_len
    ident = 0x1234  # nonzero, so the kernel keeps it
    ttl = 64

    def iphdr(tos, ttl_, check):
        return struct.pack("!BBHHHBBH4s4s", 0x45, tos, total, ident, 0x4000, ttl_, 17, check,
                           socket.inet_aton(src), socket.inet_aton(dst))

    udp_nocsum = struct.pack("!HHHH", SRC_PORT, ROCE_PORT, udp_len, 0)
    crc = icrc(iphdr(0xFF, 0xFF, 0xFFFF), udp_nocsum, bth, rest)
    if bad_icrc:
        crc = bytes(b ^ 0xFF for b in crc)
    payload = bth + rest + crc
    pseudo = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!BBH", 0, 17, udp_len)
    c = csum16(pseudo + udp_nocsum + payload) or 0xFFFF
    udp = struct.pack("!HHHH", SRC_PORT, ROCE_PORT, udp_len, c)
    ip = iphdr(0, ttl, 0)  # the kernel fills in the header checksum
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW) as s:
        s.setsockopt(socket.IPPROTO_IP, socket.IP_HDRINCL, 1)
        s.sendto(ip + udp + payload, (dst, 0))
    return total


def probe6(src, dst, psn):
    bth, rest = bth_deth_payload(psn)
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
        s.bind((src, SRC_PORT))
        udp_len = 8 + len(bth) + len(rest) + 4
        # version 6 with traffic class and flow label all 1s, payload length, next header UDP,
        # hop limit 1s.
        masked_ip = (b"\x6f\xff\xff\xff" + struct.pack("!HBB", udp_len, 17, 0xFF) +
                     socket.inet_pton(socket.AF_INET6, src) +
                     socket.inet_pton(socket.AF_INET6, dst))
        udp = struct.pack("!HHHH", SRC_PORT, ROCE_PORT, udp_len, 0)
        payload = bth + rest + icrc(masked_ip, udp, bth, rest)
        s.sendto(payload, (dst, ROCE_PORT))
    return 40 + udp_len


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--src4")
    ap.add_argument("--dst4")
    ap.add_argument("--src6")
    ap.add_argument("--dst6")
    ap.add_argument("--count", type=int, default=1, help="probes per address family")
    ap.add_argument("--bad-icrc", action="store_true",
                    help="also send one IPv4 probe whose ICRC is wrong (rxe must drop it)")
    a = ap.parse_args()
    sent = 0
    if a.bad_icrc and a.src4 and a.dst4:
        n = probe4(a.src4, a.dst4, 0xBAD, bad_icrc=True)
        print(f"sent IPv4 {a.src4}:{SRC_PORT} -> {a.dst4}:{ROCE_PORT} UD SEND to QP1, "
              f"{n} bytes, PSN {0xBAD}, WRONG ICRC")
    for i in range(a.count):
        if a.src4 and a.dst4:
            n = probe4(a.src4, a.dst4, i)
            print(f"sent IPv4 {a.src4}:{SRC_PORT} -> {a.dst4}:{ROCE_PORT} UD SEND to QP1, "
                  f"{n} bytes, PSN {i}")
            sent += 1
        if a.src6 and a.dst6:
            n = probe6(a.src6, a.dst6, i)
            print(f"sent IPv6 [{a.src6}]:{SRC_PORT} -> [{a.dst6}]:{ROCE_PORT} UD SEND to QP1, "
                  f"{n} bytes, PSN {i}")
            sent += 1
    if not sent:
        ap.error("give --src4/--dst4 and/or --src6/--dst6")


if __name__ == "__main__":
    main()
