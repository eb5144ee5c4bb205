#!/usr/bin/env python3
"""Writes the seed corpus of the `engine` fuzz target (fuzz/corpus/engine): action sequences in
the target's input encoding (see fuzz_targets/engine.rs) that make the two devices exchange
valid traffic of every kind, so the fuzzer starts from real packet flows with valid ICRCs."""
import os
import struct

A, B = 0, 0x80          # direction bit: 0 = A posts / packets A->B; 0x80 = B posts / B->A
RC, UC, UD = 0, 1, 2
SEND, SEND_IMM, WRITE, WRITE_IMM, READ, CAS, FAA, SEND_INV = range(8)
FRAMED = 0x80           # first byte: multi-packet RC WRITEs as FIRST/MIDDLE/LAST, not WRITE ONLYs


def post(side, qp, kind, length, off=0, mr=0, flags=0, rmr=0, raddr=0):
    return bytes([72 | side, qp + 3 * kind, mr | flags]) + struct.pack(">HHBI", off, length, rmr, raddr)


def recv(side, qp, length, mr=0, off=0):
    return bytes([96 | side, qp + 3 * mr]) + struct.pack(">HH", off, length)


def flush(n=63):
    # deliver up to n queued packets each way, twice (request, then response)
    return bytes([121, n, 121 | B, n]) * 2


def wait(us):
    return bytes([60]) + struct.pack(">H", int(us ** 0.5))


def mutate(side, kind, at, v, reseal=True):
    return bytes([24 | side, kind | (0 if reseal else 0x80)]) + struct.pack(">HB", at, v)


seeds = {}
for mtu in range(4):
    cfg = bytes([mtu | (3 << 2)])
    seeds[f"write-rc-mtu{mtu}"] = cfg + post(B, RC, WRITE, 3000, raddr=16) + flush()
    seeds[f"send-rc-mtu{mtu}"] = cfg + recv(A, RC, 4000) + post(B, RC, SEND_IMM, 2500) + flush()
    seeds[f"read-rc-mtu{mtu}"] = cfg + post(A, RC, READ, 2000, rmr=1) + flush() + flush()
    # The same WRITE framed FIRST/MIDDLE/LAST, as rxe sends it (first byte bit 7).
    seeds[f"write-rc-framed-mtu{mtu}"] = bytes([cfg[0] | FRAMED]) + post(B, RC, WRITE, 3000, raddr=16) + flush()
seeds["atomics"] = bytes([2]) + post(B, RC, CAS, 8, rmr=2) + post(B, RC, FAA, 8, rmr=2, raddr=8) + flush()
seeds["write-imm"] = bytes([2]) + recv(A, RC, 16) + post(B, RC, WRITE_IMM, 300) + flush()
seeds["uc-write-send"] = bytes([1]) + recv(A, UC, 4000) + post(B, UC, WRITE, 1500) + post(B, UC, SEND, 700) + flush()
seeds["ud-send"] = bytes([2]) + recv(A, UD, 1200) + post(B, UD, SEND, 1000) + flush()
seeds["rc-loss-retry"] = (bytes([1 | (2 << 2)]) + post(B, RC, WRITE, 3000) + bytes([52 | B, 52 | B])
                          + flush() + wait(100000) + flush() + wait(100000) + flush())
seeds["rc-rnr"] = bytes([2]) + post(B, RC, SEND, 100) + flush() + wait(20000) + recv(A, RC, 200) + wait(20000) + flush()
seeds["rc-read-dup"] = bytes([2]) + post(A, RC, READ, 3000) + bytes([0, 48 | B, 0 | B, 0 | B]) + flush()
seeds["rc-psn-jump"] = bytes([2]) + post(B, RC, WRITE, 3000) + mutate(B, 4, 5, 0) + flush()
seeds["rc-opcode"] = bytes([2]) + post(B, RC, WRITE, 3000) + mutate(B, 5, 0, 0x0A) + flush()
seeds["rc-reorder"] = bytes([0]) + post(B, RC, WRITE, 3000) + bytes([53 | B]) + flush()
seeds["bad-rkey"] = bytes([2]) + post(B, RC, WRITE, 100, rmr=3 * 2) + flush()
seeds["readonly-write"] = bytes([2]) + post(B, RC, WRITE, 100, rmr=1) + recv(A, RC, 100, mr=1) + post(B, RC, SEND, 50) + flush()
seeds["error-flush"] = bytes([2]) + recv(A, RC, 100) + post(A, RC, SEND, 10) + bytes([120, 0]) + flush()
# Zero-copy receive (first byte bits 5-6: 1 peek, 2 no peek, 3 both): GRO-coalesced MIDDLEs
# planned into the WRITE's RETH range or the READ's SGE, clean, lossy, reordered, mutated.
# WRITEs framed FIRST/MIDDLE/LAST: uroce's default WRITE ONLY packets are never placed.
for mode in (1, 2, 3):
    cfg = bytes([FRAMED | (mode << 5) | (3 << 2)])  # path MTU 256: many MIDDLEs in 4 KiB
    seeds[f"place-write-{mode}"] = cfg + post(B, RC, WRITE, 4000, raddr=40) + flush()
    seeds[f"place-read-{mode}"] = cfg + post(A, RC, READ, 4000, off=64, rmr=1) + flush() + flush()
    seeds[f"place-lossy-{mode}"] = (cfg + post(B, RC, WRITE, 3500) + bytes([0 | B, 52 | B, 53 | B])
                                    + mutate(B, 1, 200, 0x40) + flush() + wait(100000) + flush()
                                    + wait(100000) + flush())
    seeds[f"place-raw-{mode}"] = (cfg + post(B, RC, WRITE, 4000) + bytes([0 | B, 0 | B])
                                  + bytes([40 | B, 1]) + struct.pack(">H", 272) + bytes([0x07] + [0x5A] * 271)
                                  + flush() + wait(100000) + flush())

out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus", "engine")
os.makedirs(out, exist_ok=True)
for name, data in seeds.items():
    with open(os.path.join(out, name), "wb") as f:
        f.write(data)
print(f"wrote {len(seeds)} seeds to {out}")
