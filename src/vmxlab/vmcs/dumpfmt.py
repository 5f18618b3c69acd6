"""The text Linux's dump_vmcs() prints (arch/x86/kvm/vmx/vmx.c), in and out.

KVM prints it when VM entry fails with kvm_intel.dump_invalid_vmcs=1.  The reader
accepts the layouts of kernels from 4.x to 6.x: lines may carry a log prefix
("[ 12.345678] kvm_intel: ", "<3>", a journal timestamp), which is skipped.
Before the first "*** ... State ***" header, lines that are not part of a dump are
ignored (a pasted log excerpt); inside the dump, a line that cannot be read is bad
input reported with its number.  Fields the dump does not print stay unknown.

The writer prints the layout of Linux 6.16, under the same conditions (the EFER
line only with "load IA32_EFER", the EPT pointer only with "enable EPT", ...);
a line whose values are not all known is left out.
"""
from __future__ import annotations

import re
from ..arch import controls as C
from ..arch import fields as F
from ..errors import BadInput
from .document import VmcsDocument
from .store import Vmcs

_H = r"(?:0x)?([0-9a-fA-F]+)"
_PREFIX = re.compile(
    r"^(?:<\d>)?(?:\w{3}\s+\d+\s+\d\d:\d\d:\d\d\s+\S+\s+kernel:\s*)?(?:\[\s*\d+\.\d+\]\s*)?"
    r"(?:kvm(?:_intel)?(?:\s*\[\d+\])?:\s*)?")

_SEGS = ("ES", "CS", "SS", "DS", "FS", "GS", "LDTR", "TR")

