"""The unicorn context blob: processor state unicorn's API does not expose.

unicorn 2.1.4 cannot set hidden segment state (base, limit, attributes) through
`uc_reg_write` in 64-bit mode, never clears QEMU's "exception in flight" marker
(`env->old_exception`, which turns the second #PF into #DF), and keeps exception
error codes, the interrupt shadow and the NMI mask only inside QEMU's
CPUX86State.  `uc_context_save` copies that structure into a context buffer and
`uc_context_restore` copies it back: this module reads and patches the copy.

Offsets are not hard-coded: `layout()` derives them once per process with a
self-test on a scratch engine (markers written through the API are located in the
blob; an executed #GP and INT n check the exception fields; STI checks the
interrupt-shadow bit) and raises `UnsupportedUnicorn` naming the failed check
when the build is not the one this was written for (unicorn 2.1.4 wheel).

QEMU facts used (target/i386/cpu.h of the QEMU 5.0 tree inside unicorn 2.1):
CPUX86State starts with regs[16], eip, eflags, cc_dst, cc_src, cc_src2, cc_op,
df, hflags, hflags2, segs[6], ldt, tr, gdt, idt, cr[5]; much later error_code,
exception_is_int, exception_next_eip, dr[8], 4 breakpoint pointers,
old_exception.  A SegmentCache is {u32 selector; u64 base; u32 limit; u32 flags}
(24 bytes) with `flags` the high dword of the descriptor (type at bit 8, S 12,
DPL 13-14, P 15, AVL 20, L 21, D/B 22, G 23).

Writes into the blob take effect only when done between runs or inside an
interrupt / invalid-instruction hook (not inside a code hook: notes/unicorn.md).
Never call the register API between `load()` and `store()`: `store()` writes the
whole structure back.
"""
from __future__ import annotations

import ctypes
import struct
from dataclasses import dataclass

from . import unicorn_ffi as ffi
from .unicorn_ffi import X

# hflags bits (QEMU target/i386/cpu.h, HF_*_SHIFT)
HF_CPL_MASK = 3
HF_INHIBIT_IRQ = 1 << 3
HF_CS32 = 1 << 4
HF_SS32 = 1 << 5
HF_ADDSEG = 1 << 6
HF_PE = 1 << 7
HF_TS = 1 << 11
HF_LMA = 1 << 14
HF_CS64 = 1 << 15
# hflags2 bits
HF2_NMI = 1 << 2

# Segment-cache flag bits (descriptor high dword positions).
DESC_TYPE_SHIFT = 8
DESC_S = 1 << 12
DESC_DPL_SHIFT = 13
DESC_P = 1 << 15
DESC_L = 1 << 21
DESC_B = 1 << 22
DESC_G = 1 << 23

ES, CS, SS, DS, FS, GS = range(6)
LDT, TR, GDT, IDT = 6, 7, 8, 9       # cache slots after the six segment registers
SLOT_NAMES = ("ES", "CS", "SS", "DS", "FS", "GS", "LDTR", "TR", "GDTR", "IDTR")


class UnsupportedUnicorn(RuntimeError):
    """The unicorn build's context blob does not have the layout vmxlab expects."""


def ar_to_flags(ar: int) -> int:
    """VMCS access rights (bits 7:0, 15:12; bit 16 unusable) -> QEMU segment flags.

    An unusable segment is stored not present (P = 0), as QEMU does for a null
    selector; its other attribute bits are kept.
    """
    flags = (ar & 0xF0FF) << 8
    if ar & 0x10000:
        flags &= ~DESC_P
    return flags


def flags_to_ar(flags: int, usable_if_present: bool = True) -> int:
    """QEMU segment flags -> VMCS access rights; not present reads as unusable."""
    ar = (flags >> 8) & 0xF0FF
    if not flags & DESC_P:
        ar |= 0x10000
    return ar


@dataclass(frozen=True)
class BlobLayout:
    size: int
    header: int          # offset of CPUX86State
    regs: int
    eip: int
    eflags: int
    hflags: int
    hflags2: int
    segs: int            # ES, CS, SS, DS, FS, GS, LDT, TR, GDT, IDT caches, 24 bytes each
    cr: int
    dr: int
    error_code: int
    exception_is_int: int
    exception_next_eip: int
    old_exception: int
    xcr0: int | None
    efer: int = 0


_U32 = struct.Struct("<I").unpack_from
_CR034 = struct.Struct("<Q16xQQ").unpack_from      # cr[0], cr[3], cr[4] of cr[5]
_U64 = struct.Struct("<Q").unpack_from
_SET_U64 = struct.Struct("<Q").pack_into
_I32 = struct.Struct("<i")
_FLAGS = struct.Struct("<II")                      # hflags, hflags2 (adjacent)


