"""CPUID feature bits vmxlab consults.

Source: Intel SDM Vol. 2A "CPUID-CPU Identification" (Tables "Feature Information
Returned in the ECX/EDX Register", "Structured Extended Feature Flags Enumeration
Leaf"), leaf 80000001H and 80000008H descriptions.

Each feature: (leaf, subleaf, register index 0-3 for EAX/EBX/ECX/EDX, bit).
"""
from __future__ import annotations

EAX, EBX, ECX, EDX = 0, 1, 2, 3

FEATURES: dict[str, tuple[int, int, int, int]] = {
    # leaf 1
    "SSE3": (1, 0, ECX, 0), "MONITOR": (1, 0, ECX, 3), "VMX": (1, 0, ECX, 5), "SMX": (1, 0, ECX, 6), "PCID": (1, 0, ECX, 17),
    "X2APIC": (1, 0, ECX, 21), "TSC_DEADLINE": (1, 0, ECX, 24), "XSAVE": (1, 0, ECX, 26),
    "OSXSAVE": (1, 0, ECX, 27), "RDRAND": (1, 0, ECX, 30), "HYPERVISOR": (1, 0, ECX, 31),
    "FPU": (1, 0, EDX, 0), "VME": (1, 0, EDX, 1), "DE": (1, 0, EDX, 2), "PSE": (1, 0, EDX, 3),
    "TSC": (1, 0, EDX, 4), "MSR": (1, 0, EDX, 5), "PAE": (1, 0, EDX, 6), "MCE": (1, 0, EDX, 7),
    "APIC": (1, 0, EDX, 9), "SEP": (1, 0, EDX, 11), "MTRR": (1, 0, EDX, 12), "PGE": (1, 0, EDX, 13),
    "MCA": (1, 0, EDX, 14), "CMOV": (1, 0, EDX, 15), "PAT": (1, 0, EDX, 16), "PSE36": (1, 0, EDX, 17),
    "FXSR": (1, 0, EDX, 24), "SSE": (1, 0, EDX, 25), "SSE2": (1, 0, EDX, 26),
    # leaf 7, subleaf 0
    "FSGSBASE": (7, 0, EBX, 0), "TSC_ADJUST": (7, 0, EBX, 1), "SMEP": (7, 0, EBX, 7),
    "INVPCID": (7, 0, EBX, 10), "MPX": (7, 0, EBX, 14), "RDSEED": (7, 0, EBX, 18),
    "SMAP": (7, 0, EBX, 20), "PT": (7, 0, EBX, 25),
    "UMIP": (7, 0, ECX, 2), "PKU": (7, 0, ECX, 3), "CET_SS": (7, 0, ECX, 7), "LA57": (7, 0, ECX, 16),
    "RDPID": (7, 0, ECX, 22), "PKS": (7, 0, ECX, 31),
    "ARCH_LBR": (7, 0, EDX, 19), "CET_IBT": (7, 0, EDX, 20), "IBRS": (7, 0, EDX, 26),
    "STIBP": (7, 0, EDX, 27), "ARCH_CAPABILITIES": (7, 0, EDX, 29), "SSBD": (7, 0, EDX, 31),
    # leaf 80000001H
    "LAHF_LM": (0x80000001, 0, ECX, 0), "SYSCALL": (0x80000001, 0, EDX, 11), "NX": (0x80000001, 0, EDX, 20),
    "PDPE1GB": (0x80000001, 0, EDX, 26), "RDTSCP": (0x80000001, 0, EDX, 27), "LM": (0x80000001, 0, EDX, 29),
}

# Leaf 80000008H EAX: bits 7:0 physical-address width, bits 15:8 linear-address width.
HYPERVISOR_LEAF = 0x40000000
