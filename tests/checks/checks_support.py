"""Shared helpers for the checks tests: test profiles and a VMCS-variant runner.
(Imported by the test modules; pytest puts this folder on sys.path.)"""
import json
from importlib import resources

from vmxlab import caps
from vmxlab.caps.profile import from_dict
from vmxlab.checks import check
from vmxlab.checks.template import build

ALL64 = (1 << 64) - 1


def _shipped(name: str) -> dict:
    return json.loads(resources.files("vmxlab.caps").joinpath(f"profiles/{name}.json").read_text())


def synthetic_max():
    """Ice Lake-SP with every control allowed-1 (tertiary, secondary VM-exit, CET,
    PKRS, UINV, FRED ...), CET in CPUID and supervisor-shadow-stack EPT: a test
    processor for the rules of features no shipped profile has."""
    d = _shipped("icelake-server")
    m = d["msrs"]
    m["IA32_VMX_PROCBASED_CTLS"] = "0xfffffffe0401e172"
    m["IA32_VMX_TRUE_PROCBASED_CTLS"] = "0xfffffffe04006172"
    m["IA32_VMX_PROCBASED_CTLS2"] = "0xffffffff00000000"
    m["IA32_VMX_PROCBASED_CTLS3"] = "0xbf"
    m["IA32_VMX_EXIT_CTLS"] = "0xffffffff00036dff"
    m["IA32_VMX_TRUE_EXIT_CTLS"] = "0xffffffff00036dfb"
    m["IA32_VMX_EXIT_CTLS2"] = "0x3"
    m["IA32_VMX_ENTRY_CTLS"] = "0x00ffffff000011ff"
    m["IA32_VMX_TRUE_ENTRY_CTLS"] = "0x00ffffff000011fb"
    m["IA32_VMX_CR4_FIXED1"] = "0x1ff7fff"
    m["IA32_VMX_EPT_VPID_CAP"] = hex(int(m["IA32_VMX_EPT_VPID_CAP"], 16) | 1 << 23)
    eax, ebx, ecx, edx = d["cpuid"]["0x7.0"]
    d["cpuid"]["0x7.0"] = [eax, ebx, hex(int(ecx, 16) | 1 << 7), edx]
    d["name"] = "synthetic-max"
    return from_dict(d, "synthetic-max")


def synthetic_min():
    """Skylake without EPT accessed/dirty flags and with 'enable RDTSCP' as a
    secondary control that must be 1 (an allowed-0 setting of 1)."""
    d = _shipped("skylake-client")
    m = d["msrs"]
    m["IA32_VMX_EPT_VPID_CAP"] = hex(int(m["IA32_VMX_EPT_VPID_CAP"], 16) & ~(1 << 21))
    m["IA32_VMX_PROCBASED_CTLS2"] = hex(int(m["IA32_VMX_PROCBASED_CTLS2"], 16) | 0x8)
    d["name"] = "synthetic-min"
    return from_dict(d, "synthetic-min")


PROFILES = {}


def profile(name: str):
    if name not in PROFILES:
        PROFILES[name] = {"synthetic-max": synthetic_max, "synthetic-min": synthetic_min}.get(
            name, lambda: caps.load(name))()
    return PROFILES[name]


def variant(name: str, mode: str, mods: dict):
    """The template for (profile, mode) with fields changed: a value, or a
    function of the template's value."""
    p = profile(name)
    doc = build(p, mode)
    vmcs = doc.vmcs.copy()
    for field, val in mods.items():
        vmcs[field] = val(vmcs[field]) if callable(val) else val
    return p, vmcs


def run(name: str, mode: str = "long", mods: dict | None = None, memory: dict | None = None, **kw):
    p, vmcs = variant(name, mode, mods or {})
    if "launch_state" in kw:
        vmcs.launch_state = kw.pop("launch_state")
    mem = dict(memory or {})

    def read(addr, size):
        for base, data in mem.items():
            if base <= addr and addr + size <= base + len(data):
                return data[addr - base:addr - base + size]
        return None
    return check(vmcs, p, read, **kw)
