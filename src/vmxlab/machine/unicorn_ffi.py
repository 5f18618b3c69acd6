"""Raw ctypes access to libunicorn for the machine's hot paths.

The Python binding of unicorn 2.1.4 costs 30+ us for a batch register read and
wraps every hook callback in a decorator; this module calls the C library
directly (`uc_reg_read_batch` / `uc_reg_write_batch` with preallocated arrays,
`uc_hook_add` with our own CFUNCTYPE callbacks, `uc_context_save` into a
preallocated context).  Measured facts it relies on are in
../shared/notes/unicorn.md; every quirk that matters is repeated where it is used.

Nothing here knows x86 semantics: it is a thin, allocation-free layer over the
engine handle.  The `Uc` object of the binding is still created (it owns the
engine's lifetime and maps memory), but no binding call is made on a hot path.
"""
from __future__ import annotations

import ctypes
import functools
import struct
from typing import Callable, Sequence

from unicorn import Uc, UcError
from unicorn import unicorn_const as UC
from unicorn import x86_const as X
from unicorn.unicorn_py3.unicorn import uclib

c_void_p, c_uint64, c_uint32, c_int, c_bool = (ctypes.c_void_p, ctypes.c_uint64, ctypes.c_uint32,
                                               ctypes.c_int, ctypes.c_bool)


class TlbEntry(ctypes.Structure):
    """struct uc_tlb_entry (unicorn.h): what a UC_HOOK_TLB_FILL callback returns."""
    _fields_ = (("paddr", c_uint64), ("perms", c_uint32))


# Native callback signatures (unicorn.h / x86.h).
CODE_CB = ctypes.CFUNCTYPE(None, c_void_p, c_uint64, c_uint32, c_void_p)
INTR_CB = ctypes.CFUNCTYPE(None, c_void_p, c_uint32, c_void_p)
INSN_INVALID_CB = ctypes.CFUNCTYPE(c_bool, c_void_p, c_void_p)
TLB_FILL_CB = ctypes.CFUNCTYPE(c_bool, c_void_p, c_uint64, c_int, ctypes.POINTER(TlbEntry), c_void_p)
IN_CB = ctypes.CFUNCTYPE(c_uint32, c_void_p, c_uint32, c_int, c_void_p)
OUT_CB = ctypes.CFUNCTYPE(None, c_void_p, c_uint32, c_int, c_uint32, c_void_p)
SYSCALL_CB = ctypes.CFUNCTYPE(None, c_void_p, c_void_p)

# Translated-code buffer per engine (unicorn's default reserves 1 GiB of address
# space per engine; vmxlab's guests are small and tests create many machines).
TCG_BUFFER = 64 << 20

# Access types a TLB fill receives (uc_mem_type).
ACCESS_READ, ACCESS_WRITE, ACCESS_FETCH = UC.UC_MEM_READ, UC.UC_MEM_WRITE, UC.UC_MEM_FETCH
PROT_READ, PROT_WRITE, PROT_EXEC = UC.UC_PROT_READ, UC.UC_PROT_WRITE, UC.UC_PROT_EXEC

_ctl = uclib.uc_ctl
_hook_add = uclib.uc_hook_add
_hook_del = uclib.uc_hook_del
# Hot functions through a second handle of the same library without argtypes:
# ctypes then skips argument conversion (about half the cost of a call); callers
# pass ctypes objects only.  The quick ones (register and context copies: no
# hooks, no waiting) go through a PyDLL handle, which keeps the GIL instead of
# releasing and retaking it around the call (about a third of their cost);
# uc_emu_start must release it (the watchdog thread stops runaway guests).
_raw = ctypes.CDLL(uclib._name)
_quick = ctypes.PyDLL(uclib._name)
_emu_start = _raw.uc_emu_start
_emu_stop = _raw.uc_emu_stop
_read_batch = _quick.uc_reg_read_batch
_write_batch = _quick.uc_reg_write_batch
_reg_write = _quick.uc_reg_write
_ctx_save = _quick.uc_context_save
_ctx_restore = _quick.uc_context_restore
for _f in (_emu_start, _emu_stop, _read_batch, _write_batch, _reg_write, _ctx_save, _ctx_restore):
    _f.restype = c_int
_RIP_ID = c_int(X.UC_X86_REG_RIP)


def _ctl_code(ctl: int, op: int, nargs: int) -> int:
    return (op << 30) | (nargs << 26) | ctl


_CTL_TLB_FLUSH = _ctl_code(UC.UC_CTL_TLB_FLUSH, UC.UC_CTL_IO_WRITE, 0)
_CTL_TB_FLUSH = _ctl_code(UC.UC_CTL_TB_FLUSH, UC.UC_CTL_IO_WRITE, 0)
_CTL_TB_REMOVE = _ctl_code(UC.UC_CTL_TB_REMOVE_CACHE, UC.UC_CTL_IO_WRITE, 2)


