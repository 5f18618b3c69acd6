"""Guest-physical and linear memory of the machine, the TLB fill, and the
second-stage translation plug point.

Address spaces:
- host-physical: `machine.mem` (RAM at [0, size));
- guest-physical: what the processor's paging produces; equal to host-physical
  unless a second-stage translator is installed;
- linear: translated through the current paging mode (paging.py).

Second stage ("plug point" for EPT): `machine.second_stage = fn` with
    fn(gpa, access, linear, paging_entry) -> (hpa, allowed)
  gpa: guest-physical address; access: paging.READ / WRITE / FETCH;
  linear: the guest-linear address being translated (None when there is none,
  e.g. PDPTE loads); paging_entry: True for accesses to guest paging-structure
  entries (reads of entries are READ, accessed/dirty updates are WRITE);
  returns the host-physical address of `gpa` and the access kinds
  (READ|WRITE|FETCH bits) the mapping allows for the whole 4 KiB page.
  To refuse, raise SecondStageRefusal(payload): the machine stops the run with
  StopReason.SECOND_STAGE, RIP at the instruction (nothing of it executed), the
  refusal's gpa/access/linear/paging_entry filled in and, for an access made
  while delivering an event, `event.vectoring` naming that event.
  Every guest-physical access goes through it: paging-structure entries during
  walks (TLB fills and Python walks), instruction fetches and data accesses of
  guest code (once per page and kind until the TLB is flushed), and the accesses
  the machine makes itself (event delivery pushes, IDT/GDT/TSS reads, emulated
  instruction operands).  Call `machine.flush_tlb()` when its answers change
  (INVEPT).  Throughput: the translator runs on TLB fills only, so code that
  stays within its pages runs at full speed.

TLB fill (UC_TLB_VIRTUAL + UC_HOOK_TLB_FILL): unicorn asks for a virtual page
and an access type; the fill walks the guest's paging for the current CPL
(CS.RPL in protected mode, 0 in real mode, 3 in virtual-8086 mode), applies the
second stage, and grants permissions so that: the first write to a page comes
back (dirty flag); instruction fetch is granted only by fetch fills (each newly
fetched page is scanned for intercept sites) and never together with write, so
the first fetch after a write to a page comes back and rescans it
(self-modifying code); QEMU's per-privilege TLBs keep user and supervisor
rights apart.  Accesses
to the GDT/LDT/TSS at CPL 3 (descriptor loads) are checked as implicit
supervisor-mode accesses; an explicit CPL-3 access to those ranges is also
granted with supervisor rights (a documented simplification: unicorn does not
tell the fill which kind of access it is).
Non-canonical addresses in 64-bit mode raise #GP(0) (#SS(0) for stack accesses
by PUSH/POP/CALL/RET or an RSP/RBP based operand, "Canonical Addressing").
"""
from __future__ import annotations

import operator
import struct

import iced_x86 as I

from ..arch import events as EV
from ..arch import msrs as M
from ..arch import registers as AR
from . import context_blob as CB
from . import paging as PG
from . import registers as REG
from . import unicorn_ffi as ffi
from .memory import PAGE, NonexistentMemory
from .paging import FETCH, READ, WRITE, Context, PageFault

_ACCESS_OF = {ffi.ACCESS_READ: READ, ffi.ACCESS_WRITE: WRITE, ffi.ACCESS_FETCH: FETCH}
_PAGING_REGS = operator.itemgetter(REG.CR0, REG.CR3, REG.CR4)     # of the control-register batch
_INFO = I.InstructionInfoFactory()
_OA = I.OpAccess
_READS = frozenset({_OA.READ, _OA.COND_READ, _OA.READ_WRITE, _OA.READ_COND_WRITE})
_WRITES = frozenset({_OA.WRITE, _OA.COND_WRITE, _OA.READ_WRITE, _OA.READ_COND_WRITE})
_RMW = frozenset({_OA.READ_WRITE, _OA.READ_COND_WRITE})
_KIND_NAME = {READ: "read", WRITE: "write", FETCH: "fetch"}


class SecondStageRefusal(Exception):
    """Raised by a second-stage translator to refuse an access (see module doc)."""

    def __init__(self, payload=None):
        super().__init__(str(payload) if payload is not None else "second-stage translation refused")
        self.payload = payload
        self.gpa: int | None = None
        self.access: int | None = None
        self.linear: int | None = None
        self.paging_entry = False