class ContextBlob:
    """A preallocated unicorn context bound to one engine, with typed accessors."""

    def __init__(self, engine: ffi.Engine, lay: BlobLayout):
        self.engine = engine
        self.layout = lay
        self.ctx, size = engine.context_alloc()
        if size != lay.size:
            raise UnsupportedUnicorn(f"context size {size} differs from the self-tested {lay.size}")
        self.mv = memoryview((ctypes.c_char * size).from_address(self.ctx.value)).cast("B")
        self._seg = struct.Struct("<I4xQII")
        self._segs = struct.Struct("<" + "I4xQII" * 10)
        # (offsets as plain attributes: the state transfers read these on every VM exit and entry)
        self._hf_at, self._efer_at, self._xcr0_at = lay.hflags, lay.efer, lay.xcr0
        self._old_exc_at = lay.old_exception

    def load(self) -> "ContextBlob":
        self.engine.context_save(self.ctx)
        return self

    def store(self) -> None:
        self.engine.context_restore(self.ctx)

    # -- raw fields ------------------------------------------------------------------
    def u32(self, off: int) -> int:
        return struct.unpack_from("<I", self.mv, off)[0]

    def set_u32(self, off: int, value: int) -> None:
        struct.pack_into("<I", self.mv, off, value & 0xFFFFFFFF)

    def i32(self, off: int) -> int:
        return struct.unpack_from("<i", self.mv, off)[0]

    def set_i32(self, off: int, value: int) -> None:
        struct.pack_into("<i", self.mv, off, value)

    def u64(self, off: int) -> int:
        return struct.unpack_from("<Q", self.mv, off)[0]

    def set_u64(self, off: int, value: int) -> None:
        struct.pack_into("<Q", self.mv, off, value & 0xFFFFFFFFFFFFFFFF)

    # -- named fields ----------------------------------------------------------------
    @property
    def hflags(self) -> int:
        return _U32(self.mv, self._hf_at)[0]              # (read on every hot path)

    def flags(self) -> tuple[int, int]:
        """(hflags, hflags2) with one read."""
        return _FLAGS.unpack_from(self.mv, self._hf_at)

    def set_flags(self, hflags: int, hflags2: int) -> None:
        _FLAGS.pack_into(self.mv, self._hf_at, hflags & 0xFFFFFFFF, hflags2 & 0xFFFFFFFF)

    def paging_regs(self) -> tuple[int, int, int]:
        """(CR0, CR3, CR4): QEMU's env->cr[], which uc_reg_read returns for them."""
        return _CR034(self.mv, self.layout.cr)

    @hflags.setter
    def hflags(self, value: int) -> None:
        self.set_u32(self.layout.hflags, value)

    @property
    def hflags2(self) -> int:
        return self.u32(self.layout.hflags2)

    @hflags2.setter
    def hflags2(self, value: int) -> None:
        self.set_u32(self.layout.hflags2, value)

    def cache(self, slot: int) -> tuple[int, int, int, int]:
        """(selector, base, limit, flags) of a segment / LDTR / TR / GDTR / IDTR cache."""
        return self._seg.unpack_from(self.mv, self.layout.segs + 24 * slot)

    def caches(self) -> tuple[int, ...]:
        """All ten caches at once: (selector, base, limit, flags) x ES..GS, LDT, TR, GDT, IDT."""
        return self._segs.unpack_from(self.mv, self.layout.segs)

    def set_caches(self, values) -> None:
        """All ten caches at once (the flat sequence caches() returns; values in range)."""
        self._segs.pack_into(self.mv, self.layout.segs, *values)

    def set_cache(self, slot: int, selector: int, base: int, limit: int, flags: int) -> None:
        self._seg.pack_into(self.mv, self.layout.segs + 24 * slot, selector & 0xFFFF,
                            base & 0xFFFFFFFFFFFFFFFF, limit & 0xFFFFFFFF, flags & 0xFFFFFFFF)

    @property
    def error_code(self) -> int:
        return self.i32(self.layout.error_code)

    @property
    def exception_is_int(self) -> bool:
        return bool(self.i32(self.layout.exception_is_int))

    @property
    def exception_next_eip(self) -> int:
        return self.u64(self.layout.exception_next_eip)

    @property
    def old_exception(self) -> int:
        return _I32.unpack_from(self.mv, self._old_exc_at)[0]

    def clear_exception_in_flight(self) -> None:
        """QEMU's check_exception() escalates a second #PF/contributory fault to
        #DF while old_exception != -1; unicorn never resets it."""
        _I32.pack_into(self.mv, self._old_exc_at, -1)

    @property
    def efer(self) -> int:
        return _U64(self.mv, self._efer_at)[0]

    def set_efer(self, value: int) -> None:
        """IA32_EFER exactly (QEMU's WRMSR keeps LMA, which only CR0.PG changes)
        and the matching HF_LMA bit of hflags."""
        self.set_u64(self.layout.efer, value)
        hf = self.hflags & ~HF_LMA
        if value & (1 << 10):
            hf |= HF_LMA
        self.hflags = hf

    @property
    def xcr0(self) -> int:
        if self._xcr0_at is None:
            raise UnsupportedUnicorn("XCR0 was not located in this unicorn build's context")
        return _U64(self.mv, self._xcr0_at)[0]

    @xcr0.setter
    def xcr0(self, value: int) -> None:
        if self._xcr0_at is None:
            raise UnsupportedUnicorn("XCR0 was not located in this unicorn build's context")
        _SET_U64(self.mv, self._xcr0_at, value & 0xFFFFFFFFFFFFFFFF)

    def recompute_segment_hflags(self, cr0: int, rflags: int) -> None:
        """hflags bits QEMU derives when a segment cache is loaded
        (cpu_x86_load_seg_cache): CPL = SS.DPL, CS32/CS64 from CS.D/L with LMA,
        SS32 from SS.B, ADDSEG.  Call after patching caches and after CR0/EFER are final."""
        hf = self.hflags
        cs_flags = self.cache(CS)[3]
        ss_flags = self.cache(SS)[3]
        if hf & HF_LMA and cs_flags & DESC_L:
            hf |= HF_CS32 | HF_SS32 | HF_CS64
        else:
            hf &= ~(HF_CS32 | HF_CS64)
            if cs_flags & DESC_B:
                hf |= HF_CS32
        hf = (hf & ~HF_CPL_MASK) | ((ss_flags >> DESC_DPL_SHIFT) & 3)
        new = HF_SS32 if ss_flags & DESC_B else 0
        if hf & HF_CS64:
            pass
        elif not cr0 & 1 or rflags & (1 << 17) or not hf & HF_CS32:
            new |= HF_ADDSEG
        elif self.cache(DS)[1] | self.cache(ES)[1] | self.cache(SS)[1]:
            new |= HF_ADDSEG
        self.hflags = (hf & ~(HF_SS32 | HF_ADDSEG)) | new


