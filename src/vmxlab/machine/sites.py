"""Intercept sites: finding the instructions unicorn has no hook for, when their
code is fetched, and hooking exactly their addresses.

Unicorn runs MOV CR/DR, RDMSR/WRMSR, CPUID, I/O, INVLPG, descriptor-table
instructions, WBINVD, XSETBV, RDRAND ... natively and offers no hook for most of
them.  A UC_HOOK_CODE hook bound to one address costs nothing elsewhere, so the
machine puts one on every address that may hold such an instruction:

- when the TLB-fill hook grants instruction fetch for a virtual page, the
  physical page is scanned (a regular expression over the 4 KiB for the opcode
  bytes of the sensitive instructions, then every plausible start - up to four
  prefix bytes before the opcode - is decoded with iced-x86 and kept when it
  decodes to an intercepted kind); this happens before any block of that page is
  translated, so the hooks are in place when the code is generated;
- the scan result is cached per physical page and compared byte for byte at
  every later fetch fill (a TLB flush, e.g. MOV CR3, refills);
- a page remapped to another virtual address is scanned for that address;
  hooks of the old content at that address are removed;
- self-modifying code: a write fill never grants execute permission, so the
  first instruction fetch from a page after it was written fills again and the
  page is rescanned (unicorn itself invalidates the blocks the write changed,
  and their retranslation goes through that fetch fill);
- at every hit the hook compares the instruction bytes with the scanned ones,
  so a stale hook never emulates the wrong instruction (on a mismatch the
  machine stops, rescans and continues).

False positives (bytes that decode as, e.g., IN/OUT but are never executed as an
instruction start) only cost a hook that never fires.  Unicorn checks every
code hook at each hooked instruction (about 6.5 ns per registered hook), which
is why hooks of pages no longer mapped anywhere are removed.

#UD-class instructions (VMX, GETSEC, INVPCID, MONITOR/MWAIT, RDPMC,
XSAVES/XRSTORS, ICEBP, UD2) reach the invalid-instruction hook instead and are
not scanned.  HLT is scanned although unicorn ends `uc_emu_start` after it: a
stop requested by the watchdog at the same moment would make the two
indistinguishable.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import iced_x86 as I

from .intercepts import Kind, kind_of

PAGE = 4096

# Opcode bytes of the scanned kinds (two-byte 0F xx forms, PAUSE, I/O).
_OPCODES = re.compile(
    rb"(?=(\x0f[\x00\x01\x06\x08\x09\x20-\x23\x30\x31\x32\xa2\xb1\xc7]|\xf3\x90|[\xe4-\xe7\xec-\xef\x6c-\x6f\xf4]))",
    re.S)
_PREFIXES = frozenset(b"\x26\x2e\x36\x3e\x64\x65\x66\x67\xf0\xf2\xf3" + bytes(range(0x40, 0x50)))

# Kinds a scan keeps: the ones reaching the #UD hook or ending the run are not hooked.
SCANNED_KINDS = frozenset({
    Kind.CPUID, Kind.RDMSR, Kind.WRMSR, Kind.IO, Kind.MOV_TO_CR, Kind.MOV_FROM_CR, Kind.CLTS,
    Kind.LMSW, Kind.MOV_DR, Kind.INVLPG, Kind.PAUSE, Kind.WBINVD, Kind.INVD, Kind.XSETBV, Kind.RDTSC,
    Kind.RDTSCP, Kind.RDRAND, Kind.RDSEED, Kind.GDTR_IDTR, Kind.LDTR_TR, Kind.HLT, Kind.CMPXCHG,
})


@dataclass(slots=True)
class Site:
    address: int          # linear address of the first byte
    kind: Kind
    insn: I.Instruction
    raw: bytes            # the instruction bytes
    hpa: int              # host-physical address of the first byte
    end: int = field(init=False)     # hpa + len(raw): the bytes each execution re-checks

    def __post_init__(self):
        self.end = self.hpa + len(self.raw)


def scan(code: bytes, base: int, bitness: int = 64) -> list[tuple[int, Kind, I.Instruction, bytes]]:
    """(offset, kind, instruction, bytes) of every plausible intercepted instruction
    starting in the first 4 KiB of `code` (which may carry up to 15 bytes of the
    next page), decoded as if `code` were at linear address `base`."""
    out: dict[int, tuple[int, Kind, I.Instruction, bytes]] = {}
    limit = min(len(code), PAGE)
    for m in _OPCODES.finditer(code, 0, limit):
        op = m.start()
        starts = [op]
        s = op
        while s > 0 and op - s < 4 and code[s - 1] in _PREFIXES:
            s -= 1
            starts.append(s)
        for start in starts:
            if start in out:
                continue
            insn = I.Decoder(bitness, code[start:start + 15], ip=base + start).decode()
            if insn.code == I.Code.INVALID or start + insn.len <= op:
                continue
            kind = kind_of(insn)
            if kind in SCANNED_KINDS:
                out[start] = (start, kind, insn, bytes(code[start:start + insn.len]))
    return sorted(out.values(), key=lambda t: t[0])


class SiteRegistry:
    """Code hooks on intercept sites, kept consistent with what each virtual page maps."""

    def __init__(self, hook, unhook, memory):
        self._hook = hook            # hook(address) -> None: a code hook on one address (refcounted)
        self._unhook_addr = unhook
        self.mem = memory
        self.sites: dict[int, Site] = {}
        self.vpages: dict[int, int] = {}            # virtual page -> host-physical page scanned there
        self.by_vpage: dict[int, list[int]] = {}    # virtual page -> site addresses hooked
        self.results: dict[int, list] = {}          # virtual page -> scan result object hooked
        self.scans: dict[tuple[int, int], tuple[bytes, list]] = {}   # (hpa page, bitness) -> (bytes, result)
        self.code_pages: set[int] = set()          # host-physical pages that have been scanned
        self.written: set[int] = set()             # code pages written since the last check
        self.scan_count = 0

    def _result(self, hpa: int, vpage: int, bitness: int, tail: bytes) -> list:
        data = self.mem.read(hpa, PAGE)
        key = (hpa, bitness)
        hit = self.scans.get(key)
        if hit is not None and hit[0] == data + tail:
            return hit[1]
        self.scan_count += 1
        result = [(off, kind, raw) for off, kind, _insn, raw in scan(data + tail, vpage, bitness)]
        self.scans[key] = (data + tail, result)
        return result

    def on_fetch(self, vpage: int, hpa: int, bitness: int, tail: bytes = b"") -> None:
        """The fill hook granted instruction fetch for `vpage` -> host-physical `hpa`."""
        result = self._result(hpa, vpage, bitness, tail)
        self.code_pages.add(hpa)
        if self.vpages.get(vpage) == hpa and self.results.get(vpage) is result:
            return
        self._unhook_vpage(vpage)
        # recorded before hooking: adding a code hook can make unicorn look the page
        # up again (a TLB fill, so a nested on_fetch), which must then find the page
        # done instead of hooking every site a second time (a site hooked twice
        # runs its inline emulation twice)
        addrs: list[int] = []
        self.vpages[vpage] = hpa
        self.by_vpage[vpage] = addrs
        self.results[vpage] = result
        for off, kind, raw in result:
            addr = vpage + off
            old = self.sites.get(addr)
            if old is not None:            # hooked through another page (instruction crossing pages)
                self._unhook(addr)
            insn = I.Decoder(bitness, raw, ip=addr).decode()
            site = Site(addr, kind, insn, raw, hpa + off)
            self.sites[addr] = site
            addrs.append(addr)
            self._hook(addr)

    def _unhook(self, addr: int) -> None:
        site = self.sites.pop(addr, None)
        if site is not None:
            self._unhook_addr(addr)

    def _unhook_vpage(self, vpage: int) -> None:
        for addr in self.by_vpage.pop(vpage, ()):
            self._unhook(addr)
        self.vpages.pop(vpage, None)
        self.results.pop(vpage, None)

    def scanned(self, vpage: int, hpa: int) -> bool:
        return self.vpages.get(vpage) == hpa

    def on_write(self, hpa: int) -> bool:
        """A write was granted to a host-physical page; True if it is code (the
        machine then stops and calls `recheck`)."""
        if hpa in self.code_pages:
            self.written.add(hpa)
            return True
        return False

    def recheck(self) -> bool:
        """Rescan virtual pages mapping written code pages; True if any changed."""
        changed = False
        written, self.written = self.written, set()
        for vpage, hpa in list(self.vpages.items()):
            if hpa in written:
                data = self.mem.read(hpa, PAGE)
                stale = [k for k in self.scans if k[0] == hpa and self.scans[k][0][:PAGE] != data]
                if stale:
                    for k in stale:
                        del self.scans[k]
                    self._unhook_vpage(vpage)
                    changed = True
        return changed

    def forget_physical(self, hpa: int) -> None:
        """A host write changed page `hpa`: drop its scans and the hooks of its mappings."""
        for k in [k for k in self.scans if k[0] == hpa]:
            del self.scans[k]
        for vpage, p in list(self.vpages.items()):
            if p == hpa:
                self._unhook_vpage(vpage)

    def hook_count(self) -> int:
        return len(self.sites)

    def clear(self) -> None:
        for addr in list(self.sites):
            self._unhook(addr)
        self.vpages.clear()
        self.by_vpage.clear()