class FillFault:
    """Why the last TLB fill refused (consumed by the run loop)."""
    __slots__ = ("exc", "linear", "access")

    def __init__(self, exc: BaseException, linear: int, access: int):
        self.exc, self.linear, self.access = exc, linear, access


class _PagingAccessor:
    """Paging-structure entries through the second stage."""
    __slots__ = ("m", "linear")

    def __init__(self, machine):
        self.m = machine
        self.linear: int | None = None

    def read64(self, gpa: int) -> int:
        return self.m.mem.read64(self.m._gpa_to_hpa(gpa, READ, self.linear, True))

    def read32(self, gpa: int) -> int:
        return self.m.mem.read32(self.m._gpa_to_hpa(gpa, READ, self.linear, True))

    def write64(self, gpa: int, value: int) -> None:
        self.m._write_host(self.m._gpa_to_hpa(gpa, WRITE, self.linear, True), struct.pack("<Q", value))

    def write32(self, gpa: int, value: int) -> None:
        self.m._write_host(self.m._gpa_to_hpa(gpa, WRITE, self.linear, True), struct.pack("<I", value))


class MemoryAccess:
    """Mixin of Machine: physical and linear accesses, translation, TLB fill."""

    # -- second stage ---------------------------------------------------------------------
    @property
    def second_stage(self):
        return self._second_stage

    @second_stage.setter
    def second_stage(self, fn) -> None:
        self.set_second_stage(fn)

    def set_second_stage(self, fn, tag=None) -> None:
        """Install the second stage (None: guest-physical = host-physical).  `tag`
        names its translations (the VMX layer passes the EPTP): the software TLB
        keeps the translations of each (paging context, tag) apart, as EPTP-tagged
        TLBs do, so switching between tagged stages invalidates nothing but
        unicorn's untagged TLB; without a tag every translation is dropped."""
        if fn is self._second_stage and tag == self._s2_tag and (tag is not None or fn is None):
            return
        self._second_stage, self._s2_tag = fn, tag
        self._ctx_key = None                       # the next paging_context() picks the tagged TLB
        if tag is None and fn is not None:
            self.flush_tlb()
        else:
            self.engine.flush_tlb()

    def _gpa_to_hpa(self, gpa: int, access: int, linear: int | None = None, paging_entry: bool = False) -> int:
        s2 = self._second_stage
        if s2 is None:
            hpa = gpa
        else:
            try:
                hpa, allowed = s2(gpa, access, linear, paging_entry)
            except SecondStageRefusal as r:
                r.gpa, r.access, r.linear, r.paging_entry = gpa, access, linear, paging_entry
                raise
            if not allowed & access:
                r = SecondStageRefusal(f"second stage allows {allowed:#x}, not {_KIND_NAME[access]}")
                r.gpa, r.access, r.linear, r.paging_entry = gpa, access, linear, paging_entry
                raise r
        if not 0 <= hpa < self.mem.size:
            raise NonexistentMemory(hpa, 1, access == WRITE)
        return hpa

    # -- host-physical writes -------------------------------------------------------------
    def _write_host(self, hpa: int, data: bytes) -> None:
        """Write RAM, invalidating translated code and scans of executed pages."""
        self.mem.write(hpa, data)
        first, last = hpa & ~0xFFF, (hpa + len(data) - 1) & ~0xFFF
        code = self.sites.code_pages
        page = first
        hit = False
        while page <= last:
            if page in code:
                self.sites.forget_physical(page)
                hit = True
            page += PAGE
        if hit:
            self.flush_translated_code()
            self.flush_tlb()

    def flush_translated_code(self) -> None:
        """Drop unicorn's translated code: now, or at the next boundary when a client
        runs inside a hook (translated code may be running then)."""
        if self._in_client:
            self._tb_flush_pending = True
        else:
            self.engine.flush_tb()

    def write_host(self, hpa: int, data: bytes) -> None:
        """Write host-physical memory (a loader, the VMX layer's own structures)."""
        self._write_host(hpa, bytes(data))

    # -- guest-physical -----------------------------------------------------------------------
    def read_phys(self, gpa: int, size: int) -> bytes:
        """Read guest-physical memory (through the second stage, page by page)."""
        out = bytearray()
        while size > 0:
            n = min(size, PAGE - (gpa & 0xFFF))
            out += self.mem.read(self._gpa_to_hpa(gpa, READ), n)
            gpa += n
            size -= n
        return bytes(out)

    def phys_read(self, gpa: int, size: int) -> bytes:
        """Same as read_phys (the KVM backend's name)."""
        return self.read_phys(gpa, size)

    def phys_write(self, gpa: int, data: bytes) -> None:
        """Same as write_phys (the KVM backend's name)."""
        self.write_phys(gpa, data)

    def write_phys(self, gpa: int, data: bytes) -> None:
        data = bytes(data)
        while data:
            n = min(len(data), PAGE - (gpa & 0xFFF))
            self._write_host(self._gpa_to_hpa(gpa, WRITE), data[:n])
            gpa += n
            data = data[n:]

    # -- paging -----------------------------------------------------------------------------
    def paging_context(self, cr0: int | None = None, cr3: int | None = None, cr4: int | None = None,
                       efer: int | None = None) -> Context:
        """The translation context of the current state (or of the given registers)."""
        if cr0 is None and cr3 is None and cr4 is None and efer is None:   # the live one (every decode)
            cr0, cr3, cr4 = _PAGING_REGS(self.ctrl.read())
            efer = self._efer
        else:
            if cr0 is None or cr3 is None or cr4 is None:
                c = self.ctrl.read()
                cr0 = c[REG.CR0] if cr0 is None else cr0
                cr3 = c[REG.CR3] if cr3 is None else cr3
                cr4 = c[REG.CR4] if cr4 is None else cr4
            efer = self._efer if efer is None else efer
        key = (cr0, cr3, cr4, efer, self.pdptes, self._s2_tag)
        if key == self._ctx_key:
            return self._ctx
        ctx = Context.from_registers(cr0, cr3, cr4, efer, self.profile.maxphyaddr,
                                     self.profile.has("PDPE1GB"), self.pdptes)
        self._ctx_key, self._ctx = key, ctx
        # the software TLB is tagged by translation context (like PCIDs/VPIDs): each
        # context has its own dictionary, all emptied by flush_tlb()
        if len(self._stlbs) > 64:
            self._stlbs.clear()
        self._stlb = self._stlbs.setdefault(key, {})
        return ctx

    def walk(self, linear: int, access: int = READ, *, user: bool = False, implicit: bool = False,
             ac: bool = False, set_ad: bool = False, ctx: Context | None = None) -> PG.Translation:
        """Translate through any paging context (default: the current one) without
        using or filling the TLB.  `set_ad=False` (the default) leaves accessed and
        dirty flags alone, which makes it a pure page walk for inspection."""
        ctx = ctx or self.paging_context()
        self._ptacc.linear = linear
        return PG.translate(ctx, linear, access, user, self._ptacc, ac, implicit, set_ad)

    def _current_cpl_user(self, cpl: int | None) -> bool:
        if cpl is None:
            cpl = self.cpl()
        return cpl == 3

    def _lookup(self, linear: int, access: int, user: bool, implicit: bool, ac: bool,
                ctx: Context | None = None) -> tuple[int, int, int]:
        """(guest-physical page, host-physical page, allowed kinds) of the page of
        `linear`, from the software TLB or by a walk (which sets A/D flags and
        fills it).  The software TLB holds only successful translations and is
        emptied by flush_tlb(), like a hardware TLB."""
        ctx = ctx or self.paging_context()
        key = (linear >> 12, access, user, implicit, ac)
        hit = self._stlb.get(key)
        if hit is not None:
            return hit
        self._ptacc.linear = linear
        tr = PG.translate(ctx, linear, access, user, self._ptacc, ac, implicit, True)
        allowed = PG.allowed(tr, ctx, user, ac, implicit)
        gpa = tr.physical & ~0xFFF
        s2 = self._second_stage
        if s2 is None:
            hpa = gpa
        else:
            try:
                hpa, s2allowed = s2(gpa | (linear & 0xFFF), access, linear, False)
            except SecondStageRefusal as r:
                r.gpa, r.access, r.linear, r.paging_entry = gpa | (linear & 0xFFF), access, linear, False
                raise
            if not s2allowed & access:
                r = SecondStageRefusal(f"second stage allows {s2allowed:#x}, not {_KIND_NAME[access]}")
                r.gpa, r.access, r.linear, r.paging_entry = gpa | (linear & 0xFFF), access, linear, False
                raise r
            allowed &= s2allowed
            hpa &= ~0xFFF
        if not 0 <= hpa < self.mem.size:
            raise NonexistentMemory(hpa | (linear & 0xFFF), 1, access == WRITE)
        entry = (gpa, hpa, allowed)
        self._stlb[key] = entry
        return entry

    def translate(self, linear: int, access: int = READ, cpl: int | None = None, implicit: bool = False,
                  set_ad: bool = True) -> int:
        """The guest-physical address of `linear` for an access at `cpl` (default:
        the current CPL); raises PageFault, SecondStageRefusal, NonexistentMemory.
        `set_ad=False` walks without touching accessed/dirty flags or the TLB."""
        user = (not implicit) and self._current_cpl_user(cpl)
        ctx = self.paging_context()
        ac = (not user and ctx.smap and bool(self.gprs.read()[REG.RFLAGS] & AR.RFLAGS_AC))
        if not set_ad:
            self._ptacc.linear = linear
            return PG.translate(ctx, linear, access, user, self._ptacc, ac, implicit, False).physical
        return self._lookup(linear, access, user, implicit, ac, ctx)[0] | (linear & 0xFFF)

    def _linear_chunks(self, linear: int, size: int, access: int, cpl: int | None, implicit: bool,
                       ctx: Context | None = None) -> list:
        """[(hpa, n)] covering linear [linear, linear + size), translated first (all
        or nothing)."""
        chunks = []
        mask = (1 << 64) - 1 if self._efer & M.EFER_LMA else 0xFFFFFFFF
        user = (not implicit) and self._current_cpl_user(cpl)
        ctx = ctx or self.paging_context()
        ac = (not user and ctx.smap and bool(self.gprs.read()[REG.RFLAGS] & AR.RFLAGS_AC))
        while size > 0:
            n = min(size, PAGE - (linear & 0xFFF))
            _gpa, hpa, _allowed = self._lookup(linear, access, user, implicit, ac, ctx)
            chunks.append((hpa | (linear & 0xFFF), n))
            linear = (linear + n) & mask
            size -= n
        return chunks

    def read_linear(self, linear: int, size: int, cpl: int | None = None, implicit: bool = False,
                    fetch: bool = False, ctx: Context | None = None) -> bytes:
        """Read through the current paging (sets accessed flags)."""
        access = FETCH if fetch else READ
        chunks = self._linear_chunks(linear, size, access, cpl, implicit, ctx)
        if len(chunks) == 1:
            return self.mem.read(*chunks[0])
        return b"".join(self.mem.read(h, n) for h, n in chunks)

    def write_linear(self, linear: int, data: bytes, cpl: int | None = None, implicit: bool = False) -> None:
        """Write through the current paging (all pages translated before any byte is written)."""
        data = bytes(data)
        off = 0
        for h, n in self._linear_chunks(linear, len(data), WRITE, cpl, implicit):
            self._write_host(h, data[off:off + n])
            off += n

    def flush_tlb(self, linear: int | None = None) -> None:
        """Invalidate translations: all of them, or those of one linear address
        (vmxlab drops all in both cases, which the architecture allows: "a
        processor may invalidate more than required")."""
        self.engine.flush_tlb()
        self._stlbs.clear()
        self._stlb = self._stlbs.setdefault(self._ctx_key, {})

    # -- the TLB fill hook --------------------------------------------------------------------
    def _on_fill(self, uc, vaddr: int, mtype: int, entry, ud) -> bool:
        v = self._fillregs.read()
        cr0 = v[0]
        rflags = v[3]
        ctx = self._ctx
        if self._ctx_key is None or self._ctx_key[:3] != (cr0, v[1], v[2]):
            ctx = self.paging_context(cr0, v[1], v[2])
        access = _ACCESS_OF[mtype]
        if not cr0 & 1:                                   # CR0.PE = 0: real mode, CPL 0
            user = False
        elif rflags & AR.RFLAGS_VM:
            user = True
        else:
            user = v[4] & 3 == 3
        implicit = False
        bits = 57 if ctx.mode == PG.Mode.LEVEL5 else 48
        top = vaddr >> (bits - 1)
        if top and top != (1 << (65 - bits)) - 1 and self._efer & M.EFER_LMA:
            self._fill_fault = FillFault(_NonCanonical(vaddr), vaddr, access)
            return False
        if user and self._in_system_table(vaddr):
            user, implicit = False, True
        ac = (not user) and ctx.smap and bool(rflags & AR.RFLAGS_AC)
        hit = self._stlb.get((vaddr >> 12, access, user, implicit, ac))
        if hit is None:
            try:
                hit = self._lookup(vaddr, access, user, implicit, ac, ctx)
            except (PageFault, SecondStageRefusal, NonexistentMemory) as e:
                self._fill_fault = FillFault(e, vaddr, access)
                return False
        _gpa, hpa, allowed = hit
        self._fills_since_flush += 1
        if self._fills_since_flush > self._grow_at:
            if access == FETCH:
                self._grow_tlb = True               # see RunControl: QEMU sizes its TLB when flushed
                self.engine.stop()
            else:
                # no stop inside a data access: unicorn 2.1.4 can then end the run right
                # after the instruction's store with RIP still at the instruction, and
                # the next run executes it again (a read-modify-write applied twice).
                # Flush here instead (QEMU resizes the TLB then; the entry of this fill
                # goes into the new table when the hook returns).
                self._fills_since_flush = 0
                self._grow_at *= 2
                self.engine.flush_tlb()
        if access == READ:
            perms = ffi.PROT_READ
            if allowed & FETCH and self.sites.vpages.get(vaddr) == hpa:
                perms |= ffi.PROT_EXEC
        elif access == WRITE:
            # never execute permission with write permission: the next instruction
            # fetch from a page after a write to it comes back here and rescans it
            # (self-modifying code); unicorn's own SMC detection retranslates the
            # blocks the write changed, through a fetch fill
            perms = ffi.PROT_READ | ffi.PROT_WRITE
        else:
            hf = self.blob.load().hflags
            self.sites.on_fetch(vaddr, hpa, 64 if hf & CB.HF_CS64 else (32 if hf & CB.HF_CS32 else 16))
            perms = ffi.PROT_EXEC | (ffi.PROT_READ if allowed & READ else 0)
        e = entry[0]
        e.paddr = hpa
        e.perms = perms
        self.tlb_fills += 1
        return True

    def _in_system_table(self, vaddr: int) -> bool:
        """Does the page hold part of the GDT, LDT or TSS (implicit supervisor accesses)?"""
        blob = self.blob.load()
        page = vaddr & ~0xFFF
        for slot in (CB.GDT, CB.LDT, CB.TR):
            _s, base, limit, _f = blob.cache(slot)
            if limit and (base & ~0xFFF) <= page <= ((base + limit) & ~0xFFF):
                return True
        return False

    def fetch_bytes(self, linear: int, size: int = 15) -> bytes:
        """Up to `size` instruction bytes at `linear` (fewer when a page is not
        mapped), read without setting accessed flags."""
        out = bytearray()
        while size > 0:
            n = min(size, PAGE - (linear & 0xFFF))
            hpa = self._code_hpa(linear)
            if hpa is None:
                break
            out += self.mem.read(hpa, n)
            linear += n
            size -= n
        return bytes(out)

    def exact_linear(self, page: int, access: int) -> int:
        """The linear address an access that faulted on `page` used."""
        return self.exact_access(page, access)[0]

    def exact_access(self, page: int, access: int) -> tuple[int, bool]:
        """(linear address, read-modify-write?) of the access that faulted on `page`.

        unicorn's TLB fill only sees page-aligned addresses; CR2, EPT
        qualifications and guest-linear addresses need the byte: for a fetch it is
        RIP when RIP is in the page (else the page start, an instruction crossing
        into it); for data, the memory accesses of the instruction at RIP (iced's
        used_memory(), explicit and implicit: stack, string operands) evaluated
        on the current registers, the first one of the right kind touching the
        page (an access crossing into the page faults at the page start).  The
        flag says the operand is read and written by the instruction (ADD [m], r;
        XCHG; CMPXCHG ...): unicorn fills its read first, but the processor makes
        that access as a write (see the callers)."""
        rip = self.gprs.read()[REG.RIP]
        if access == FETCH:
            return (rip if rip & ~0xFFF == page else page), False
        insn = self.decode_at(rip)
        if insn.code == I.Code.INVALID:
            return page, False
        g = self.gprs.read()
        hf = self.blob.load().hflags
        bitness = 64 if hf & CB.HF_CS64 else (32 if hf & CB.HF_CS32 else 16)
        kinds = _WRITES if access == WRITE else _READS
        for mem in _INFO.info(insn).used_memory():
            if mem.access not in kinds:
                continue
            asize = {1: 2, 2: 4, 3: 8}.get(mem.address_size, bitness // 8)
            amask = (1 << (8 * asize)) - 1
            if mem.base in (I.Register.RIP, I.Register.EIP):
                ea = mem.displacement & amask
            else:
                ea = mem.displacement
                if mem.base != I.Register.NONE:
                    ea += self._reg_value(mem.base, g)
                if mem.index != I.Register.NONE:
                    ea += self._reg_value(mem.index, g) * mem.scale
                ea &= amask
            seg = mem.segment
            base = 0
            if seg != I.Register.NONE and not (bitness == 64 and seg not in (I.Register.FS, I.Register.GS)):
                base = self.blob.cache(REG.ICED_SEGMENT[seg])[1]
            linear = (base + ea) & ((1 << 64) - 1 if bitness == 64 else 0xFFFFFFFF)
            size = max(I.MemorySizeExt.size(mem.memory_size), 1)
            if linear < page + PAGE and linear + size > page:
                return max(linear, page), mem.access in _RMW
        return page, False

    @staticmethod
    def _reg_value(reg: int, g) -> int:
        spec = REG.ICED_GPR.get(reg)
        if spec is None:
            return 0
        index, width, shift = spec
        return REG.extract_gpr(g[index], width, shift)

    def _code_hpa(self, linear: int) -> int | None:
        """The host-physical address of instruction bytes at `linear`: from the
        software TLB when a fetch filled it, else by a walk that sets no flags."""
        page = linear >> 12
        self.paging_context()                      # selects the software TLB of the current context
        stlb = self._stlb
        if stlb:
            hit = stlb.get((page, FETCH, False, False, False)) or stlb.get((page, FETCH, True, False, False))
            if hit is not None:
                return hit[1] | (linear & 0xFFF)
        try:
            tr = self.walk(linear, READ, implicit=True)
            return self._gpa_to_hpa(tr.physical, READ, linear)
        except (PageFault, SecondStageRefusal, NonexistentMemory):
            return None

    def decode_at(self, linear: int, bitness: int | None = None) -> I.Instruction:
        """The instruction at `linear` (decoded once per address and bytes: the
        intercept paths decode the same few instructions over and over)."""
        if bitness is None:
            hf = self.blob.load().hflags
            bitness = 64 if hf & CB.HF_CS64 else (32 if hf & CB.HF_CS32 else 16)
        hpa = self._code_hpa(linear)
        if hpa is None or (linear & 0xFFF) > PAGE - 15:
            return I.Decoder(bitness, self.fetch_bytes(linear), ip=linear).decode()
        view = self.mem.view
        key = (linear, hpa, bitness)
        hit = self._decoded.get(key)
        if hit is not None and view[hpa:hpa + len(hit[0])] == hit[0]:
            return hit[1]
        insn = I.Decoder(bitness, bytes(view[hpa:hpa + 15]), ip=linear).decode()
        if len(self._decoded) > 4096:
            self._decoded.clear()
        self._decoded[key] = (bytes(view[hpa:hpa + max(insn.len, 1)]), insn)
        return insn


class _NonCanonical(Exception):
    def __init__(self, linear: int):
        super().__init__(f"non-canonical address {linear:#x}")
        self.linear = linear


def fault_of_fill(exc: BaseException, stack: bool) -> tuple[int, int | None, int | None] | None:
    """(vector, error code, cr2) for a fill refusal that is a guest exception, else None."""
    if isinstance(exc, PageFault):
        return EV.PF, exc.error_code, exc.linear
    if isinstance(exc, _NonCanonical):
        return (EV.SS if stack else EV.GP), 0, None
    return None