# ---- self-test -------------------------------------------------------------------------
_LAYOUT: BlobLayout | None = None


def layout(cpu_model: int) -> BlobLayout:
    """The blob layout of this unicorn build, derived and verified once per process."""
    global _LAYOUT
    if _LAYOUT is None:
        _LAYOUT = _derive(cpu_model)
    return _LAYOUT


def _fail(what: str) -> UnsupportedUnicorn:
    major, minor = ffi.version()
    return UnsupportedUnicorn(
        f"unicorn {major}.{minor}: context-blob self-test failed ({what}); vmxlab's machine "
        f"needs the unicorn 2.1.4 wheel pinned in pyproject.toml")


def _find_u64(raw: bytes, value: int) -> list[int]:
    pat = struct.pack("<Q", value)
    out, i = [], raw.find(pat)
    while i >= 0:
        out.append(i)
        i = raw.find(pat, i + 1)
    return out


def _derive(cpu_model: int) -> BlobLayout:
    eng = ffi.Engine(cpu_model, tlb_virtual=False)
    ctx, size = eng.context_alloc()

    def snap() -> bytes:
        eng.context_save(ctx)
        return ctypes.string_at(ctx.value, size)

    u32 = lambda raw, off: struct.unpack_from("<I", raw, off)[0]          # noqa: E731
    u64 = lambda raw, off: struct.unpack_from("<Q", raw, off)[0]          # noqa: E731

    eng.reg_write(X.UC_X86_REG_RAX, 0x5A17C0DE1234ABCD)
    eng.reg_write(X.UC_X86_REG_RCX, 0x5A17C0DE1234ABCE)
    eng.reg_write(X.UC_X86_REG_R15, 0x5A17C0DE1234ABCF)
    eng.reg_write(X.UC_X86_REG_RIP, 0x5A17C0DE12340000)
    raw = snap()
    hits = _find_u64(raw, 0x5A17C0DE1234ABCD)
    if len(hits) != 1:
        raise _fail("RAX marker not found exactly once")
    h = hits[0]
    if u64(raw, h + 8) != 0x5A17C0DE1234ABCE or u64(raw, h + 15 * 8) != 0x5A17C0DE1234ABCF:
        raise _fail("general registers are not regs[16] in QEMU order")
    if u64(raw, h + 128) != 0x5A17C0DE12340000:
        raise _fail("eip does not follow regs[16]")
    hflags, hflags2, segs = h + 176, h + 180, h + 184
    cr = segs + 10 * 24
    # hflags: CR0.TS toggles HF_TS (bit 11) and nothing else.
    cr0 = eng.reg_read(X.UC_X86_REG_CR0)
    eng.reg_write(X.UC_X86_REG_CR0, cr0 & ~8)
    a = u32(snap(), hflags)
    eng.reg_write(X.UC_X86_REG_CR0, cr0 | 8)
    b = u32(snap(), hflags)
    eng.reg_write(X.UC_X86_REG_CR0, cr0)
    if a ^ b != HF_TS:
        raise _fail(f"hflags not at +{hflags - h} (CR0.TS toggled {a ^ b:#x})")
    if not b & HF_LMA:
        raise _fail("hflags of a 64-bit engine lacks HF_LMA")
    # segment caches, descriptor-table caches, control registers
    eng.reg_write(X.UC_X86_REG_CS, 0x33)
    eng.reg_write(X.UC_X86_REG_FS_BASE, 0x5A17000011112222)
    eng.reg_write(X.UC_X86_REG_LDTR, (0x28, 0x5A17000033330000, 0x1234, 0x8200))
    eng.reg_write(X.UC_X86_REG_TR, (0x40, 0x5A17000044440000, 0x67, 0x8B00))
    eng.reg_write(X.UC_X86_REG_GDTR, (0, 0x5A17000055550000, 0x3FF, 0))
    eng.reg_write(X.UC_X86_REG_IDTR, (0, 0x5A17000066660000, 0xFFF, 0))
    eng.reg_write(X.UC_X86_REG_CR3, 0x5A17000)
    eng.reg_write(X.UC_X86_REG_DR0, 0x5A17000077770000)
    raw = snap()
    seg = struct.Struct("<I4xQII")
    if seg.unpack_from(raw, segs + 24 * CS)[0] != 0x33:
        raise _fail("CS selector not in segs[1]")
    if seg.unpack_from(raw, segs + 24 * FS)[1] != 0x5A17000011112222:
        raise _fail("FS base not in segs[4]")
    if seg.unpack_from(raw, segs + 24 * LDT)[:3] != (0x28, 0x5A17000033330000, 0x1234):
        raise _fail("LDTR cache not after segs[6]")
    if seg.unpack_from(raw, segs + 24 * TR)[:3] != (0x40, 0x5A17000044440000, 0x67):
        raise _fail("TR cache not after LDTR")
    if seg.unpack_from(raw, segs + 24 * GDT)[1:3] != (0x5A17000055550000, 0x3FF):
        raise _fail("GDTR cache not after TR")
    if seg.unpack_from(raw, segs + 24 * IDT)[1:3] != (0x5A17000066660000, 0xFFF):
        raise _fail("IDTR cache not after GDTR")
    if u64(raw, cr + 3 * 8) != 0x5A17000:
        raise _fail("cr[3] not after the IDTR cache")
    hits = _find_u64(raw, 0x5A17000077770000)
    if len(hits) != 1:
        raise _fail("DR0 marker not found exactly once")
    dr = hits[0]
    error_code, is_int, next_eip, old_exc = dr - 16, dr - 12, dr - 8, dr + 8 * 8 + 4 * 8
    # IA32_EFER: the u64 that follows two different WRMSRs (LMA stays set in a 64-bit engine)
    found = []
    for value in (0x901, 0x101):
        eng.msr_write(0xC0000080, value)
        found.append(set(_find_u64(snap(), value | 0x400)))
    efer_candidates = sorted(found[0] & found[1])
    if len(efer_candidates) != 1:
        raise _fail("IA32_EFER not found exactly once")
    efer_off = efer_candidates[0]
    fresh = ffi.Engine(cpu_model, tlb_virtual=False)
    fctx, _ = fresh.context_alloc()
    fresh.context_save(fctx)
    if struct.unpack_from("<i", ctypes.string_at(fctx.value, size), old_exc)[0] != -1:
        raise _fail("old_exception of a fresh engine is not -1")
    lay = BlobLayout(size=size, header=h, regs=h, eip=h + 128, eflags=h + 136, hflags=hflags,
                     hflags2=hflags2, segs=segs, cr=cr, dr=dr, error_code=error_code,
                     exception_is_int=is_int, exception_next_eip=next_eip, old_exception=old_exc,
                     xcr0=None, efer=efer_off)
    _check_exceptions(cpu_model, lay)
    xcr0 = _find_xcr0(cpu_model, lay)
    _check_inhibit(cpu_model, lay)
    return BlobLayout(**{**lay.__dict__, "xcr0": xcr0})


