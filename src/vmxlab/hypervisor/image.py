"""Guest images for `vmxlab run`: a flat 64-bit binary or an ELF64 executable, loaded
into the identity-mapped memory of the built-in kernel (guests/kernel.asm) and
called by it as its workload.

Physical memory during a run (64 MiB of RAM; the kernel identity-maps the first GiB
with 2-MiB pages, so linear = physical for every image address):

  0x0000000-0x00fffff  the built-in kernel: code at 0x8000, page tables 0x20000-0x22fff,
                       stacks up to 0x98000, GDT, IDT, TSS (reserved)
  0x0300000-0x0301fff  the blue-pill scene: the driver stub and the built-in workload (reserved)
  0x0400000-0x04fffff  the hypervisor's memory: VMXON region, VMCS, MSR bitmap, host
                       stack, EPT tables (reserved)
  0x1000000            FLAT_BASE: where a flat binary is loaded; its entry is its first byte
  up to 0x3ffffff      the end of RAM

Everything else is free for ELF segments.  The image runs in 64-bit mode at CPL 0
on the kernel's stack, with RDI = the kernel's services table (putc(dil),
puts(rsi), print_hex(rdi): three qwords) and IF = 0; when it returns the kernel
prints "kernel: done" and halts.

ELF rules (System V ABI / ELF-64 Object File Format): ELFCLASS64, little-endian
(ELFDATA2LSB), EI_VERSION 1, e_type ET_EXEC, e_machine EM_X86_64; program headers
of 56 bytes inside the file; at least one PT_LOAD; no PT_INTERP or PT_DYNAMIC
(nothing would link it); each PT_LOAD with p_filesz <= p_memsz, its file bytes
inside the file, p_vaddr == p_paddr (identity paging), inside RAM, clear of the
reserved areas above and of the other segments; e_entry inside the file bytes of
a PT_LOAD segment.  Bytes between p_filesz and p_memsz (.bss) are zeroed.  Other
program headers (PT_NOTE, PT_GNU_STACK, PT_TLS ...) are ignored.

Every problem is an ImageError (a BadInput): one line naming the file and the
offending value; the command line prints it and exits with status 2.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field

from ..errors import BadInput
from .bluepill import HV_MEMORY, MEMORY_SIZE, SCENE

RAM_SIZE = MEMORY_SIZE
FLAT_BASE = 0x1000000
SCENE_SIZE = 0x2000                  # the assembled scene is smaller (tests/hypervisor/test_run.py)
HV_SIZE = 0x100000                   # the hypervisor allocates far less (tests/hypervisor/test_run.py)
RESERVED: tuple[tuple[int, int, str], ...] = (
    (0x0, 0x100000, "the built-in kernel (code, page tables, stacks, GDT, IDT)"),
    (SCENE, SCENE + SCENE_SIZE, "the blue-pill scene (driver stub and built-in workload)"),
    (HV_MEMORY, HV_MEMORY + HV_SIZE, "the hypervisor's memory (VMXON region, VMCS, MSR bitmap, host stack, EPT)"),
)

ELF_MAGIC = b"\x7fELF"
_EHDR = struct.Struct("<16sHHIQQQIHHHHHH")     # Elf64_Ehdr, 64 bytes
_PHDR = struct.Struct("<IIQQQQQQ")             # Elf64_Phdr, 56 bytes
ET_EXEC, EM_X86_64 = 2, 62
PT_LOAD, PT_DYNAMIC, PT_INTERP = 1, 2, 3
PF_X, PF_W, PF_R = 1, 2, 4


class ImageError(BadInput):
    """An image vmxlab cannot load; the message is one line naming the file."""


@dataclass
class Segment:
    address: int          # physical = linear
    data: bytes           # file bytes
    memsz: int            # bytes in memory (>= len(data); the rest is zeroed)
    flags: int = PF_R | PF_W | PF_X

    @property
    def end(self) -> int:
        return self.address + self.memsz


@dataclass
class Image:
    name: str
    kind: str                              # "flat", "elf" or "builtin"
    entry: int
    segments: list[Segment] = field(default_factory=list)

    def load(self, write) -> None:
        """Copy the segments with write(physical address, bytes), .bss zeroed."""
        for s in self.segments:
            write(s.address, s.data + bytes(s.memsz - len(s.data)))


def _check_placement(name: str, what: str, start: int, size: int) -> None:
    end = start + size
    if end > RAM_SIZE:
        raise ImageError(f"{name}: {what} [{start:#x}, {end:#x}) goes beyond the end of RAM ({RAM_SIZE:#x}); "
                         f"free memory is {FLAT_BASE:#x}-{RAM_SIZE:#x} and the gaps between the reserved areas")
    for lo, hi, area in RESERVED:
        if start < hi and lo < end:
            raise ImageError(f"{name}: {what} [{start:#x}, {end:#x}) overlaps {area} at [{lo:#x}, {hi:#x}); "
                             f"link the image elsewhere, e.g. at {FLAT_BASE:#x} (ld -Ttext-segment={FLAT_BASE:#x})")


def parse(data: bytes, name: str = "image") -> Image:
    """An ELF64 executable (when the file starts with the ELF magic) or a flat binary."""
    if data[:4] == ELF_MAGIC:
        return parse_elf(data, name)
    return parse_flat(data, name)


def parse_flat(data: bytes, name: str = "image", base: int = FLAT_BASE) -> Image:
    if not data:
        raise ImageError(f"{name}: the file is empty")
    _check_placement(name, f"flat image of {len(data):#x} bytes", base, len(data))
    return Image(name, "flat", base, [Segment(base, bytes(data), len(data))])


def parse_elf(data: bytes, name: str = "image") -> Image:
    if len(data) < _EHDR.size:
        raise ImageError(f"{name}: truncated ELF file: {len(data)} bytes, the ELF header alone is {_EHDR.size}")
    (ident, e_type, e_machine, e_version, e_entry, e_phoff, _shoff, _flags, e_ehsize, e_phentsize,
     e_phnum, _shentsize, _shnum, _shstrndx) = _EHDR.unpack_from(data)
    if ident[4] != 2:
        raise ImageError(f"{name}: ELF class {ident[4]} is not ELFCLASS64 (2): vmxlab runs 64-bit images")
    if ident[5] != 1:
        raise ImageError(f"{name}: ELF data encoding {ident[5]} is not ELFDATA2LSB (1, little-endian)")
    if ident[6] != 1:
        raise ImageError(f"{name}: ELF identification version {ident[6]} is not EV_CURRENT (1)")
    if e_machine != EM_X86_64:
        raise ImageError(f"{name}: ELF machine {e_machine} is not EM_X86_64 (62)")
    if e_type != ET_EXEC:
        kind = {1: "ET_REL (an object file: link it)", 3: "ET_DYN (position-independent or shared: "
                "link with -static -no-pie)", 4: "ET_CORE (a core dump)"}.get(e_type, "unknown")
        raise ImageError(f"{name}: ELF type {e_type} is {kind}, not ET_EXEC (2)")
    if e_phnum == 0:
        raise ImageError(f"{name}: ELF file has no program headers (e_phnum 0): nothing to load")
    if e_phnum == 0xFFFF:
        raise ImageError(f"{name}: ELF file has 65535 or more program headers (PN_XNUM); not supported")
    if e_phentsize != _PHDR.size:
        raise ImageError(f"{name}: ELF program header size {e_phentsize} is not {_PHDR.size}")
    if e_phoff + e_phnum * _PHDR.size > len(data):
        raise ImageError(f"{name}: truncated ELF file: {e_phnum} program headers at offset {e_phoff:#x} "
                         f"need {e_phoff + e_phnum * _PHDR.size:#x} bytes, the file has {len(data):#x}")
    segments: list[Segment] = []
    for i in range(e_phnum):
        p_type, p_flags, p_offset, p_vaddr, p_paddr, p_filesz, p_memsz, _align = \
            _PHDR.unpack_from(data, e_phoff + i * _PHDR.size)
        if p_type in (PT_INTERP, PT_DYNAMIC):
            raise ImageError(f"{name}: program header {i} is {'PT_INTERP' if p_type == PT_INTERP else 'PT_DYNAMIC'}: "
                             "a dynamically linked executable (link it with -static)")
        if p_type != PT_LOAD:
            continue
        what = f"PT_LOAD segment {i}"
        if p_filesz > p_memsz:
            raise ImageError(f"{name}: {what}: p_filesz {p_filesz:#x} is larger than p_memsz {p_memsz:#x}")
        if p_offset + p_filesz > len(data):
            raise ImageError(f"{name}: truncated ELF file: {what} needs bytes up to {p_offset + p_filesz:#x}, "
                             f"the file has {len(data):#x}")
        if p_vaddr != p_paddr:
            raise ImageError(f"{name}: {what}: p_vaddr {p_vaddr:#x} != p_paddr {p_paddr:#x}; the kernel's "
                             "paging is an identity map, so the two must be equal")
        if p_memsz == 0:
            continue
        _check_placement(name, what, p_vaddr, p_memsz)
        for j, other in enumerate(segments):
            if p_vaddr < other.end and other.address < p_vaddr + p_memsz:
                raise ImageError(f"{name}: {what} [{p_vaddr:#x}, {p_vaddr + p_memsz:#x}) overlaps another "
                                 f"PT_LOAD segment [{other.address:#x}, {other.end:#x})")
        segments.append(Segment(p_vaddr, bytes(data[p_offset:p_offset + p_filesz]), p_memsz, p_flags))
    if not segments:
        raise ImageError(f"{name}: ELF file has no PT_LOAD segment with memory: nothing to load")
    if not any(s.address <= e_entry < s.address + len(s.data) for s in segments):
        raise ImageError(f"{name}: ELF entry point {e_entry:#x} is not inside the file bytes of a PT_LOAD segment")
    return Image(name, "elf", e_entry, segments)


def read(path: str) -> Image:
    """The image in a file (ImageError when it cannot be read or loaded)."""
    try:
        with open(path, "rb") as fh:
            data = fh.read(RAM_SIZE + 1)
    except OSError as e:
        raise ImageError(f"{path}: cannot read ({e.strerror or e.__class__.__name__})") from None
    if len(data) > RAM_SIZE:
        raise ImageError(f"{path}: the file is larger than the guest's RAM ({RAM_SIZE:#x} bytes)")
    return parse(data, path)


# ---- writing images -----------------------------------------------------------------------------
def to_flat(image: Image) -> bytes:
    """A flat binary of a one-segment image loaded at FLAT_BASE with its entry there."""
    if len(image.segments) != 1 or image.segments[0].address != FLAT_BASE or image.entry != FLAT_BASE:
        raise ImageError(f"{image.name}: a flat binary is one segment at {FLAT_BASE:#x} entered at its first byte")
    s = image.segments[0]
    return s.data + bytes(s.memsz - len(s.data))


def to_elf(image: Image) -> bytes:
    """A minimal ELF64 executable (ET_EXEC, EM_X86_64): the ELF header, one program
    header per segment (PT_LOAD, p_vaddr = p_paddr, 4-KiB aligned file offsets
    congruent to the address), the segment bytes; no section headers."""
    if not image.segments:
        raise ImageError(f"{image.name}: no segments to write")
    phoff = _EHDR.size
    offset = -(-(phoff + _PHDR.size * len(image.segments)) // 0x1000) * 0x1000
    headers, body = [], bytearray()
    for s in image.segments:
        offset += (s.address - offset) % 0x1000          # p_offset = p_vaddr modulo the alignment
        headers.append(_PHDR.pack(PT_LOAD, s.flags, offset, s.address, s.address, len(s.data), s.memsz, 0x1000))
        body += bytes(offset - (phoff + _PHDR.size * len(image.segments)) - len(body)) + s.data
        offset += len(s.data)
    ident = ELF_MAGIC + bytes((2, 1, 1, 0)) + bytes(8)     # ELFCLASS64, ELFDATA2LSB, EV_CURRENT, SysV ABI
    ehdr = _EHDR.pack(ident, ET_EXEC, EM_X86_64, 1, image.entry, phoff, 0, 0, _EHDR.size, _PHDR.size,
                      len(image.segments), 0, 0, 0)
    return ehdr + b"".join(headers) + bytes(body)


# ---- built-in images ------------------------------------------------------------------------------
BUILTINS = {
    "hello": "guests/hello.asm: port I/O on the UART (OUT, IN), CPUID 40000000H, HLT",
    "bluepill": "the built-in kernel's own workload (guests/bluepill.asm bp_workload): CPUID, MSRs, "
                "XSETBV, hypercalls, unload",
}


def builtin(name: str) -> Image:
    """A built-in image by name (BUILTINS)."""
    if name == "hello":
        from importlib import resources
        from ..guests.asm import asm
        prog = asm(resources.files("vmxlab.guests").joinpath("hello.asm").read_text(), FLAT_BASE)
        return Image("builtin:hello", "builtin", FLAT_BASE, [Segment(FLAT_BASE, prog.code, len(prog.code))])
    if name == "bluepill":
        from .bluepill import scene
        return Image("builtin:bluepill", "builtin", scene().labels["bp_workload"], [])
    raise ImageError(f"unknown built-in image {name!r} (built-in images: {', '.join(BUILTINS)})")


def main(argv: list[str] | None = None) -> int:
    """python -m vmxlab.hypervisor.image NAME FILE [--flat]: write a built-in image
    (an ELF64 executable, or with --flat a flat binary) for `vmxlab run FILE`."""
    import argparse
    import sys
    ap = argparse.ArgumentParser(prog="python -m vmxlab.hypervisor.image",
                                 description="write a built-in guest image as a file for `vmxlab run`")
    ap.add_argument("name", choices=[n for n in BUILTINS if n != "bluepill"])
    ap.add_argument("file")
    ap.add_argument("--flat", action="store_true", help=f"a flat binary (loaded at {FLAT_BASE:#x}) instead of ELF64")
    args = ap.parse_args(argv)
    img = builtin(args.name)
    data = to_flat(img) if args.flat else to_elf(img)
    try:
        with open(args.file, "wb") as fh:
            fh.write(data)
    except OSError as e:
        print(f"{args.file}: cannot write ({e.strerror})", file=sys.stderr)
        return 2
    print(f"{args.file}: {'flat binary' if args.flat else 'ELF64 executable'} of {len(data)} bytes, "
          f"entry {img.entry:#x}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
