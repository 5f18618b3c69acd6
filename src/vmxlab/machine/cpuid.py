"""CPUID of the simulated processor: the capability profile's leaves, adjusted to
what the machine implements.

Source: Intel SDM Vol. 2A "CPUID-CPU Identification".  Leaves present in the
profile are returned as recorded, with these changes (each a fact of the
machine, not of the recorded processor):

- leaf 1: ECX.VMX (bit 5) = 1; ECX bit 31 (hypervisor present) = 0; ECX.OSXSAVE
  (bit 27) follows CR4.OSXSAVE as on hardware; EBX[31:24] (initial APIC ID) = 0
  (one processor); ECX.x2APIC (21) and ECX.TSC-deadline (24) = 0 (no local APIC
  timer or x2APIC MSRs are modelled).
- leaf 7.0: PKU (ECX 3), OSPKE (ECX 4), CET_SS (ECX 7), PKS (ECX 31), CET_IBT
  (EDX 20) = 0: protection keys and CET are not modelled.
- leaf 0DH (XSAVE) when absent: x87 | SSE | AVX (AVX if leaf 1 reports it),
  sizes of the standard format, XSAVEOPT only (no XSAVES: XSAVES/XRSTORS raise #UD).

Absent leaves: 80000000H reports the highest extended leaf (80000008H unless the
profile has a higher one); 80000002H-80000004H give a brand string naming the
profile; 16H reports the TSC frequency of the virtual TSC; other absent leaves
up to the maximum read as zeros; a leaf above the maximum basic or extended
leaf returns the highest basic leaf, as Intel processors do ("If a value
entered for CPUID.EAX is higher than the maximum input value ...").
"""
from __future__ import annotations

from ..caps.profile import Profile

_LEAF1_ECX_CLEAR = (1 << 31) | (1 << 21) | (1 << 24) | (1 << 27)
_LEAF7_ECX_CLEAR = (1 << 3) | (1 << 4) | (1 << 7) | (1 << 31)
_LEAF7_EDX_CLEAR = 1 << 20


class CpuidModel:
    def __init__(self, profile: Profile, tsc_hz: int):
        self.profile = profile
        self.tsc_hz = tsc_hz
        leaf0 = profile.cpuid_leaf(0)
        self.max_basic = leaf0[0] if leaf0 else 0xD
        self.vendor = leaf0[1:] if leaf0 else (0x756E6547, 0x6C65746E, 0x49656E69)   # "GenuineIntel"
        ext = profile.cpuid_leaf(0x80000000)
        recorded_ext = max((l for (l, _s) in profile.cpuid if l >= 0x80000000), default=0x80000008)
        self.max_ext = ext[0] if ext else max(recorded_ext, 0x80000008)
        brand = f"vmxlab virtual CPU ({profile.name})".encode()[:47].ljust(48, b"\0")
        self._brand = [tuple(int.from_bytes(brand[16 * i + 4 * j:16 * i + 4 * j + 4], "little")
                             for j in range(4)) for i in range(3)]
        self._cache: dict[tuple[int, int], tuple[int, int, int, int]] = {}

    @property
    def signature(self) -> int:
        """CPUID.1:EAX (family/model/stepping), also EDX after reset."""
        leaf1 = self.profile.cpuid_leaf(1)
        return leaf1[0] if leaf1 else 0x000506E3

    def query(self, leaf: int, subleaf: int, cr4: int = 0, xcr0: int = 1) -> tuple[int, int, int, int]:
        leaf &= 0xFFFFFFFF
        subleaf &= 0xFFFFFFFF
        if leaf > self.max_basic and not 0x80000000 <= leaf <= self.max_ext:
            leaf, subleaf = self.max_basic, 0
        if leaf == 1:
            a, b, c, d = self._static(1, 0)
            if cr4 & (1 << 18):
                c |= 1 << 27
            return a, b, c, d
        if leaf == 0xD and subleaf == 0 and self.profile.cpuid_leaf(0xD, 0) is None:
            a, b, c, d = self._static(0xD, 0)
            return a, self._xsave_size(xcr0), c, d
        return self._static(leaf, subleaf)

    def _static(self, leaf: int, subleaf: int) -> tuple[int, int, int, int]:
        key = (leaf, subleaf)
        hit = self._cache.get(key)
        if hit is None:
            hit = self._cache[key] = self._compute(leaf, subleaf)
        return hit

    def _avx(self) -> bool:
        leaf1 = self.profile.cpuid_leaf(1)
        return bool(leaf1 and leaf1[2] >> 28 & 1)

    def _xsave_size(self, xcr0: int) -> int:
        size = 576
        if xcr0 & 4:
            size = 832
        return size

    def _compute(self, leaf: int, subleaf: int) -> tuple[int, int, int, int]:
        p = self.profile
        if leaf == 0:
            return (self.max_basic, *self.vendor)
        if leaf == 0x80000000:
            rec = p.cpuid_leaf(0x80000000)
            return (self.max_ext, *(rec[1:] if rec else (0, 0, 0)))
        if 0x80000002 <= leaf <= 0x80000004 and p.cpuid_leaf(leaf) is None:
            return self._brand[leaf - 0x80000002]
        regs = p.cpuid_leaf(leaf, subleaf)
        if leaf == 1:
            a, b, c, d = regs or (self.signature, 0x00000800, 0x0000_0201 | (1 << 5), 0x078BFBFF)
            return a, b & 0x00FFFFFF, (c | (1 << 5)) & ~_LEAF1_ECX_CLEAR, d
        if leaf == 7 and subleaf == 0:
            a, b, c, d = regs or (0, 0, 0, 0)
            return a, b, c & ~_LEAF7_ECX_CLEAR, d & ~_LEAF7_EDX_CLEAR
        if regs is not None:
            return regs
        if leaf == 0xD:
            leaf1 = p.cpuid_leaf(1)
            if not (leaf1 and leaf1[2] >> 26 & 1):
                return 0, 0, 0, 0
            if subleaf == 0:
                supported = 7 if self._avx() else 3
                return supported, 576, 832 if self._avx() else 576, 0
            if subleaf == 1:
                return 1, 0, 0, 0               # XSAVEOPT; no XSAVEC/XGETBV1/XSAVES
            if subleaf == 2 and self._avx():
                return 256, 576, 0, 0
            return 0, 0, 0, 0
        if leaf == 0x16:
            mhz = self.tsc_hz // 1_000_000
            return mhz, mhz, 100, 0
        return 0, 0, 0, 0
