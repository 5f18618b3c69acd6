"""Capability profiles: the IA32_VMX_* MSR values, MAXPHYADDR and CPUID of a processor.

A profile file (JSON):
    {"format": "vmxlab-caps/1", "name": ..., "description": ..., "source": ...,
     "msrs": {"IA32_VMX_BASIC": "0x...", "0x481": "0x...", ...},
     "maxphyaddr": 46, "cpuid": {"0x1": [eax, ebx, ecx, edx], "0x7.0": [...]}}
MSR keys are names or hex indices, so a dump read from a real processor
(rdmsr 0x480-0x493) loads as it is.  Interpretation follows Intel SDM Vol. 3D
Appendix A "VMX Capability Reporting Facility".
"""
from __future__ import annotations

import json
from functools import cached_property
from importlib import resources
from pathlib import Path

from ..arch import capabilities as CAP
from ..arch import controls as C
from ..arch import cpuid as CPUID
from ..arch import fields as F
from ..arch import msrs as M
from ..errors import BadInput

FORMAT = "vmxlab-caps/1"
DEFAULT_PROFILE = "skylake-client"
REQUIRED = ("IA32_VMX_BASIC", "IA32_VMX_PINBASED_CTLS", "IA32_VMX_PROCBASED_CTLS",
            "IA32_VMX_EXIT_CTLS", "IA32_VMX_ENTRY_CTLS", "IA32_VMX_MISC",
            "IA32_VMX_CR0_FIXED0", "IA32_VMX_CR0_FIXED1", "IA32_VMX_CR4_FIXED0",
            "IA32_VMX_CR4_FIXED1", "IA32_VMX_VMCS_ENUM")