# (section, pattern, field names per group; None = ignored, "#x" = handled by a hook)
_LINES: list[tuple[str, str, tuple]] = [
    ("guest", rf"CR0: actual={_H}, shadow={_H}, gh_mask={_H}", ("GUEST_CR0", "CR0_READ_SHADOW", "CR0_GUEST_HOST_MASK")),
    ("guest", rf"CR4: actual={_H}, shadow={_H}, gh_mask={_H}", ("GUEST_CR4", "CR4_READ_SHADOW", "CR4_GUEST_HOST_MASK")),
    ("guest", rf"CR3 = {_H}$", ("GUEST_CR3",)),
    ("guest", rf"PDPTR0 = {_H}\s+PDPTR1 = {_H}", ("GUEST_PDPTR0", "GUEST_PDPTR1")),
    ("guest", rf"PDPTR2 = {_H}\s+PDPTR3 = {_H}", ("GUEST_PDPTR2", "GUEST_PDPTR3")),
    ("guest", rf"RSP = {_H}\s+RIP = {_H}", ("GUEST_RSP", "GUEST_RIP")),
    ("guest", rf"RFLAGS={_H}\s+DR7 = {_H}", ("GUEST_RFLAGS", "GUEST_DR7")),
    ("guest", rf"Sysenter RSP={_H} CS:RIP={_H}:{_H}", ("GUEST_SYSENTER_ESP", "GUEST_SYSENTER_CS", "GUEST_SYSENTER_EIP")),
    ("guest", rf"\b(ES|CS|SS|DS|FS|GS|LDTR|TR):\s*sel={_H}, attr={_H}, limit={_H}, base={_H}", ("#seg",)),
    ("guest", rf"\b(GDTR|IDTR):\s*limit={_H}, base={_H}", ("#dt",)),
    ("guest", rf"EFER\s*=\s*{_H}(?:\s*\((autoload|effective)\))?(?:\s+PAT = {_H})?$", ("#efer",)),
    ("guest", rf"^PAT = {_H}$", ("GUEST_IA32_PAT",)),
    ("guest", rf"DebugCtl = {_H}\s+DebugExceptions = {_H}", ("GUEST_IA32_DEBUGCTL", "GUEST_PENDING_DBG_EXCEPTIONS")),
    ("guest", rf"PerfGlobCtl = {_H}", ("GUEST_IA32_PERF_GLOBAL_CTRL",)),
    ("guest", rf"BndCfgS = {_H}", ("GUEST_BNDCFGS",)),
    ("guest", rf"PKRS = {_H}", ("GUEST_IA32_PKRS",)),
    ("guest", rf"Interruptibility = {_H}\s+ActivityState = {_H}", ("GUEST_INTERRUPTIBILITY_INFO", "GUEST_ACTIVITY_STATE")),
    ("guest", rf"InterruptStatus = {_H}", ("GUEST_INTR_STATUS",)),
    ("host", rf"RIP = {_H}\s+RSP = {_H}", ("HOST_RIP", "HOST_RSP")),
    ("host", rf"CS={_H} SS={_H} DS={_H} ES={_H} FS={_H} GS={_H} TR={_H}",
     ("HOST_CS_SELECTOR", "HOST_SS_SELECTOR", "HOST_DS_SELECTOR", "HOST_ES_SELECTOR",
      "HOST_FS_SELECTOR", "HOST_GS_SELECTOR", "HOST_TR_SELECTOR")),
    ("host", rf"FSBase={_H} GSBase={_H} TRBase={_H}", ("HOST_FS_BASE", "HOST_GS_BASE", "HOST_TR_BASE")),
    ("host", rf"GDTBase={_H} IDTBase={_H}", ("HOST_GDTR_BASE", "HOST_IDTR_BASE")),
    ("host", rf"CR0={_H} CR3={_H} CR4={_H}", ("HOST_CR0", "HOST_CR3", "HOST_CR4")),
    ("host", rf"Sysenter RSP={_H} CS:RIP={_H}:{_H}", ("HOST_IA32_SYSENTER_ESP", "HOST_IA32_SYSENTER_CS", "HOST_IA32_SYSENTER_EIP")),
    ("host", rf"EFER\s*=\s*{_H}(?:\s+PAT = {_H})?$", ("HOST_IA32_EFER", "HOST_IA32_PAT")),
    ("host", rf"^PAT = {_H}$", ("HOST_IA32_PAT",)),
    ("host", rf"PerfGlobCtl = {_H}", ("HOST_IA32_PERF_GLOBAL_CTRL",)),
    ("host", rf"PKRS = {_H}", ("HOST_IA32_PKRS",)),
    ("control", rf"CPUBased={_H} SecondaryExec={_H} TertiaryExec={_H}",
     ("CPU_BASED_VM_EXEC_CONTROL", "SECONDARY_VM_EXEC_CONTROL", "TERTIARY_VM_EXEC_CONTROL")),
    ("control", rf"PinBased={_H} EntryControls={_H} ExitControls={_H}",
     ("PIN_BASED_VM_EXEC_CONTROL", "VM_ENTRY_CONTROLS", "VM_EXIT_CONTROLS")),
    ("control", rf"PinBased={_H} CPUBased={_H} SecondaryExec={_H}",
     ("PIN_BASED_VM_EXEC_CONTROL", "CPU_BASED_VM_EXEC_CONTROL", "SECONDARY_VM_EXEC_CONTROL")),
    ("control", rf"^EntryControls={_H} ExitControls={_H}", ("VM_ENTRY_CONTROLS", "VM_EXIT_CONTROLS")),
    ("control", rf"ExceptionBitmap={_H} PFECmask={_H} PFECmatch={_H}",
     ("EXCEPTION_BITMAP", "PAGE_FAULT_ERROR_CODE_MASK", "PAGE_FAULT_ERROR_CODE_MATCH")),
    ("control", rf"VMEntry: intr_info={_H} errcode={_H} ilen={_H}",
     ("VM_ENTRY_INTR_INFO_FIELD", "VM_ENTRY_EXCEPTION_ERROR_CODE", "VM_ENTRY_INSTRUCTION_LEN")),
    ("control", rf"VMExit: intr_info={_H} errcode={_H} ilen={_H}",
     ("VM_EXIT_INTR_INFO", "VM_EXIT_INTR_ERROR_CODE", "VM_EXIT_INSTRUCTION_LEN")),
    ("control", rf"reason={_H} qualification={_H}", ("VM_EXIT_REASON", "EXIT_QUALIFICATION")),
    ("control", rf"IDTVectoring: info={_H} errcode={_H}", ("IDT_VECTORING_INFO_FIELD", "IDT_VECTORING_ERROR_CODE")),
    ("control", rf"TSC Offset = {_H}", ("TSC_OFFSET",)),
    ("control", rf"TSC Multiplier = {_H}", ("TSC_MULTIPLIER",)),
    ("control", rf"(?:SVI\|RVI = {_H}\|{_H}\s*)?TPR Threshold = {_H}", ("#tpr",)),
    ("control", rf"(?:APIC-access addr = {_H}\s*)?virt-APIC addr = {_H}", ("APIC_ACCESS_ADDR", "VIRTUAL_APIC_PAGE_ADDR")),
    ("control", rf"PostedIntrVec = {_H}", ("POSTED_INTR_NV",)),
    ("control", rf"EPT pointer = {_H}", ("EPT_POINTER",)),
    ("control", rf"PLE Gap={_H} Window={_H}", ("PLE_GAP", "PLE_WINDOW")),
    ("control", rf"Virtual processor ID = {_H}", ("VIRTUAL_PROCESSOR_ID",)),
    ("control", rf"VE info address = {_H}", ("VE_INFORMATION_ADDRESS",)),
    ("control", r"ve_info:", ()),
]
_COMPILED = [(sec, re.compile(p), names) for sec, p, names in _LINES]
_HEADERS = {"*** Guest State ***": "guest", "*** Host State ***": "host", "*** Control State ***": "control"}
_MSR_LIST = re.compile(r"^MSR (guest autoload|guest autostore|host autoload):$")
_MSR_ENTRY = re.compile(rf"^\s*(\d+): msr={_H} value={_H}$")
_FRED = re.compile(rf"^FRED (guest|host): config={_H}, stack_levels={_H}$")
_FRED_RSP = re.compile(rf"^RSP(\d)={_H}, RSP(\d)={_H}$")
_VMCS_LINE = re.compile(r"^VMCS \S+, last attempted VM-entry on CPU -?\d+$")