def _scratch(cpu_model: int, code: bytes) -> ffi.Engine:
    """An engine in flat 64-bit mode without paging, code at 0x1000, stack below 0x8000."""
    from unicorn import UC_PROT_ALL
    eng = ffi.Engine(cpu_model, tlb_virtual=False)
    eng.uc.mem_map(0, 0x10000, UC_PROT_ALL)
    eng.uc.mem_write(0x1000, code)
    eng.reg_write(X.UC_X86_REG_RSP, 0x8000)
    eng.reg_write(X.UC_X86_REG_GDTR, (0, 0x2000, 0x17, 0))
    eng.uc.mem_write(0x2000, struct.pack("<QQQ", 0, 0x00AF9B000000FFFF, 0x00CF93000000FFFF))
    return eng


def _check_exceptions(cpu_model: int, lay: BlobLayout) -> None:
    # mov ax, 0x7f8 ; mov ds, ax   -> #GP(0x7f8): the selector is beyond the GDT limit.
    # int 0x80 (after a jump target) -> software interrupt with next eip.
    code = bytes.fromhex("66b8f807" "8ed8" "cd80" "f4")
    eng = _scratch(cpu_model, code)
    seen: list[tuple[int, int, int, int, int]] = []
    blob = ContextBlob(eng, lay)

    def on_intr(uc, intno, ud):
        blob.load()
        seen.append((intno, blob.error_code, blob.old_exception, int(blob.exception_is_int),
                     blob.exception_next_eip))
        blob.clear_exception_in_flight()
        if intno == 13:          # skip the faulting mov ds, ax
            blob.set_u64(lay.eip, 0x1006)
        blob.store()
    cb = ffi.INTR_CB(eng.guard(on_intr))
    eng.add_hook(ffi.UC.UC_HOOK_INTR, cb)
    eng.start(0x1000)
    if len(seen) < 2:
        raise _fail(f"self-test guest raised {seen} instead of #GP then INT 0x80")
    gp, sw = seen[0], seen[1]
    if gp[:4] != (13, 0x7F8, 13, 0):
        raise _fail(f"#GP(0x7f8) seen as (vector, error code, old_exception, is_int) = {gp[:4]}")
    if sw[0] != 0x80 or sw[3] != 1 or sw[4] != 0x1008:
        raise _fail(f"INT 0x80 seen as (vector, is_int, next_eip) = {sw[0]}, {sw[3]}, {sw[4]:#x}")