def version() -> tuple[int, int]:
    major, minor = ctypes.c_int(), ctypes.c_int()
    uclib.uc_version(ctypes.byref(major), ctypes.byref(minor))
    return major.value, minor.value


class RegBatch:
    """A fixed list of 64-bit registers read or written with one C call (~1 us).

    `values` is a preallocated ctypes array: `read()` fills it, `write()` sends
    it.  Index it with the position of the register in the list.

    Quirk (unicorn 2.1.4): uc_reg_write_batch stores RIP but, unlike uc_reg_write,
    does not make a running engine continue at the new RIP (inside a hook the
    write is lost).  When RIP is in the batch, write() also writes it alone.
    `pc_writes` counts those RIP writes (a RIP write inside a hook ends the
    translated block: the machine's inline clients rely on it).
    """

    __slots__ = ("_h", "ids", "values", "_ptrs", "_n", "_pc", "_pc_ptr", "_read", "_write", "_write_pc",
                 "pc_writes")

    def __init__(self, handle, ids: Sequence[int], read_only: Sequence[int] = ()):
        n = len(ids)
        self._h = handle
        self._n = c_int(n)
        self.ids = (c_int * n)(*ids)
        self.values = (c_uint64 * n)()
        base = ctypes.addressof(self.values)
        self._ptrs = (c_void_p * n)(*[base + 8 * i for i in range(n)])
        self._pc = list(ids).index(X.UC_X86_REG_RIP) if X.UC_X86_REG_RIP in ids else -1
        self._pc_ptr = c_void_p(base + 8 * self._pc) if self._pc >= 0 else None
        self._read = functools.partial(_read_batch, handle, self.ids, self._ptrs, self._n)
        # `read_only` registers are left out of write(): writing CR3 (even unchanged)
        # makes QEMU flush its whole TLB, and CR0/CR4 writes have side effects too
        w = [i for i, r in enumerate(ids) if r not in read_only]
        wids = (c_int * len(w))(*[ids[i] for i in w])
        wptrs = (c_void_p * len(w))(*[base + 8 * i for i in w])
        self._write = functools.partial(_write_batch, handle, wids, wptrs, c_int(len(w)))
        self._write_pc = functools.partial(_reg_write, handle, _RIP_ID, self._pc_ptr) if self._pc >= 0 else None
        self.pc_writes = 0

    def read(self) -> ctypes.Array:
        self._read()
        return self.values

    def write(self) -> None:
        self._write()
        if self._write_pc is not None:
            self._write_pc()
            self.pc_writes += 1

    def write_pc(self) -> None:
        """Write RIP alone from `values` (inside a hook: continue there)."""
        self._write_pc()
        self.pc_writes += 1


class _Msr(ctypes.Structure):
    """uc_x86_msr (x86.h): {uint32_t rid; uint64_t value}."""
    _fields_ = (("rid", c_uint32), ("value", c_uint64))


class MsrBatch:
    """A fixed list of MSRs read or written with one uc_reg_*_batch call
    (unicorn runs its own RDMSR/WRMSR helper for each: use only for MSRs whose
    values unicorn holds, e.g. STAR, LSTAR, SYSENTER_*, KERNEL_GS_BASE)."""

    __slots__ = ("_h", "ids", "structs", "_ptrs", "_n", "indices", "_mv", "_values", "_entries")

    def __init__(self, handle: int, indices: Sequence[int]):
        n = len(indices)
        self._h = handle
        self._n = n
        self.indices = tuple(indices)
        self.ids = (c_int * n)(*([X.UC_X86_REG_MSR] * n))
        self.structs = (_Msr * n)(*[_Msr(i, 0) for i in indices])
        base = ctypes.addressof(self.structs)
        size = ctypes.sizeof(_Msr)
        self._ptrs = (c_void_p * n)(*[base + size * i for i in range(n)])
        # the structs' bytes, read and written with one struct call (ctypes field access
        # costs about 0.3 us a field)
        self._mv = memoryview(self.structs).cast("B")
        off, tail = _Msr.value.offset, size - _Msr.value.offset - 8
        self._values = struct.Struct("<" + f"{off}xQ{tail}x" * n)
        self._entries = struct.Struct("<" + f"I{off - 4}xQ{tail}x" * n)

    def read(self) -> list[int]:
        _read_batch(self._h, self.ids, self._ptrs, self._n)
        return list(self._values.unpack_from(self._mv))

    def write(self, values: Sequence[int]) -> None:
        pairs = []
        for index, value in zip(self.indices, values):
            pairs += (index, value & 0xFFFFFFFFFFFFFFFF)
        self._entries.pack_into(self._mv, 0, *pairs)
        _write_batch(self._h, self.ids, self._ptrs, self._n)