class Profile:
    def __init__(self, name: str, msrs: dict[int, int], maxphyaddr: int = 46,
                 cpuid: dict[tuple[int, int], tuple[int, int, int, int]] | None = None,
                 description: str = "", source: str = "", path: str | None = None):
        self.name = name
        self.msrs = dict(msrs)
        self.maxphyaddr = maxphyaddr
        self.cpuid = dict(cpuid or {})
        self.description = description
        self.source = source
        self.path = path

    def __repr__(self) -> str:
        return f"<Profile {self.name}>"

    # -- raw MSRs ------------------------------------------------------------------
    def msr(self, name: str) -> int | None:
        return self.msrs.get(M.lookup(name).index)

    @cached_property
    def basic(self) -> int:
        return self.msrs[M.IA32_VMX_BASIC]

    @cached_property
    def true_ctls(self) -> bool:
        """IA32_VMX_BASIC bit 55: the TRUE capability MSRs exist (A.1)."""
        return bool(CAP.BASIC["true_ctls"].get(self.basic))

    @property
    def revision_id(self) -> int:
        return self.basic & 0x7FFFFFFF

    @property
    def vmcs_size(self) -> int:
        return CAP.BASIC["vmcs_size"].get(self.basic)

    @property
    def phys_addr_width_32(self) -> bool:
        return bool(CAP.BASIC["phys_addr_width_32"].get(self.basic))

    @cached_property
    def misc(self) -> int:
        return self.msrs.get(M.IA32_VMX_MISC, 0)

    @property
    def vmwrite_any_field(self) -> bool:
        return bool(CAP.MISC["vmwrite_any_field"].get(self.misc))

    @cached_property
    def ept_vpid_cap(self) -> int:
        """IA32_VMX_EPT_VPID_CAP, 0 when the processor has neither EPT nor VPID (A.10)."""
        if not (self.can_set("SECONDARY_EXEC_ENABLE_EPT") or self.can_set("SECONDARY_EXEC_ENABLE_VPID")):
            return 0
        return self.msrs.get(M.IA32_VMX_EPT_VPID_CAP, 0)

    def ept_cap(self, name: str) -> bool:
        return bool(CAP.EPT_VPID_CAP[name].get(self.ept_vpid_cap))

    @cached_property
    def cr0_fixed0(self) -> int:
        return self.msrs[M.IA32_VMX_CR0_FIXED0]

    @cached_property
    def cr0_fixed1(self) -> int:
        return self.msrs[M.IA32_VMX_CR0_FIXED1]

    @cached_property
    def cr4_fixed0(self) -> int:
        return self.msrs[M.IA32_VMX_CR4_FIXED0]

    @cached_property
    def cr4_fixed1(self) -> int:
        return self.msrs[M.IA32_VMX_CR4_FIXED1]

    @cached_property
    def max_vmcs_index(self) -> int:
        return CAP.VMCS_ENUM["max_index"].get(self.msrs.get(M.IA32_VMX_VMCS_ENUM, 0))

    @property
    def linear_address_bits(self) -> int:
        """48, or 57 when the processor supports 5-level paging (CR4.LA57 may be 1)."""
        return 57 if self.cr4_fixed1 & (1 << 12) else 48

    # -- controls (A.3-A.5, A.11) --------------------------------------------------------
    @cached_property
    def _allowed(self) -> dict[str, tuple[int, int, str]]:
        out: dict[str, tuple[int, int, str]] = {}
        for field, cf in C.CONTROL_FIELDS.items():
            msr_name = cf.true_msr if (cf.true_msr and self.true_ctls) else cf.msr
            value = self.msrs.get(M.lookup(msr_name).index)
            if value is None:
                out[field] = (0, 0, msr_name)
            elif cf.kind == "ctls":
                out[field] = (value & 0xFFFFFFFF, value >> 32, msr_name)
            else:
                out[field] = (0, value, msr_name)
        # A control field exists only when the control that activates it may be 1.
        for field, cf in C.CONTROL_FIELDS.items():
            if cf.enabled_by:
                gate = C.by_name(cf.enabled_by)
                if not out[gate.field][1] & gate.mask:
                    out[field] = (0, 0, out[field][2])
        return out

    def allowed(self, field: str) -> tuple[int, int, str]:
        """(allowed-0 settings, allowed-1 settings, MSR name) of a control field.

        A bit set in allowed-0 must be 1; a bit clear in allowed-1 must be 0.  The
        TRUE MSR is used only when IA32_VMX_BASIC bit 55 is set.
        """
        return self._allowed[field]

    def can_set(self, control: str) -> bool:
        c = C.lookup(control)
        return c is not None and bool(self._allowed[c.field][1] & c.mask)

    def can_clear(self, control: str) -> bool:
        c = C.by_name(control)
        return not self._allowed[c.field][0] & c.mask

    def supports(self, capability: str) -> bool:
        """A capability named in the field table's `requires` (a control name)."""
        return self.can_set(capability)

    def field_supported(self, field: F.Field) -> bool:
        """Does this processor have the field (VMREAD/VMWRITE succeed on it)?"""
        cached = self._fields.get(field.encoding)
        if cached is None:
            cached = (field.index <= self.max_vmcs_index or not self.max_vmcs_index) and \
                (not field.requires or any(self.supports(r) for r in field.requires))
            self._fields[field.encoding] = cached
        return cached

    @cached_property
    def _fields(self) -> dict[int, bool]:
        return {}

    # -- CPUID -----------------------------------------------------------------------
    def cpuid_leaf(self, leaf: int, subleaf: int = 0) -> tuple[int, int, int, int] | None:
        return self.cpuid.get((leaf, subleaf)) or self.cpuid.get((leaf, -1))

    def has(self, feature: str) -> bool:
        """Does the processor report a CPUID feature (arch.cpuid.FEATURES)?

        Without the leaf in the profile: CR4 features follow IA32_VMX_CR4_FIXED1
        (a CR4 bit that may be 1 implies its feature), and the baseline of every
        VMX-capable Intel 64 processor (FPU .. SSE2, PAE, PGE, PAT, MSR, TSC, APIC,
        SYSCALL, NX, LM, VMX) is assumed present; anything else absent.
        """
        leaf, sub, reg, bit = CPUID.FEATURES[feature]
        regs = self.cpuid_leaf(leaf, sub)
        if regs is not None:
            return bool(regs[reg] >> bit & 1)
        cr4_bit = _CR4_FEATURES.get(feature)
        if cr4_bit is not None:
            return bool(self.cr4_fixed1 >> cr4_bit & 1)
        return feature in _BASELINE


_CR4_FEATURES = {"VME": 0, "DE": 3, "PSE": 4, "PAE": 5, "MCE": 6, "PGE": 7, "UMIP": 11, "LA57": 12,
                 "VMX": 13, "SMX": 14, "FSGSBASE": 16, "PCID": 17, "XSAVE": 18, "SMEP": 20, "SMAP": 21,
                 "PKU": 22, "CET_SS": 23, "PKS": 24}
_BASELINE = frozenset({"FPU", "TSC", "MSR", "PAE", "MCE", "APIC", "SEP", "MTRR", "PGE", "MCA", "CMOV",
                       "PAT", "PSE36", "FXSR", "SSE", "SSE2", "SSE3", "SYSCALL", "NX", "LM", "LAHF_LM",
                       "VMX", "PSE", "DE", "VME"})