def _find_xcr0(cpu_model: int, lay: BlobLayout) -> int | None:
    # xsetbv with XCR0 = 3, then 7: the one u64 that takes both values is XCR0.
    found: list[set[int]] = []
    for value in (3, 7):
        code = bytes.fromhex("31c9" "31d2") + b"\xb8" + struct.pack("<I", value) + bytes.fromhex("0f01d1" "f4")
        eng = _scratch(cpu_model, code)
        eng.reg_write(X.UC_X86_REG_CR4, eng.reg_read(X.UC_X86_REG_CR4) | (1 << 18))
        try:
            eng.start(0x1000)
        except ffi.UcError:
            return None
        blob = ContextBlob(eng, lay).load()
        raw = bytes(blob.mv)
        found.append({o for o in _find_u64(raw, value) if o > lay.cr})
    both = found[0] & found[1]
    return both.pop() if len(both) == 1 else None


def _check_inhibit(cpu_model: int, lay: BlobLayout) -> None:
    # sti ; nop ; hlt with a code hook on the nop: the STI shadow is HF_INHIBIT_IRQ.
    eng = _scratch(cpu_model, bytes.fromhex("fb90f4"))
    blob = ContextBlob(eng, lay)
    seen = []

    def on_code(uc, address, size, ud):
        blob.load()
        seen.append(blob.hflags & HF_INHIBIT_IRQ)
    cb = ffi.CODE_CB(eng.guard(on_code))
    eng.add_hook(ffi.UC.UC_HOOK_CODE, cb, 0x1001, 0x1001)
    eng.start(0x1000)
    if seen != [HF_INHIBIT_IRQ]:
        raise _fail("the STI shadow is not hflags bit 3")