def _set(vmcs: Vmcs, name: str, text: str | None, where: str) -> None:
    if text is None:
        return
    field = F.by_name(name)
    value = int(text, 16)
    if value > field.mask:
        raise BadInput(f"{where}: {field.name} value {value:#x} is wider than the field")
    vmcs.values[field.encoding] = value


def loads(text: str, name: str = "-") -> VmcsDocument:
    vmcs = Vmcs(default=None)
    doc = VmcsDocument(vmcs, source="dump_vmcs")
    section: str | None = None
    fred_owner = ""
    for lineno, raw in enumerate(text.splitlines(), 1):
        where = f"{name}:{lineno}"
        line = _PREFIX.sub("", raw.rstrip()).strip() if raw.strip() else ""
        if not line:
            continue
        if line in _HEADERS:
            section = _HEADERS[line]
            continue
        if _VMCS_LINE.match(line):
            doc.notes.append(line)
            continue
        if section is None:
            continue                          # log lines before the dump
        m = _MSR_LIST.match(line)
        if m:
            doc.notes.append(f"MSR {m.group(1)} list:")
            continue
        m = _MSR_ENTRY.match(line)
        if m:
            doc.notes.append(f"  entry {m.group(1)}: msr={int(m.group(2), 16):#x} value={int(m.group(3), 16):#x}")
            continue
        m = _FRED.match(line)
        if m:
            fred_owner = m.group(1).upper()
            _set(vmcs, f"{fred_owner}_IA32_FRED_CONFIG", m.group(2), where)
            _set(vmcs, f"{fred_owner}_IA32_FRED_STKLVLS", m.group(3), where)
            continue
        m = _FRED_RSP.match(line)
        if m and fred_owner:
            for idx, val in ((m.group(1), m.group(2)), (m.group(3), m.group(4))):
                if idx != "0":               # FRED RSP0 is an MSR, not a VMCS field
                    _set(vmcs, f"{fred_owner}_IA32_FRED_RSP{idx}", val, where)
            continue
        for sec, pattern, names in _COMPILED:
            if sec != section:
                continue
            m = pattern.search(line)
            if not m:
                continue
            groups = m.groups()
            if names == ("#seg",):
                seg, sel, attr, limit, base = groups
                for suffix, val in (("SELECTOR", sel), ("AR_BYTES", attr), ("LIMIT", limit), ("BASE", base)):
                    _set(vmcs, f"GUEST_{seg}_{suffix}", val, where)
            elif names == ("#dt",):
                dt, limit, base = groups
                _set(vmcs, f"GUEST_{dt}_LIMIT", limit, where)
                _set(vmcs, f"GUEST_{dt}_BASE", base, where)
            elif names == ("#efer",):
                efer, how, pat = groups
                if how:   # derived by KVM, not the VMCS field
                    doc.notes.append(f"guest EFER {int(efer, 16):#x} ({how}), not the GUEST_IA32_EFER field")
                else:
                    _set(vmcs, "GUEST_IA32_EFER", efer, where)
                _set(vmcs, "GUEST_IA32_PAT", pat, where)
            elif names == ("#tpr",):
                svi, rvi, tpr = groups
                if svi is not None:
                    vmcs.values[F.GUEST_INTR_STATUS] = (int(svi, 16) << 8) | int(rvi, 16)
                _set(vmcs, "TPR_THRESHOLD", tpr, where)
            else:
                for fname, val in zip(names, groups):
                    _set(vmcs, fname, val, where)
            break
        else:
            raise BadInput(f"{where}: cannot read dump_vmcs line: {line[:80]!r}")
    if section is None:
        raise BadInput(f"{name}: neither vmxlab JSON nor a dump_vmcs text (no '*** Guest State ***' line)")
    return doc