class Engine:
    """One unicorn x86-64 engine with memory mapped from a host buffer.

    Callbacks registered here must never raise: `guard()` wraps them so that an
    exception is stored in `self.error`, emulation is stopped, and `start()`
    re-raises it in the caller's frame.
    """

    def __init__(self, cpu_model: int, tlb_virtual: bool = True):
        self.uc = Uc(UC.UC_ARCH_X86, UC.UC_MODE_64, cpu_model)
        self.uc.ctl_set_tcg_buffer_size(TCG_BUFFER)
        self.handle = self.uc._uch
        if tlb_virtual:
            self.uc.ctl_set_tlb_mode(UC.UC_TLB_VIRTUAL)
        # With exits enabled and no exit address, emu_start's `until` is ignored:
        # code at linear address 0 must not end the run.
        self.uc.ctl_exits_enabled(True)
        self.uc.ctl_set_exits([])
        self._keep: dict[int, object] = {}
        self.error: BaseException | None = None
        self._zero = c_uint64(0)
        self._stop = functools.partial(_emu_stop, self.handle)

    # -- memory ----------------------------------------------------------------------
    def map_host(self, address: int, size: int, host_address: int) -> None:
        self.uc.mem_map_ptr(address, size, UC.UC_PROT_ALL, host_address)

    # -- hooks -----------------------------------------------------------------------
    def guard(self, fn: Callable, default=None) -> Callable:
        """Wrap a Python callback so that exceptions stop emulation instead of
        being printed and swallowed by ctypes."""
        engine = self

        def guarded(*args):
            try:
                return fn(*args)
            except BaseException as e:      # noqa: BLE001 - re-raised by start()
                if engine.error is None:
                    engine.error = e
                _emu_stop(engine.handle)
                return default
        guarded.__wrapped__ = fn
        return guarded

    def add_hook(self, htype: int, cfunc, begin: int = 1, end: int = 0, extra: int | None = None) -> int:
        h = ctypes.c_size_t()
        if extra is None:
            err = _hook_add(self.handle, ctypes.byref(h), htype, ctypes.cast(cfunc, c_void_p), None,
                            c_uint64(begin), c_uint64(end))
        else:
            err = _hook_add(self.handle, ctypes.byref(h), htype, ctypes.cast(cfunc, c_void_p), None,
                            c_uint64(begin), c_uint64(end), c_int(extra))
        if err:
            raise UcError(err)
        self._keep[h.value] = cfunc
        return h.value

    def del_hook(self, handle: int) -> None:
        err = _hook_del(self.handle, ctypes.c_size_t(handle))
        if err:
            raise UcError(err)
        self._keep.pop(handle, None)

    # -- run control -----------------------------------------------------------------
    def start(self, begin: int, count: int = 0) -> int:
        """uc_emu_start(begin, until ignored, no timeout, count); returns the uc_err code."""
        self.error = None
        z = self._zero
        err = _emu_start(self.handle, c_uint64(begin), z, z, ctypes.c_size_t(count))
        if self.error is not None:
            e, self.error = self.error, None
            raise e
        return err

    def stop(self) -> None:
        self._stop()

    # -- caches ----------------------------------------------------------------------
    def flush_tlb(self) -> None:
        """Drop every softmmu TLB entry: the next access to each page calls the fill hook."""
        _ctl(self.handle, _CTL_TLB_FLUSH)

    def flush_tb(self) -> None:
        """Drop every translated block (needed after host writes to code in UC_TLB_VIRTUAL mode)."""
        _ctl(self.handle, _CTL_TB_FLUSH)

    def remove_tb(self, begin: int, end: int) -> None:
        """Drop the translated blocks covering linear [begin, end)."""
        _ctl(self.handle, _CTL_TB_REMOVE, c_uint64(begin), c_uint64(end))

    # -- contexts --------------------------------------------------------------------
    def context_alloc(self) -> tuple[c_void_p, int]:
        ctx = c_void_p()
        err = uclib.uc_context_alloc(self.handle, ctypes.byref(ctx))
        if err:
            raise UcError(err)
        return ctx, uclib.uc_context_size(self.handle)

    def context_save(self, ctx: c_void_p) -> None:
        _ctx_save(self.handle, ctx)

    def context_restore(self, ctx: c_void_p) -> None:
        _ctx_restore(self.handle, ctx)

    # -- single registers through the binding (cold paths only) ---------------------
    def reg_read(self, reg: int):
        return self.uc.reg_read(reg)

    def reg_write(self, reg: int, value) -> None:
        self.uc.reg_write(reg, value)

    def msr_read(self, index: int) -> int:
        return self.uc.msr_read(index)

    def msr_write(self, index: int, value: int) -> None:
        self.uc.msr_write(index, value)


__all__ = ["Engine", "RegBatch", "MsrBatch", "TlbEntry", "CODE_CB", "INTR_CB", "INSN_INVALID_CB", "TLB_FILL_CB",
           "IN_CB", "OUT_CB", "SYSCALL_CB", "ACCESS_READ", "ACCESS_WRITE", "ACCESS_FETCH",
           "PROT_READ", "PROT_WRITE", "PROT_EXEC", "UC", "X", "UcError", "version"]