# ---- loading -------------------------------------------------------------------------
def _int(value: object, what: str) -> int:
    if isinstance(value, bool):
        raise BadInput(f"{what}: {value!r} is not an integer")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            return int(value.strip(), 0 if value.strip().lower().startswith("0x") else 16)
        except ValueError:
            pass
    raise BadInput(f"{what}: {value!r} is not an integer")


def from_dict(doc: object, where: str) -> Profile:
    if not isinstance(doc, dict):
        raise BadInput(f"{where}: a capability profile is a JSON object")
    fmt = doc.get("format", FORMAT)
    if fmt != FORMAT:
        raise BadInput(f"{where}: format {fmt!r} is not {FORMAT}")
    raw = doc.get("msrs")
    if not isinstance(raw, dict) or not raw:
        raise BadInput(f"{where}: 'msrs' must be an object of MSR name or index: value")
    msrs: dict[int, int] = {}
    for key, value in raw.items():
        m = M.lookup(key)
        if m is None:
            try:
                index = int(key, 16)
            except ValueError:
                raise BadInput(f"{where}: unknown MSR {key!r}") from None
        else:
            index = m.index
        v = _int(value, f"{where}: {key}")
        if not 0 <= v < 1 << 64:
            raise BadInput(f"{where}: {key} value {v:#x} is not a 64-bit MSR value")
        msrs[index] = v
    for name in REQUIRED:
        if M.lookup(name).index not in msrs:
            raise BadInput(f"{where}: missing {name}")
    maxphy = doc.get("maxphyaddr", 46)
    if isinstance(maxphy, bool) or not isinstance(maxphy, int) or not 32 <= maxphy <= 52:
        raise BadInput(f"{where}: maxphyaddr {maxphy!r} is not a number from 32 to 52")
    cpuid: dict[tuple[int, int], tuple[int, int, int, int]] = {}
    raw_cpuid = doc.get("cpuid", {})
    if not isinstance(raw_cpuid, dict):
        raise BadInput(f"{where}: 'cpuid' must be an object of 'LEAF' or 'LEAF.SUBLEAF': [eax, ebx, ecx, edx]")
    for key, regs in raw_cpuid.items():
        try:
            leaf_text, _, sub_text = key.partition(".")
            leaf = int(leaf_text, 16)
            sub = int(sub_text, 16) if sub_text else -1
        except ValueError:
            raise BadInput(f"{where}: cpuid key {key!r} is not LEAF or LEAF.SUBLEAF in hex") from None
        if not isinstance(regs, list) or len(regs) != 4:
            raise BadInput(f"{where}: cpuid {key} is not [eax, ebx, ecx, edx]")
        vals = tuple(_int(r, f"{where}: cpuid {key}") for r in regs)
        if any(not 0 <= r < 1 << 32 for r in vals):
            raise BadInput(f"{where}: cpuid {key} has a value wider than 32 bits")
        cpuid[(leaf, sub)] = vals  # type: ignore[assignment]
    name = doc.get("name") or Path(where).stem
    profile = Profile(str(name), msrs, maxphy, cpuid, str(doc.get("description", "")),
                      str(doc.get("source", "")), where)
    size = profile.vmcs_size
    if not 1 <= size <= 4096:
        raise BadInput(f"{where}: IA32_VMX_BASIC reports a VMCS size of {size} bytes (1-4096 expected)")
    return profile


def shipped() -> list[str]:
    """Names of the profiles that come with vmxlab."""
    folder = resources.files(__package__).joinpath("profiles")
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".json"))


_CACHE: dict[str, Profile] = {}


def load(name_or_path: str | None = None) -> Profile:
    """A shipped profile by name, or a profile file by path; BadInput if neither."""
    key = name_or_path or DEFAULT_PROFILE
    if key in _CACHE:
        return _CACHE[key]
    folder = resources.files(__package__).joinpath("profiles")
    candidate = folder.joinpath(f"{key}.json")
    if candidate.is_file():
        text, where = candidate.read_text(), key
    else:
        path = Path(key)
        if not path.is_file():
            raise BadInput(f"unknown profile {key!r} (shipped: {', '.join(shipped())}; or a JSON file path)")
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as e:
            raise BadInput(f"{key}: cannot read ({e.__class__.__name__})") from None
        where = key
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise BadInput(f"{where}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None
    profile = from_dict(doc, where)
    _CACHE[key] = profile
    return profile