# ---- writer ---------------------------------------------------------------------
def dumps(vmcs: Vmcs) -> str:
    """dump_vmcs text of a VMCS in the layout of Linux 6.16."""
    v = vmcs.values.get
    out: list[str] = []

    def line(fmt: str, *names: str, when: bool = True) -> None:
        if not when:
            return
        vals = [v(F.by_name(n).encoding, vmcs.default) for n in names]
        if any(x is None for x in vals):
            return
        out.append(fmt % tuple(vals))

    def has(field: str, control: str) -> bool:
        value = v(F.by_name(field).encoding, vmcs.default)
        return bool(value and value & C.by_name(control).mask)

    ent, ext = "VM_ENTRY_CONTROLS", "VM_EXIT_CONTROLS"
    sec, cpu, pin = "SECONDARY_VM_EXEC_CONTROL", "CPU_BASED_VM_EXEC_CONTROL", "PIN_BASED_VM_EXEC_CONTROL"
    out.append("*** Guest State ***")
    line("CR0: actual=0x%016x, shadow=0x%016x, gh_mask=%016x", "GUEST_CR0", "CR0_READ_SHADOW", "CR0_GUEST_HOST_MASK")
    line("CR4: actual=0x%016x, shadow=0x%016x, gh_mask=%016x", "GUEST_CR4", "CR4_READ_SHADOW", "CR4_GUEST_HOST_MASK")
    line("CR3 = 0x%016x", "GUEST_CR3")
    line("PDPTR0 = 0x%016x  PDPTR1 = 0x%016x", "GUEST_PDPTR0", "GUEST_PDPTR1")
    line("PDPTR2 = 0x%016x  PDPTR3 = 0x%016x", "GUEST_PDPTR2", "GUEST_PDPTR3")
    line("RSP = 0x%016x  RIP = 0x%016x", "GUEST_RSP", "GUEST_RIP")
    line("RFLAGS=0x%08x         DR7 = 0x%016x", "GUEST_RFLAGS", "GUEST_DR7")
    line("Sysenter RSP=%016x CS:RIP=%04x:%016x", "GUEST_SYSENTER_ESP", "GUEST_SYSENTER_CS", "GUEST_SYSENTER_EIP")
    for seg in ("CS", "DS", "SS", "ES", "FS", "GS", "GDTR", "LDTR", "IDTR", "TR"):
        label = f"{seg}:".ljust(5)
        if seg in ("GDTR", "IDTR"):
            line(f"{label}                           limit=0x%08x, base=0x%016x", f"GUEST_{seg}_LIMIT", f"GUEST_{seg}_BASE")
        else:
            line(f"{label} sel=0x%04x, attr=0x%05x, limit=0x%08x, base=0x%016x",
                 f"GUEST_{seg}_SELECTOR", f"GUEST_{seg}_AR_BYTES", f"GUEST_{seg}_LIMIT", f"GUEST_{seg}_BASE")
    line("EFER= 0x%016x", "GUEST_IA32_EFER", when=has(ent, "VM_ENTRY_LOAD_IA32_EFER"))
    line("PAT = 0x%016x", "GUEST_IA32_PAT", when=has(ent, "VM_ENTRY_LOAD_IA32_PAT"))
    line("DebugCtl = 0x%016x  DebugExceptions = 0x%016x", "GUEST_IA32_DEBUGCTL", "GUEST_PENDING_DBG_EXCEPTIONS")
    line("PerfGlobCtl = 0x%016x", "GUEST_IA32_PERF_GLOBAL_CTRL", when=has(ent, "VM_ENTRY_LOAD_IA32_PERF_GLOBAL_CTRL"))
    line("BndCfgS = 0x%016x", "GUEST_BNDCFGS", when=has(ent, "VM_ENTRY_LOAD_BNDCFGS"))
    line("Interruptibility = %08x  ActivityState = %08x", "GUEST_INTERRUPTIBILITY_INFO", "GUEST_ACTIVITY_STATE")
    line("InterruptStatus = %04x", "GUEST_INTR_STATUS", when=has(sec, "SECONDARY_EXEC_VIRTUAL_INTR_DELIVERY"))
    out.append("*** Host State ***")
    line("RIP = 0x%016x  RSP = 0x%016x", "HOST_RIP", "HOST_RSP")
    line("CS=%04x SS=%04x DS=%04x ES=%04x FS=%04x GS=%04x TR=%04x", "HOST_CS_SELECTOR", "HOST_SS_SELECTOR",
         "HOST_DS_SELECTOR", "HOST_ES_SELECTOR", "HOST_FS_SELECTOR", "HOST_GS_SELECTOR", "HOST_TR_SELECTOR")
    line("FSBase=%016x GSBase=%016x TRBase=%016x", "HOST_FS_BASE", "HOST_GS_BASE", "HOST_TR_BASE")
    line("GDTBase=%016x IDTBase=%016x", "HOST_GDTR_BASE", "HOST_IDTR_BASE")
    line("CR0=%016x CR3=%016x CR4=%016x", "HOST_CR0", "HOST_CR3", "HOST_CR4")
    line("Sysenter RSP=%016x CS:RIP=%04x:%016x", "HOST_IA32_SYSENTER_ESP", "HOST_IA32_SYSENTER_CS", "HOST_IA32_SYSENTER_EIP")
    line("EFER= 0x%016x", "HOST_IA32_EFER", when=has(ext, "VM_EXIT_LOAD_IA32_EFER"))
    line("PAT = 0x%016x", "HOST_IA32_PAT", when=has(ext, "VM_EXIT_LOAD_IA32_PAT"))
    line("PerfGlobCtl = 0x%016x", "HOST_IA32_PERF_GLOBAL_CTRL", when=has(ext, "VM_EXIT_LOAD_IA32_PERF_GLOBAL_CTRL"))
    out.append("*** Control State ***")
    line("CPUBased=0x%08x SecondaryExec=0x%08x TertiaryExec=0x%016x", cpu, sec, "TERTIARY_VM_EXEC_CONTROL")
    line("PinBased=0x%08x EntryControls=%08x ExitControls=%08x", pin, ent, ext)
    line("ExceptionBitmap=%08x PFECmask=%08x PFECmatch=%08x", "EXCEPTION_BITMAP",
         "PAGE_FAULT_ERROR_CODE_MASK", "PAGE_FAULT_ERROR_CODE_MATCH")
    line("VMEntry: intr_info=%08x errcode=%08x ilen=%08x", "VM_ENTRY_INTR_INFO_FIELD",
         "VM_ENTRY_EXCEPTION_ERROR_CODE", "VM_ENTRY_INSTRUCTION_LEN")
    line("VMExit: intr_info=%08x errcode=%08x ilen=%08x", "VM_EXIT_INTR_INFO", "VM_EXIT_INTR_ERROR_CODE",
         "VM_EXIT_INSTRUCTION_LEN")
    line("        reason=%08x qualification=%016x", "VM_EXIT_REASON", "EXIT_QUALIFICATION")
    line("IDTVectoring: info=%08x errcode=%08x", "IDT_VECTORING_INFO_FIELD", "IDT_VECTORING_ERROR_CODE")
    line("TSC Offset = 0x%016x", "TSC_OFFSET")
    line("TSC Multiplier = 0x%016x", "TSC_MULTIPLIER", when=has(sec, "SECONDARY_EXEC_TSC_SCALING"))
    if has(cpu, "CPU_BASED_TPR_SHADOW"):
        if has(sec, "SECONDARY_EXEC_VIRTUAL_INTR_DELIVERY"):
            status = v(F.GUEST_INTR_STATUS, vmcs.default)
            tpr = v(F.TPR_THRESHOLD, vmcs.default)
            if status is not None and tpr is not None:
                out.append("SVI|RVI = %02x|%02x TPR Threshold = 0x%02x" % (status >> 8, status & 0xFF, tpr))
        else:
            line("TPR Threshold = 0x%02x", "TPR_THRESHOLD")
        if has(sec, "SECONDARY_EXEC_VIRTUALIZE_APIC_ACCESSES"):
            line("APIC-access addr = 0x%016x virt-APIC addr = 0x%016x", "APIC_ACCESS_ADDR", "VIRTUAL_APIC_PAGE_ADDR")
        else:
            line("virt-APIC addr = 0x%016x", "VIRTUAL_APIC_PAGE_ADDR")
    line("PostedIntrVec = 0x%02x", "POSTED_INTR_NV", when=has(pin, "PIN_BASED_POSTED_INTR"))
    line("EPT pointer = 0x%016x", "EPT_POINTER", when=has(sec, "SECONDARY_EXEC_ENABLE_EPT"))
    line("PLE Gap=%08x Window=%08x", "PLE_GAP", "PLE_WINDOW", when=has(sec, "SECONDARY_EXEC_PAUSE_LOOP_EXITING"))
    line("Virtual processor ID = 0x%04x", "VIRTUAL_PROCESSOR_ID", when=has(sec, "SECONDARY_EXEC_ENABLE_VPID"))
    return "\n".join(out) + "\n"
